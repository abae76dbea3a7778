"""Colour-statistics features of tiles and a spatial neighbour average, for image baselines.

A ridge on these 54 numbers per tile (per-channel mean and s.d., 16-bin histogram per channel) is the
floor any learned image representation has to clear: it sees colour and stain, nothing of morphology.
``neighbour_average`` smooths a per-spot prediction over each spot's nearest spots of the same section.

Self-contained on purpose (numpy, plus scikit-learn for the neighbour search), so it can be imported
from its file path:

    import importlib.util
    spec = importlib.util.spec_from_file_location("colour_features", "benchmarks/colour_features.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    x = mod.colour_features(tiles)        # (n_tiles, 54)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Histogram bins per channel: uint8 values are binned by their top 4 bits (width 16).
N_BINS = 16
#: Features per tile: 3 means + 3 standard deviations + 3 x N_BINS histogram fractions.
N_FEATURES = 3 + 3 + 3 * N_BINS
#: Tiles per chunk, to bound the memory of the histogram's index array.
_CHUNK = 1024


def feature_names() -> list[str]:
    """Names of the columns of :func:`colour_features`, in order.

    Examples
    --------
    >>> feature_names()[:4], len(feature_names())
    (['mean_R', 'mean_G', 'mean_B', 'std_R'], 54)

    """
    rgb = "RGB"
    return (
        [f"mean_{c}" for c in rgb]
        + [f"std_{c}" for c in rgb]
        + [f"hist_{c}_{b}" for c in rgb for b in range(N_BINS)]
    )


def colour_features(tiles: np.ndarray) -> np.ndarray:
    """Per-channel mean, standard deviation and 16-bin histogram of each tile.

    Parameters
    ----------
    tiles
        ``uint8`` array ``(n, H, W, 3)`` of RGB tiles.

    Returns
    -------
    ``float32`` array ``(n, 54)``: means (0–255) of R, G, B; their standard deviations; then for R, G
    and B in turn the fraction of the tile's pixels in each of 16 equal bins of width 16 (each
    channel's 16 fractions sum to 1). Columns as named by :func:`feature_names`.

    Examples
    --------
    >>> t = np.zeros((1, 2, 2, 3), np.uint8); t[0, 0, 0] = 255
    >>> f = colour_features(t)
    >>> f.shape, float(f[0, 0]), float(f[0, 6]), float(f[0, 21])
    ((1, 54), 63.75, 0.75, 0.25)

    """
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be a uint8 array (n, H, W, 3), got {tiles.dtype} {tiles.shape}.")
    n = len(tiles)
    out = np.empty((n, N_FEATURES), np.float32)
    if n == 0:
        return out
    pixels = tiles.reshape(n, -1, 3)
    n_px = pixels.shape[1]
    out[:, 0:3] = pixels.mean(axis=1, dtype=np.float64)
    out[:, 3:6] = pixels.std(axis=1, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        chunk = pixels[start : start + _CHUNK]
        m = len(chunk)
        # One bincount for the whole chunk: bin b of channel c of tile i lands at (i * 3 + c) * N_BINS + b.
        offsets = (np.arange(m)[:, None, None] * 3 + np.arange(3)[None, None, :]) * N_BINS
        idx = (chunk >> 4).astype(np.int64) + offsets
        counts = np.bincount(idx.ravel(), minlength=m * 3 * N_BINS).reshape(m, 3 * N_BINS)
        out[start : start + m, 6:] = counts / n_px
    return out


def neighbour_average(
    pred: np.ndarray, centres: np.ndarray, sections: Sequence[str], k: int = 6
) -> np.ndarray:
    """Average each spot's row of ``pred`` with its ``k`` nearest spots in the same section.

    Parameters
    ----------
    pred
        ``(n_spots, n_genes)`` predictions (or any per-spot features).
    centres
        ``(n_spots, 2)`` spot centres, in a unit consistent within each section.
    sections
        Section of every spot; spots of different sections are never averaged together.
    k
        Neighbours per spot, the spot itself not counted (a section of ``k`` spots or fewer uses all of
        its spots). 6 is the first ring of a hexagonal Visium grid.

    Returns
    -------
    ``float64`` array shaped like ``pred``: the mean over the spot and its neighbours.

    Examples
    --------
    >>> xy = np.array([[0, 0], [0, 1], [0, 3], [9, 9]], float)
    >>> neighbour_average(np.array([[0.0], [3.0], [6.0], [9.0]]), xy, ["a"] * 3 + ["b"], k=1).ravel()
    array([1.5, 1.5, 4.5, 9. ])

    """
    from sklearn.neighbors import NearestNeighbors

    pred = np.asarray(pred, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    if pred.ndim != 2 or centres.shape != (len(pred), 2) or len(sections) != len(pred):
        raise ValueError(
            f"pred (n, g), centres (n, 2) and sections (n,) must agree; got {pred.shape}, "
            f"{centres.shape} and {sections.shape}."
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    out = np.empty_like(pred)
    for name in np.unique(sections):
        rows = np.flatnonzero(sections == name)
        n_nb = min(k + 1, len(rows))  # the query spot is its own nearest neighbour
        _, idx = NearestNeighbors(n_neighbors=n_nb).fit(centres[rows]).kneighbors(centres[rows])
        out[rows] = pred[rows][idx].mean(axis=1)
    return out
