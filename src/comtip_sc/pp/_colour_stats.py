"""Colour statistics of spot tiles: the features of the simple colour bar and of the hybrid head.

A tile is reduced to 54 numbers: per RGB channel its mean, standard deviation and a 16-bin histogram.
They carry what trivial image statistics know about a spot (how purple, how dense, how pale), which is
the bar a learned image model must clear (``docs/model.md``, "Self-check").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from spatialdata import SpatialData

from .._constants import COLOUR_BINS, COLOUR_CONTEXT_SCALE, DEFAULT_TILE_PX, DEFAULT_TILE_UM, TABLE_KEY

#: Colour statistics per tile: per channel the mean, the s.d. and the histogram.
N_COLOUR_STATS = 3 * (2 + COLOUR_BINS)
#: Tiles read and reduced at a time from a tile reader: bounds memory whatever the number of spots.
COLOUR_CHUNK = 256


def _stats_of_array(tiles: np.ndarray) -> np.ndarray:
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be uint8 (n, h, w, 3), got {tiles.dtype} {tiles.shape}.")
    n = len(tiles)
    px = tiles.reshape(n, -1, 3)
    values = px.astype(np.float32) / 255.0
    mean, sd = values.mean(1), values.std(1)
    # One bincount over (tile, channel, bin) codes instead of a Python loop over tiles.
    shift = 8 - int(np.log2(COLOUR_BINS))
    codes = (
        (px >> shift).astype(np.int64)
        + COLOUR_BINS * np.arange(3)
        + 3 * COLOUR_BINS * np.arange(n)[:, None, None]
    )
    hist = np.bincount(codes.ravel(), minlength=3 * COLOUR_BINS * n).reshape(n, 3 * COLOUR_BINS)
    hist = hist / np.float32(px.shape[1])
    return np.hstack([mean, sd, hist]).astype(np.float32)


def colour_stats(tiles: np.ndarray | Any, *, chunk: int = COLOUR_CHUNK) -> np.ndarray:
    """Per-channel mean, s.d. and 16-bin histogram of RGB tiles: ``(n, 54)`` features.

    Columns: the 3 channel means, the 3 channel s.d.s (both on the 0–1 scale), then 16 histogram bins
    of R, of G and of B, each channel's bins summing to 1.

    Parameters
    ----------
    tiles
        ``(n, h, w, 3)`` ``uint8`` tiles, or a tile reader (:class:`~comtip_sc.pp.SpotTiles`,
        :class:`~comtip_sc.pp.CachedTiles`), which is read ``chunk`` tiles at a time.
    chunk
        Tiles held at once when reading from a tile reader.

    Returns
    -------
    ``(n, 54)`` ``float32`` features.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> x = cs.pp.colour_stats(np.zeros((2, 4, 4, 3), np.uint8))
    >>> x.shape, float(x[0, 6])
    ((2, 54), 1.0)

    """
    if isinstance(tiles, np.ndarray):
        return _stats_of_array(tiles)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}.")
    n = len(tiles)
    out = np.zeros((n, N_COLOUR_STATS), np.float32)
    for lo in range(0, n, chunk):
        out[lo : lo + chunk] = _stats_of_array(np.asarray(tiles.take(np.arange(lo, min(n, lo + chunk)))))
    return out


def zscore_per_section(x: np.ndarray, sections: Sequence[str]) -> np.ndarray:
    """Standardise every feature within each section (a feature constant in a section becomes 0 there).

    Parameters
    ----------
    x
        ``(n_spots, n_features)`` features.
    sections
        Section of every spot.

    Returns
    -------
    A new ``float64`` array shaped like ``x``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> z = cs.pp.zscore_per_section(np.array([[1.0], [3.0], [10.0], [10.0]]), ["a", "a", "b", "b"])
    >>> z.ravel().tolist()
    [-1.0, 1.0, 0.0, 0.0]

    """
    x = np.asarray(x, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    if x.ndim != 2 or len(sections) != len(x):
        raise ValueError(
            f"x must be (n_spots, n_features) with one section per spot; got {x.shape} and {len(sections)}."
        )
    out = np.empty_like(x)
    for name in np.unique(sections):
        rows = sections == name
        sd = x[rows].std(0)
        out[rows] = (x[rows] - x[rows].mean(0)) / np.where(sd > 0, sd, 1.0)
    return out


def colour_features(
    sdata: SpatialData,
    *,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    colour_norm: str | None = None,
    context_scale: float = COLOUR_CONTEXT_SCALE,
    table_key: str = TABLE_KEY,
    spot_diameter_um: float | None = None,
) -> np.ndarray:
    """Colour statistics of every spot's tile and of a context tile ``context_scale`` times wider.

    Both tiles are cut around the spot centre at the same pixel size (``tile_px``) and ``colour_norm``,
    read a chunk at a time (nothing is cached or written).

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table annotating them.
    tile_um, tile_px, colour_norm
        The spot tile, as in :class:`~comtip_sc.pp.SpotTiles`.
    context_scale
        Side of the context tile as a multiple of ``tile_um``.
    table_key
        Table whose spots are described, in its row order.
    spot_diameter_um
        Spot diameter in µm when the table does not record it (Visium: 55).

    Returns
    -------
    ``(n_spots, 108)`` ``float32``: the 54 :func:`colour_stats` of the spot tile, then those of the
    context tile.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20)
    >>> cs.pp.colour_features(sdata, tile_um=100, tile_px=16).shape
    (9, 108)

    """
    from ._tiles import SpotTiles

    if not context_scale > 0:
        raise ValueError(f"context_scale must be positive, got {context_scale!r}.")
    kw = {
        "tile_px": tile_px,
        "table_key": table_key,
        "spot_diameter_um": spot_diameter_um,
        "colour_norm": colour_norm,
    }
    spot = SpotTiles(sdata, tile_um=tile_um, **kw)
    context = SpotTiles(sdata, tile_um=tile_um * float(context_scale), **kw)
    return np.hstack([colour_stats(spot), colour_stats(context)])
