"""Batched, gradient-free encoding of images and gene sentences with a trained network.

On a GPU the loader's pinned batches are copied without waiting, ``uint8`` tiles are scaled and normalised
on the device (a quarter of the bytes of float tiles cross the bus) and the image encoder runs under bf16
autocast; on the CPU everything stays float32. Tiles arrive ``(B, H, W, C)``, so the permuted batch the
network sees is channels_last, the layout the convolution kernels are fastest on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._constants import EMBED_BATCH_CPU, EMBED_BATCH_GPU
from .._heap import keep_freed_memory
from .._logging import tqdm

#: Embeddings kept on the device before they are copied to the host together (one wait per group).
_FLUSH_BATCHES = 64

#: Decoded image chunks all loader workers of one embedding keep together (each a share, at least
#: :data:`_WORKER_CHUNKS_MIN`): with 14 workers 37 MiB each instead of a reader's default 128 MiB.
_WORKERS_CHUNK_BYTES = 512 * 2**20
_WORKER_CHUNKS_MIN = 32 * 2**20


def network_device(network: nn.Module) -> torch.device:
    """The device of the network's parameters."""
    return next(network.parameters()).device


def embed_batch_size(device: torch.device, batch_size: int | None = None) -> int:
    """``batch_size``, or the default of ``device``'s type (:data:`EMBED_BATCH_CPU` / :data:`EMBED_BATCH_GPU`)."""
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
        return int(batch_size)
    return EMBED_BATCH_CPU if device.type == "cpu" else EMBED_BATCH_GPU


def embed_workers(device: torch.device, num_workers: int | None = None) -> int:
    """``num_workers``, or by default 0 on the CPU (workers would take the network's cores), up to 8 with a GPU."""
    if num_workers is not None:
        return int(num_workers)
    return 0 if device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))


def inference_autocast(device: torch.device):
    """bf16 autocast on a CUDA device; nothing (float32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def normalise_uint8(tiles: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8`` tiles ``(B, H, W, C)`` → float ``(B, C, H, W)`` (channels_last) ``(x / 255 - mean) / std``.

    ``C`` may be a multiple of 3 (a spot tile and its context tile side by side); the 3 values of ``mean``
    and ``std`` repeat over each RGB triple.
    """
    x = tiles.permute(0, 3, 1, 2).float()
    c = x.shape[1]
    mean = mean.repeat(c // 3).view(1, c, 1, 1)
    std = std.repeat(c // 3).view(1, c, 1, 1)
    # (x / 255 - mean) / std as one fused multiply-add: half the time of a multiply and a subtract.
    return torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))


def normalise_tiles(arrs: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack uint8 ``(H, W, C)`` tiles into the network's input: ``[B, C, H, W]``, ``(x / 255 - mean) / std``."""
    return normalise_uint8(
        torch.from_numpy(np.stack(arrs)), torch.tensor(tuple(mean)), torch.tensor(tuple(std))
    )


@torch.no_grad()
def encode_images(network: nn.Module, loader: Iterable[dict[str, torch.Tensor]]) -> np.ndarray:
    """L2-normalised image embeddings ``(n, embed_dim)`` of every batch of ``loader``, in order.

    Batches hold ``"image"`` (float and normalised, or raw ``uint8`` ``(B, H, W, C)`` tiles, normalised here
    with the network's mean and std on its device) or cached trunk ``"tokens"``.
    """
    network.eval()
    device = network_device(network)
    mean = torch.tensor(network.image_mean, device=device)
    std = torch.tensor(network.image_std, device=device)
    out: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    # disable=None: a progress bar on terminals and notebooks, silence in logs and CI.
    batches = tqdm(loader, desc="Embedding images", unit="batch", disable=None)
    # On the CPU each batch's activations reuse the memory the previous batch freed (no page faults).
    with inference_autocast(device), keep_freed_memory(device):
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if "image" in batch and batch["image"].dtype == torch.uint8:
                batch["image"] = normalise_uint8(batch["image"], mean, std)
            pending.append(network.encode_batch_images(batch).float())
            if len(pending) == _FLUSH_BATCHES:
                out.append(torch.cat(pending).cpu())
                pending = []
    if pending:
        out.append(torch.cat(pending).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, network.config.embed_dim), np.float32)


@torch.no_grad()
def encode_sentences(network: nn.Module, loader: DataLoader) -> np.ndarray:
    """L2-normalised gene-sentence embeddings ``(n, embed_dim)`` of every batch of ``loader``, in order."""
    network.eval()
    device = network_device(network)
    out = [
        network.encode_genes(b["gene_idx"].to(device), b["values"].to(device), b["mask"].to(device))
        .float()
        .cpu()
        for b in loader
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, network.config.embed_dim), np.float32)


