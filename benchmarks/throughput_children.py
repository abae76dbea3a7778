"""The stages of ``throughput.py`` that run in a fresh process each (so that peak memory is theirs alone).

c. embedding a synthetic whole slide: ``cs.tl.comtip_embed`` with loader workers, against the same network's
   forward on ready tensors (same batch, same precision), and the tile cutting of one process;
d. retrieval from a synthetic bank, on the CPU or on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import comtip_sc as cs
from benchmarks.memory import PeakRSS
from benchmarks.slide import slide_sdata
from comtip_sc.constants import EMBED_BATCH_CPU, EMBED_BATCH_GPU
from comtip_sc.model import ComtipConfig, ComtipModel, build_network, inference_autocast, keep_freed_memory

TILE_UM = 150.0


def cpu_model(tile_um: float = TILE_UM, preset: str = "cpu") -> ComtipModel:
    """A preset's network (the ``cpu`` preset: pretrained trunk) wrapped as a model, without training."""
    cfg = ComtipConfig.preset(preset, text_encoder="char-ngram")
    genes = [f"g{i}" for i in range(50)]
    return ComtipModel(build_network(cfg, genes), panel=genes, tile_um=tile_um, tile_px=cfg.tile_px)


def ready_batch(batch: int, tile_px: int, device: torch.device) -> torch.Tensor:
    """A float batch laid out as the loader's permuted ``(B, H, W, 3)`` tiles: channels_last memory.

    A plain NCHW tensor runs the CPU trunk ~1.5x slower and would flatter the ratios.
    """
    return torch.randn(batch, tile_px, tile_px, 3).permute(0, 3, 1, 2).to(device)


def timed_batches(fn: Callable[[], object], n_batches: int, device: torch.device) -> float:
    """Seconds of ``n_batches`` calls of ``fn`` (kernels waited for on a GPU), after one untimed call.

    Under the precision and the heap setting that ``comtip_embed`` runs its forwards with.
    """
    with torch.no_grad(), inference_autocast(device), keep_freed_memory(device):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            fn()
        if device.type == "cuda":  # kernels run asynchronously: the clock stops when they are done
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def child_slide(
    path: str,
    n_spots: int,
    batch: int,
    workers: int,
    preset: str = "cpu",
    accelerator: str = "cpu",
    forward_batches: int = 20,
) -> dict:
    """Embed ``n_spots`` of the slide at ``path``; then the encoder forward and one process's tile cutting."""
    device = torch.device(accelerator)
    batch = batch or (EMBED_BATCH_GPU if device.type == "cuda" else EMBED_BATCH_CPU)
    sdata = slide_sdata(Path(path), n_spots)
    model = cpu_model(preset=preset)
    with PeakRSS() as rss:
        before = rss.peak
        t0 = time.perf_counter()
        cs.tl.comtip_embed(
            sdata,
            model,
            batch_size=batch,
            num_workers=workers,
            accelerator=accelerator,
            spot_diameter_um=55.0,
        )
        seconds = time.perf_counter() - t0
    emb = sdata.tables["table"].obsm["X_comtip"]
    assert emb.shape == (n_spots, model.config.embed_dim) and np.isfinite(emb).all()
    net = model.network.eval().to(device)
    x = ready_batch(batch, model.tile_px, device)
    encoder = forward_batches * batch / timed_batches(lambda: net.encode_image(x), forward_batches, device)
    n_cut = min(n_spots, 2000)
    cut = {}
    for name in ("table", "read"):
        tiles = model.tiles(sdata, spot_diameter_um=55.0)  # a fresh reader: its chunk cache starts empty
        order = range(n_cut) if name == "table" else tiles.read_order()[:n_cut]
        t0 = time.perf_counter()
        tiles.take(order)
        cut[name] = n_cut / (time.perf_counter() - t0)
    return {
        "seconds": seconds,
        "peak_gb": rss.peak / 1e9,
        "before_gb": before / 1e9,
        "batch": batch,
        "encoder_spots_s": encoder,
        "cut_spots_s": cut["table"],
        "cut_read_order_spots_s": cut["read"],
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0,
    }


def child_retrieval(
    n_bank: int, n_query: int, k: int, n_genes: int = 250, per_spot: int = 25, device: str = "cpu"
) -> dict:
    """Retrieval of ``n_query`` queries from a synthetic ``n_bank``-spot bank on ``device``."""
    import scipy.sparse as sp

    from comtip_sc.model import ReferenceBank, retrieve

    rng = np.random.default_rng(0)
    dim = ComtipConfig.preset("cpu").embed_dim

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cols = (np.arange(n_bank)[:, None] * 7 + np.arange(per_spot)[None] * (n_genes // per_spot)) % n_genes
    cols.sort(axis=1)
    values = sp.csr_matrix(
        (
            rng.random(n_bank * per_spot, dtype=np.float32) + 0.1,
            cols.ravel(),
            np.arange(0, n_bank * per_spot + 1, per_spot),
        ),
        shape=(n_bank, n_genes),
    )
    bank = ReferenceBank(unit(n_bank), values, [f"g{i}" for i in range(n_genes)])
    del values, cols
    queries = unit(n_query)
    if device != "cpu":  # start the device (context, libraries, kernels) outside the clock
        retrieve(queries[:8], bank, k, device=device)
        torch.cuda.synchronize()
    with PeakRSS() as rss:
        before = rss.peak
        t0 = time.perf_counter()
        out = retrieve(queries, bank, k, device=device)
        seconds = time.perf_counter() - t0
    assert out.shape == (n_query, n_genes) and np.isfinite(out).all()
    gpu = torch.cuda.max_memory_allocated() / 1e9 if device != "cpu" else 0.0
    return {
        "seconds": seconds,
        "peak_gb": rss.peak / 1e9,
        "before_gb": before / 1e9,
        "dim": dim,
        "gpu_peak_gb": gpu,
    }
