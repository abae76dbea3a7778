"""Clustering of one held-out section's spots against its tissue-region labels, per embedding.

For her2st, section A1 (patient A) carries the pathologist's region labels
(``data/ST-pat/lbl/A1_labeled_coordinates.tsv``); in the fold that trains on patient C alone, each
embedding of A1's spots is scored by

- leiden clusters (``sc.pp.neighbors`` on the embedding, ``sc.tl.leiden``, igraph flavour, 2 iterations)
  against the labels: adjusted Rand index and NMI. The resolution is the one of :data:`RESOLUTIONS` whose
  cluster count is closest to the number of label classes (ties: the lower resolution); it uses nothing
  of the labels but their count.
- a linear probe: logistic regression (balanced class weights) on the standardised embedding, its
  balanced accuracy over spatial-block cross-validation inside the section (5 k-means blocks of the spot
  centres, :func:`~comtip_sc.tl.spatial_folds`).

Spots without a label, or labelled ``undetermined``, are left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from comtip_sc.constants import SAMPLE_KEY, TABLE_KEY
from comtip_sc.pp import resolve_sections, spot_layout
from comtip_sc.tl import spatial_folds

#: Leiden resolutions tried; the one whose cluster count is closest to the class count is kept.
RESOLUTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
#: The labelled her2st section, and the file of its labels under the her2st folder.
HER2ST_SECTION = "A1"
HER2ST_LABELS = Path("data") / "ST-pat" / "lbl" / f"{HER2ST_SECTION}_labeled_coordinates.tsv"
#: Labels that name no tissue region.
UNLABELLED = ("undetermined",)
#: Principal components of the observed expression (the reference row).
N_PCS = 50
#: The embeddings scored, in table order.
EMBEDDINGS = [
    "CoMTIP image embedding (X_comtip)",
    "colour statistics (54, spot tile)",
    "frozen trunk features",
    "observed expression PCA (reference)",
]


def her2st_region_labels(path: str | os.PathLike, table: AnnData, section: str = HER2ST_SECTION) -> pd.Series:
    """The pathologist's region label of every spot of ``section`` in ``table`` (NaN where none).

    The label file gives each spot's array coordinates ``x`` (column) and ``y`` (row) as fractional
    positions; rounded, they are the spot's ``array_col`` / ``array_row`` in the table.

    Parameters
    ----------
    path
        The label file (tab-separated, columns ``x``, ``y``, ``label``).
    table
        A table read by :func:`comtip_sc.datasets.her2st` (obs ``sample``, ``array_row``, ``array_col``).
    section
        Section the labels belong to.

    Returns
    -------
    A string series indexed like ``table.obs_names``; NaN for spots of other sections, spots the file does
    not label, and :data:`UNLABELLED` ones.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> t = cs.datasets.her2st("path/to/her2st", sections=["A1"]).tables["table"]  # doctest: +SKIP
    >>> her2st_region_labels("path/to/her2st/" + str(HER2ST_LABELS), t).nunique()  # doctest: +SKIP
    5

    """
    lbl = pd.read_csv(path, sep="\t")
    missing = [c for c in ("x", "y", "label") if c not in lbl.columns]
    if missing:
        raise KeyError(f"{path} lacks the column(s) {missing}; it has {list(lbl.columns)}.")
    for col in ("sample", "array_row", "array_col"):
        if col not in table.obs:
            raise KeyError(f"The table lacks the obs column {col!r} needed to place the labels of {path}.")
    keys = lbl["x"].round().astype(int).astype(str) + "x" + lbl["y"].round().astype(int).astype(str)
    by_spot = pd.Series(lbl["label"].astype(str).to_numpy(), index=keys)
    by_spot = by_spot[~by_spot.index.duplicated(keep=False) & ~by_spot.isin(UNLABELLED)]
    obs = table.obs
    spot = obs["array_col"].astype(int).astype(str) + "x" + obs["array_row"].astype(int).astype(str)
    labels = pd.Series(spot.map(by_spot).to_numpy(), index=obs.index, dtype=object)
    labels[obs["sample"].astype(str).to_numpy() != section] = np.nan
    return labels


def expression_pcs(table: AnnData, n_comps: int = N_PCS) -> np.ndarray:
    """PCA of the observed expression (1e4 + log1p over all genes): the reference embedding."""
    import scanpy as sc

    adata = AnnData(table.X.copy())
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_comps = int(min(n_comps, adata.n_obs - 1, adata.n_vars - 1))
    return sc.pp.pca(adata.X, n_comps=n_comps, random_state=0)


def leiden_for_classes(x: np.ndarray, n_classes: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Leiden clusters of ``x`` at the resolution whose cluster count is closest to ``n_classes``.

    Returns
    -------
    ``(clusters, resolution)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal(0, 0.1, (30, 4)), rng.normal(5, 0.1, (30, 4))])
    >>> clusters, res = leiden_for_classes(x, 2)
    >>> len(set(clusters))
    2

    """
    import scanpy as sc

    adata = AnnData(np.zeros((len(x), 0), np.float32), obsm={"X_rep": np.asarray(x, np.float32)})
    sc.pp.neighbors(adata, use_rep="X_rep", n_neighbors=min(15, len(x) - 1), random_state=seed)
    best = None
    for res in RESOLUTIONS:
        sc.tl.leiden(adata, resolution=res, flavor="igraph", n_iterations=2, random_state=seed, key_added="c")
        clusters = adata.obs["c"].astype(int).to_numpy()
        gap = abs(len(np.unique(clusters)) - n_classes)
        if best is None or gap < best[0]:
            best = (gap, clusters, res)
    return best[1], best[2]


