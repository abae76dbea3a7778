"""Spatial smoothing of per-spot predictions over each section's k-nearest-neighbour graph."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

#: squidpy's graph builder logs through spatialdata's logger, to stdout, once per call (i.e. per section).
_GRAPH_LOGGER = "spatialdata._logging"


def smooth_over_neighbours(
    values: np.ndarray, centres: np.ndarray, sections: Sequence[str], k: int
) -> np.ndarray:
    """Average every spot's row of ``values`` with the rows of its ``k`` nearest spots in its own section.

    The graph is squidpy's k-nearest-neighbour spatial graph (``squidpy.gr.spatial_neighbors_knn`` with
    ``n_neighs=k``), built per section, so no spot ever borrows from another section. A section with
    ``k`` spots or fewer averages over all of its other spots.

    Parameters
    ----------
    values
        ``(n_spots, n_features)`` per-spot values, e.g. predicted expression.
    centres
        ``(n_spots, 2)`` spot centres, in any unit consistent within a section.
    sections
        Section of every spot.
    k
        Neighbours per spot (the spot itself is added: each row becomes a mean of ``k + 1`` rows).

    Returns
    -------
    A new ``float32`` array shaped like ``values``.

    Examples
    --------
    >>> xy = np.array([[0, 0], [0, 1], [0, 3], [9, 9]], float)
    >>> smooth_over_neighbours(np.array([[0.0], [3.0], [6.0], [9.0]]), xy, ["a"] * 3 + ["b"], 1).ravel()
    array([1.5, 1.5, 4.5, 9. ], dtype=float32)

    """
    import anndata as ad
    import scipy.sparse as sp
    import squidpy as sq

    values = np.asarray(values, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"smooth must be None or a positive int (neighbours per spot), got {k!r}.")
    if values.ndim != 2 or centres.shape != (len(values), 2) or len(sections) != len(values):
        raise ValueError(
            f"values (n_spots, n_features), centres (n_spots, 2) and sections (n_spots,) must agree; got "
            f"{values.shape}, {centres.shape} and {len(sections)}."
        )
    if not np.isfinite(centres).all():
        raise ValueError("Some spots have no finite centre; they cannot be placed on a neighbour graph.")
    out = values.copy()
    for name in np.unique(sections):
        rows = np.flatnonzero(sections == name)
        n_neighs = min(int(k), len(rows) - 1)
        if n_neighs < 1:
            continue
        # A throw-away AnnData holding only the centres: squidpy writes its graph there, not in the
        # user's table.
        holder = ad.AnnData(obs={"_": np.zeros(len(rows))}, obsm={"spatial": centres[rows]})
        graph_log = logging.getLogger(_GRAPH_LOGGER)
        level = graph_log.level
        graph_log.setLevel(max(level, logging.WARNING))
        try:
            sq.gr.spatial_neighbors_knn(holder, n_neighs=n_neighs)
        finally:
            graph_log.setLevel(level)
        graph = holder.obsp["spatial_connectivities"] + sp.identity(len(rows), format="csr")
        # Row i of the graph marks spot i and its k neighbours: a row-normalised product is their mean.
        degree = np.asarray(graph.sum(axis=1)).ravel()
        out[rows] = (graph @ values[rows]) / degree[:, None]
    return out.astype(np.float32)
