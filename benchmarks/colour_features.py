"""The benchmark's trivial baselines: colour statistics of the tiles + ridge.

A spot's tile is reduced to 54 numbers (:func:`comtip_sc.pp.colour_stats`: per RGB channel mean, standard
deviation and a 16-bin histogram), regressed onto the panel by ridge with the penalty chosen by the same
spatial-block CV as the frozen-feature ridge (:func:`comtip_sc.tl.colour_bar_predict`, the package's simple
bar). Eight variants: the spot tile or a context tile 3× wider; features as they are or z-scored within
each section (train and test alike); predictions as they are or averaged over the 6 nearest spots of the
same section. The best of them per dataset is the bar every model row must clear.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from spatialdata import SpatialData

from comtip_sc.pp import colour_stats, zscore_per_section
from comtip_sc.tl import colour_bar_predict

__all__ = ["colour_stats", "zscore_per_section"]  # re-exported: the harness and its tests use them from here

#: Histogram bins per channel (16 bins of 16 grey levels each on uint8 tiles).
N_BINS = 16
#: Per channel: mean, s.d. and the histogram.
N_FEATURES = 3 * (2 + N_BINS)
#: Spots whose predictions are averaged (the spot itself and its nearest neighbours in its section).
K_NEIGHBOURS = 6
#: The context tile's side as a multiple of the spot tile's.
CONTEXT_SCALE = 3.0


def neighbour_average(
    pred: np.ndarray, centres: np.ndarray, sections: Sequence[str], k: int = K_NEIGHBOURS
) -> np.ndarray:
    """Average every spot's prediction over its ``k`` nearest spots (itself included) in its own section.

    Parameters
    ----------
    pred
        ``(n_spots, n_genes)`` predictions.
    centres
        ``(n_spots, 2)`` spot centres, in any unit consistent within a section.
    sections
        Section of every spot; neighbours are never taken from another section.
    k
        Spots averaged (fewer in a section with fewer spots).

    Returns
    -------
    ``(n_spots, n_genes)`` averaged predictions.

    Examples
    --------
    >>> xy = np.array([[0, 0], [0, 1], [0, 3], [0, 4]], float)
    >>> neighbour_average(np.array([[0.0], [2.0], [4.0], [100.0]]), xy, ["a"] * 3 + ["b"], k=2).ravel()
    array([  1.,   1.,   3., 100.])

    """
    from sklearn.neighbors import NearestNeighbors

    pred = np.asarray(pred)
    centres = np.asarray(centres, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    if centres.shape != (len(pred), 2) or len(sections) != len(pred):
        raise ValueError(
            f"centres must be (n_spots, 2) and sections (n_spots,) for {len(pred)} spots, got "
            f"{centres.shape} and {sections.shape}."
        )
    out = np.empty(pred.shape, dtype=np.float64)
    for name in np.unique(sections):
        rows = np.flatnonzero(sections == name)
        nn = NearestNeighbors(n_neighbors=min(k, len(rows))).fit(centres[rows])
        idx = nn.kneighbors(centres[rows], return_distance=False)
        out[rows] = pred[rows][idx].mean(axis=1)
    return out.astype(pred.dtype, copy=False)


def fold_colour_stats(
    train: SpatialData, test: SpatialData, train_tiles: Any, test_tiles: Any, colour_norm: str | None
) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Colour statistics of the spot tiles (``False``) and of tiles :data:`CONTEXT_SCALE`× wider (``True``).

    Parameters
    ----------
    train, test
        The fold's SpatialData objects.
    train_tiles, test_tiles
        Their spot tiles (:class:`~comtip_sc.pp.SpotTiles` or a tile cache); the context tiles are cut
        around the same centres at ``CONTEXT_SCALE`` times their ``tile_um``, same ``tile_px`` and
        ``colour_norm``. Every reader is reduced a chunk of tiles at a time.

    Returns
    -------
    ``{context: (train features, test features)}``.

    """
    from comtip_sc.pp import SpotTiles

    kw = {
        "tile_um": train_tiles.tile_um * CONTEXT_SCALE,
        "tile_px": train_tiles.tile_px,
        "colour_norm": colour_norm,
    }
    wide = [SpotTiles(sdata, **kw) for sdata in (train, test)]
    return {
        False: (colour_stats(train_tiles), colour_stats(test_tiles)),
        True: (colour_stats(wide[0]), colour_stats(wide[1])),
    }


def colour_row_name(context: bool, zscore: bool, smooth: bool) -> str:
    """Row label of one colour variant, e.g. ``"colour · 3× context, per-section z, 6-NN avg"``.

    Examples
    --------
    >>> colour_row_name(False, False, True)
    'colour · spot tile, 6-NN avg'

    """
    parts = [f"{CONTEXT_SCALE:g}× context" if context else "spot tile"]
    parts += ["per-section z"] if zscore else []
    parts += [f"{K_NEIGHBOURS}-NN avg"] if smooth else []
    return "colour · " + ", ".join(parts)


#: The eight colour rows, in table order: (context tile, per-section z, neighbour average).
COLOUR_VARIANTS: list[tuple[bool, bool, bool]] = [
    (context, zscore, smooth)
    for context in (False, True)
    for zscore in (False, True)
    for smooth in (False, True)
]
COLOUR_ROWS: list[str] = [colour_row_name(*v) for v in COLOUR_VARIANTS]


def colour_predictions(
    features: dict[bool, tuple[np.ndarray, np.ndarray]],
    train_y: np.ndarray,
    train_sections: Sequence[str],
    train_folds: np.ndarray,
    test_sections: Sequence[str],
    test_centres: np.ndarray,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(row name, test predictions)`` of every colour variant, in :data:`COLOUR_ROWS` order.

    Parameters
    ----------
    features
        ``{context: (train features, test features)}`` from :func:`colour_stats` of the spot tiles
        (``False``) and of the context tiles (``True``).
    train_y
        ``(n_train, n_genes)`` training values.
    train_sections, train_folds
        Section and spatial CV fold of every training spot (the penalty is chosen over ``train_folds``).
    test_sections, test_centres
        Section and centre of every test spot, for per-section z-scores and the neighbour average.

    """
    train_x = np.hstack([features[False][0], features[True][0]])
    test_x = np.hstack([features[False][1], features[True][1]])
    fit = colour_bar_predict(
        train_x, train_y, train_sections, train_folds, test_x, test_sections, context_scale=CONTEXT_SCALE
    )
    # The library's variants in its order (spot tile, then context; without, then with z-scores), named
    # by its colour_variant_name: the same order as COLOUR_VARIANTS here.
    for (context, zscore, _), pred in zip(COLOUR_VARIANTS[::2], fit.predictions.values(), strict=True):
        yield colour_row_name(context, zscore, False), pred
        yield colour_row_name(context, zscore, True), neighbour_average(pred, test_centres, test_sections)