def probe_balanced_accuracy(
    x: np.ndarray, labels: np.ndarray, centres: np.ndarray, n_blocks: int = 5
) -> float:
    """Balanced accuracy of a logistic-regression probe over spatial-block CV of one section's spots.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(0, 10, (80, 2)); y = (xy[:, 0] > 5).astype(str)
    >>> probe_balanced_accuracy(xy, y, xy) > 0.8
    True

    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = spatial_folds(centres, ["s"] * len(labels), n_blocks=n_blocks)
    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    pred = cross_val_predict(probe, x, labels, cv=PredefinedSplit(folds))
    return float(balanced_accuracy_score(labels, pred))


def cluster_scores(x: np.ndarray, labels: np.ndarray, centres: np.ndarray, seed: int = 0) -> dict:
    """ARI and NMI of leiden clusters and the probe's balanced accuracy of one embedding.

    ``x``, ``labels`` and ``centres`` hold the labelled spots only. The neighbour graph is euclidean on
    ``x`` as given (standardise features of mixed units first); the probe standardises them itself.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = np.asarray(x, np.float64)
    classes = np.unique(labels)
    clusters, res = leiden_for_classes(x, len(classes), seed)
    return {
        "ARI": float(adjusted_rand_score(labels, clusters)),
        "NMI": float(normalized_mutual_info_score(labels, clusters)),
        "probe bal. acc.": probe_balanced_accuracy(x, labels, centres),
        "n_clusters": len(np.unique(clusters)),
        "resolution": res,
        "n_classes": len(classes),
        "n_spots": len(labels),
        "n_dims": x.shape[1],
    }


def score_embeddings(
    test: SpatialData, regions: pd.Series, embeddings: dict[str, np.ndarray], seed: int = 0
) -> list[dict]:
    """:func:`cluster_scores` of every embedding of the test table's labelled spots (one section).

    Parameters
    ----------
    test
        The held-out SpatialData (its table's rows are the embeddings' rows).
    regions
        Region label of every test spot, NaN where none (:attr:`benchmarks.folds.Fold.regions`).
    embeddings
        ``{row name: (n_test, d) array}``.
    seed
        Leiden's random state.

    Returns
    -------
    One dict per embedding: ``section``, ``embedding`` and the scores.

    """
    table = test.tables[TABLE_KEY]
    keep = regions.reindex(table.obs_names).notna().to_numpy()
    centres = spot_layout(resolve_sections(test), table.n_obs)[1]
    sections = sorted(set(table.obs[SAMPLE_KEY].astype(str).to_numpy()[keep]))
    if len(sections) != 1:
        raise ValueError(f"Region labels must cover one test section, they cover {sections}.")
    labels = regions.reindex(table.obs_names).to_numpy()[keep].astype(str)
    import torch

    # scanpy's neighbour search resets torch's intra-op threads (1 → 2 on the benchmark machine); the
    # fits that follow in the same process must run on the threads they would have had without it.
    threads = torch.get_num_threads()
    try:
        return [
            {
                "section": sections[0],
                "embedding": name,
                **cluster_scores(x[keep], labels, centres[keep], seed),
            }
            for name, x in embeddings.items()
        ]
    finally:
        torch.set_num_threads(threads)
