"""Batched, gradient-free encoding of images and gene sentences with a trained network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._logging import tqdm


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


@torch.no_grad()
def encode_images(network: nn.Module, loader: DataLoader) -> np.ndarray:
    """L2-normalised image embeddings ``(n, embed_dim)`` of every batch of ``loader``, in order."""
    network.eval()
    device = _device(network)
    # disable=None: a progress bar on terminals and notebooks, silence in logs and CI.
    batches = tqdm(loader, desc="Embedding images", unit="batch", disable=None)
    out = [
        network.encode_batch_images({k: v.to(device) for k, v in batch.items()}).float().cpu()
        for batch in batches
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, network.config.embed_dim), np.float32)


@torch.no_grad()
def encode_sentences(network: nn.Module, loader: DataLoader) -> np.ndarray:
    """L2-normalised gene-sentence embeddings ``(n, embed_dim)`` of every batch of ``loader``, in order."""
    network.eval()
    device = _device(network)
    out = [
        network.encode_genes(b["gene_idx"].to(device), b["values"].to(device), b["mask"].to(device))
        .float()
        .cpu()
        for b in loader
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, network.config.embed_dim), np.float32)
