"""Stage e of ``throughput.py``: tile- and token-cache reads/s, whole cache in memory against the lazy chunk
reader (the measurement behind ``IN_MEMORY_MAX_BYTES``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import comtip_sc as cs


def stage_cache_reads(n_side: int, work: Path, tile_um: float) -> list[tuple[str, str, str]]:
    from comtip_sc.pp import CachedTiles

    sdata = cs.datasets.toy_tissue(n_rows=n_side, n_cols=n_side, n_genes=30, seed=2)
    path = work / "reads.zarr"
    cs.pp.cache_tiles(sdata, path, tile_um=tile_um, tile_px=128)
    n = n_side * n_side
    rows = []
    for order_name, order in (
        ("random", np.random.default_rng(0).permutation(n)),
        ("sequential", np.arange(n)),
    ):
        for in_memory in (True, False):
            tiles = CachedTiles(path, in_memory=in_memory)
            tiles[0]  # open (and load) outside the clock
            t0 = time.perf_counter()
            for _ in range(3):
                for i in order:
                    tiles[int(i)]
            rate = 3 * n / (time.perf_counter() - t0)
            how = "whole cache in memory" if in_memory else "lazy, chunk LRU"
            rows.append(
                (
                    "e",
                    f"tile-cache reads, 128 px, {order_name} order, {how} ({n} tiles)",
                    f"{rate:,.0f} tiles/s",
                )
            )
    return rows + token_reads(work, n_spots=n)


def token_reads(work: Path, n_spots: int) -> list[tuple[str, str, str]]:
    """Random-order reads of a token cache laid out as ``cache_trunk_tokens`` writes it (synthetic values)."""
    import zarr

    from comtip_sc.pp import CachedTokens

    item = (8, 16, 1280)  # 8 dihedral views of EfficientNet-Lite0's 4 x 4 tokens of 1280 channels
    group = zarr.open_group(str(work / "tokens.zarr"), mode="w")
    arr = group.create_array(
        "tokens", shape=(n_spots, *item), chunks=(1, *item), shards=(16, *item), dtype="float16"
    )
    rng = np.random.default_rng(0)
    for start in range(0, n_spots, 64):
        stop = min(start + 64, n_spots)
        arr[start:stop] = rng.standard_normal((stop - start, *item), dtype=np.float32).astype(np.float16)
    group.attrs["key"] = {"views": 8}
    rows = []
    for in_memory in (True, False):
        tokens = CachedTokens(work / "tokens.zarr", in_memory=in_memory)
        tokens[0]
        order = rng.permutation(n_spots)
        t0 = time.perf_counter()
        for i in order:
            tokens[int(i)]
        rate = n_spots / (time.perf_counter() - t0)
        how = "whole cache in memory" if in_memory else "lazy, chunk LRU"
        what = f"token-cache reads, 8 × 16 × 1280 float16 per spot, random order, {how} ({n_spots} spots)"
        rows.append(("e", what, f"{rate:,.0f} spots/s"))
    return rows
