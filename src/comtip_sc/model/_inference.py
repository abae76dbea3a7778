"""Batched, gradient-free encoding of images and gene sentences with a trained network."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


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


class TileItems(Dataset):
    """A tile reader (``len`` + ``[i]`` → uint8 ``(H, W, 3)`` tile or cached tokens) as a torch dataset."""

    def __init__(self, tiles) -> None:
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        return self.tiles[i]


def normalise_tiles(arrs: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack uint8 ``(H, W, C)`` tiles into the network's input: ``[B, C, H, W]``, ``(x / 255 - mean) / std``.

    ``C`` may be a multiple of 3 (a spot tile and its context tile side by side); ``mean`` and ``std``
    repeat over each RGB triple.
    """
    tiles = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
    c = tiles.shape[1]
    mean_t = torch.tensor(tuple(mean)).repeat(c // 3).view(1, c, 1, 1)
    std_t = torch.tensor(tuple(std)).repeat(c // 3).view(1, c, 1, 1)
    # (x / 255 - mean) / std in one multiply-add.
    return tiles.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


def encode_tiles(
    network: nn.Module,
    tiles,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> np.ndarray:
    """L2-normalised image embeddings ``(n, embed_dim)`` of every tile of a tile reader, in order.

    ``tiles`` is any reader of uint8 tiles (:class:`~comtip_sc.pp.SpotTiles`, a tile cache,
    :class:`~comtip_sc.pp.ContextTiles`) or a ``(n, H, W, 3)`` uint8 array. Cached trunk tokens are read
    as view 0 (the tile as cut).
    """
    mean, std = network.image_mean, network.image_std

    def collate(items: list[np.ndarray]) -> dict[str, torch.Tensor]:
        if items[0].dtype == np.float16:  # cached trunk tokens [views, P, C]
            return {"tokens": torch.from_numpy(np.stack([a[0] for a in items])).float()}
        return {"image": normalise_tiles(items, mean, std)}

    loader = DataLoader(TileItems(tiles), batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    return encode_images(network.to(device or _device(network)), loader)