@torch.no_grad()
def encode_pairs(network: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Sentence and image embeddings ``(n, embed_dim)`` each of every batch of a paired loader, in one pass.

    One pass cuts every tile once (a bank used to read its tiles twice, once per embedding).
    """
    network.eval()
    device = network_device(network)
    sentences: list[torch.Tensor] = []

    def images():
        for b in loader:
            sentences.append(
                network.encode_genes(
                    b["gene_idx"].to(device), b["values"].to(device), b["mask"].to(device)
                ).float()
            )
            yield {k: b[k] for k in ("image", "tokens") if k in b}

    img = encode_images(network, images())
    if not sentences:
        return np.zeros((0, network.config.embed_dim), np.float32), img
    return torch.cat(sentences).cpu().numpy(), img


class TileItems(Dataset):
    """A tile reader (``len`` + ``[i]`` → uint8 ``(H, W, 3)`` tile or cached tokens) as a torch dataset."""

    def __init__(self, tiles) -> None:
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        return self.tiles[i]

    def __getitems__(self, indices: list[int]):
        # A loader asks for a whole batch here: tile readers cut it together, faster than one by one.
        if isinstance(self.tiles, np.ndarray):
            return self.tiles[np.asarray(indices)]
        if hasattr(self.tiles, "tile_px") and hasattr(self.tiles, "take"):
            return self.tiles.take(indices)
        return [self.tiles[i] for i in indices]


def stack_tiles(items: list[np.ndarray] | np.ndarray) -> dict[str, torch.Tensor]:
    """A batch as loader workers hand it over: uint8 tiles, or view 0 (the tile as cut) of cached tokens.

    The tiles stay ``uint8`` ``(B, H, W, C)``: they are normalised on the network's device.
    """
    if items[0].dtype == np.float16:  # cached trunk tokens [views, P, C]
        return {"tokens": torch.from_numpy(np.stack([a[0] for a in items])).float()}
    # A reader's ``take`` hands the batch over already stacked.
    return {"image": torch.from_numpy(items if isinstance(items, np.ndarray) else np.stack(items))}


def worker_stretches(order: np.ndarray, batch_size: int, workers: int) -> list[np.ndarray]:
    """Batches of ``order``, interleaved so that each of ``workers`` loader processes reads one stretch of it.

    A data loader hands batch ``j`` to worker ``j % workers``. Consecutive batches of a read order would
    then go to different workers, and every worker would decode every chunk of the slide; here worker
    ``w`` receives the ``w``-th contiguous stretch of the order, batch after batch.

    Examples
    --------
    >>> [b.tolist() for b in worker_stretches(np.arange(8), 2, 2)]
    [[0, 1], [4, 5], [2, 3], [6, 7]]

    """
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if workers < 2 or len(batches) <= workers:
        return batches
    # Stretch lengths differ by at most one batch, the longer ones first: only the last round is short,
    # and its batches fall to the first workers, whose stretches they end.
    per, extra = divmod(len(batches), workers)
    starts = np.cumsum([0] + [per + (w < extra) for w in range(workers)])
    stretches = [batches[starts[w] : starts[w + 1]] for w in range(workers)]
    return [s[j] for j in range(per + 1) for s in stretches if j < len(s)]


def encode_tiles(
    network: nn.Module,
    tiles,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: torch.device | None = None,
) -> np.ndarray:
    """L2-normalised image embeddings ``(n, embed_dim)`` of every tile of a tile reader, in order.

    ``tiles`` is any reader of uint8 tiles (:class:`~comtip_sc.pp.SpotTiles`, a tile cache,
    :class:`~comtip_sc.pp.ContextTiles`) or a ``(n, H, W, 3)`` uint8 array. Cached trunk tokens are read
    as view 0 (the tile as cut). A reader with a ``read_order()`` (:meth:`~comtip_sc.pp.SpotTiles.read_order`)
    is read in that order, each of ``num_workers`` persistent loader processes cutting one contiguous
    stretch of it (``worker_stretches``) with its own copy of the reader and its own cache of decoded
    image chunks (a share of 512 MiB, at least 32 MiB), so that workers do not decode the same chunks and
    their caches stay bounded together; batches come pinned when the network
    runs on a GPU. ``None`` sizes the batch and the workers for the device
    (:func:`embed_batch_size`, :func:`embed_workers`).
    """
    device = device or network_device(network)
    workers = embed_workers(device, num_workers)
    batch_size = embed_batch_size(device, batch_size)
    if workers > 1 and hasattr(tiles, "with_chunk_cache"):
        # Every worker keeps its own decoded chunks: a share of one budget bounds them together, and the
        # read order (computed on this copy) picks blocks of chunks that fit the share.
        tiles = tiles.with_chunk_cache(max(_WORKER_CHUNKS_MIN, _WORKERS_CHUNK_BYTES // workers))
    # A reader of a chunked slide knows an order that decodes each chunk about once; results come back
    # in the reader's own order.
    order = tiles.read_order() if hasattr(tiles, "read_order") else None
    batches = None
    if order is not None:
        batches = worker_stretches(order, batch_size, workers)
        order = np.concatenate(batches) if batches else order
    loader = DataLoader(
        TileItems(tiles),
        batch_size=batch_size if batches is None else 1,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=stack_tiles,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    emb = encode_images(network.to(device), loader)
    if order is None:
        return emb
    out = np.empty_like(emb)
    out[order] = emb
    return out
