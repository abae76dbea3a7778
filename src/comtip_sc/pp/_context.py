"""Spot tiles with a wider context tile around the same centre, as one 6-channel tile per spot."""

from __future__ import annotations

from typing import Any

import numpy as np


class ContextTiles:
    """Pair every spot tile with a context tile (same centre, wider field, same pixel size): ``(H, W, 6)``.

    Channels 0-2 are the spot tile's RGB, 3-5 the context tile's. Both readers must list the same spots
    in the same order. Flips and rotations of the stacked array transform both tiles alike, which is
    what training augmentation needs.

    Parameters
    ----------
    spot
        Tile reader of the spot tiles (:class:`~comtip_sc.pp.SpotTiles` or :class:`~comtip_sc.pp.CachedTiles`).
    context
        Tile reader of the context tiles, cut at a larger ``tile_um``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20)
    >>> both = cs.pp.ContextTiles(cs.pp.SpotTiles(sdata, tile_um=100, tile_px=16),
    ...                           cs.pp.SpotTiles(sdata, tile_um=300, tile_px=16))
    >>> both[0].shape, both.context_um
    ((16, 16, 6), 300.0)

    """

    def __init__(self, spot: Any, context: Any) -> None:
        if len(spot) != len(context) or not np.array_equal(spot.obs_names, context.obs_names):
            raise ValueError("The spot and context tile readers must list the same spots in the same order.")
        if spot.tile_px != context.tile_px:
            raise ValueError(f"tile_px differs: spot {spot.tile_px}, context {context.tile_px}.")
        self.spot, self.context = spot, context
        self.tile_um = float(spot.tile_um)
        self.context_um = float(context.tile_um)
        self.tile_px = int(spot.tile_px)
        self.colour_norm = getattr(spot, "colour_norm", None)
        self.obs_names = spot.obs_names

    def __len__(self) -> int:
        return len(self.spot)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.concatenate([self.spot[i], self.context[i]], axis=-1)

    def read_order(self) -> np.ndarray:
        """The spot reader's :meth:`~comtip_sc.pp.SpotTiles.read_order` (the context tiles share its centres)."""
        return self.spot.read_order() if hasattr(self.spot, "read_order") else np.arange(len(self))

    def with_chunk_cache(self, max_bytes: int) -> ContextTiles:
        """A copy whose spot and context readers keep at most ``max_bytes`` of decoded chunks together."""
        readers = [
            r.with_chunk_cache(max_bytes // 2) if hasattr(r, "with_chunk_cache") else r
            for r in (self.spot, self.context)
        ]
        return ContextTiles(*readers)

    def take(self, indices=None) -> np.ndarray:
        """Stack the 6-channel tiles at ``indices`` (all when ``None``)."""
        return np.concatenate([self.spot.take(indices), self.context.take(indices)], axis=-1)


def with_context(make_tiles, tile_um: float, context_scale: float | None, **kw: Any) -> Any:
    """``make_tiles(tile_um=..., **kw)`` for the spot tiles, paired with a context tile when ``context_scale``.

    ``make_tiles`` is a tile-reader factory such as :class:`~comtip_sc.pp.SpotTiles` (bound to its data) or
    :func:`~comtip_sc.pp.cache_tiles` (bound to its data and a path that may depend on ``tile_um``).
    """
    spot = make_tiles(tile_um=tile_um, **kw)
    if context_scale is None:
        return spot
    return ContextTiles(spot, make_tiles(tile_um=tile_um * float(context_scale), **kw))
