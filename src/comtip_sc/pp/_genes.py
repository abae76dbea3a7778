"""Gene panel selection, normalisation and spot filtering on the expression table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from .._constants import NORM_LAYER, NORM_TARGET_SUM, PANEL_KEY, SAMPLE_KEY, TABLE_KEY, UNS_KEY

__all__ = ["filter_spots", "normalize", "select_genes"]

logger = logging.getLogger(__name__)

Data = TypeVar("Data", SpatialData, AnnData)


def _get_table(data: SpatialData | AnnData, table_key: str) -> AnnData:
    if isinstance(data, AnnData):
        return data
    if isinstance(data, SpatialData):
        if table_key not in data.tables:
            raise KeyError(
                f"SpatialData has no table {table_key!r}; available tables: {sorted(data.tables.keys())}."
            )
        return data.tables[table_key]
    raise TypeError(f"Expected a SpatialData or an AnnData, got {type(data).__name__}.")


def _with_table(data: Data, table_key: str, table: AnnData) -> Data:
    """A new container holding ``table``; a SpatialData's other elements are shared, not copied."""
    if isinstance(data, AnnData):
        return table
    tables = dict(data.tables)
    tables[table_key] = table
    return SpatialData(
        images=dict(data.images),
        labels=dict(data.labels),
        points=dict(data.points),
        shapes=dict(data.shapes),
        tables=tables,
        attrs=dict(data.attrs),
    )


def _check_counts(adata: AnnData) -> None:
    """Raise if ``X`` holds a negative or non-finite value, naming the first such spot and gene."""
    x = adata.X
    if x is None:
        raise ValueError("The table has no X; raw counts are expected there.")
    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        bad = np.flatnonzero(~(x.data >= 0) | ~np.isfinite(x.data))
        if bad.size == 0:
            return
        rows = np.searchsorted(x.indptr, bad, side="right") - 1
        first = bad[rows == rows.min()]
        k = first[np.argmin(x.indices[first])]
        row, col, value = rows.min(), x.indices[k], x.data[k]
    else:
        arr = np.asarray(x)
        bad = ~(arr >= 0) | ~np.isfinite(arr)
        if not bad.any():
            return
        row, col = np.argwhere(bad)[0]
        value = arr[row, col]
    raise ValueError(
        "Counts in X must be non-negative and finite; first offending entry: "
        f"spot {adata.obs_names[row]!r}, gene {adata.var_names[col]!r} = {value}."
    )


def _settings(adata: AnnData) -> dict:
    if not isinstance(adata.uns.get(UNS_KEY), dict):
        adata.uns[UNS_KEY] = {}
    return adata.uns[UNS_KEY]


def _log_normalised(adata: AnnData, target_sum: float = NORM_TARGET_SUM):
    """The normalised layer if present, otherwise the same values computed without touching ``X``."""
    if NORM_LAYER in adata.layers:
        return adata.layers[NORM_LAYER]
    norm = sc.pp.normalize_total(adata, target_sum=target_sum, inplace=False)["X"]
    return sc.pp.log1p(norm.astype(np.float32), copy=False)


def _present_in_all_groups(adata: AnnData, groupby: str | None) -> np.ndarray:
    """Boolean mask of genes with a non-zero total count in every group (section) of ``groupby``."""
    if groupby is None or groupby not in adata.obs:
        if groupby is not None and groupby != SAMPLE_KEY:
            raise KeyError(f"obs has no column {groupby!r} to group by; columns: {list(adata.obs.columns)}.")
        codes, n_groups = np.zeros(adata.n_obs, dtype=np.int64), 1
    else:
        cat = pd.Categorical(adata.obs[groupby])
        codes, n_groups = cat.codes.astype(np.int64), len(cat.categories)
    spots = np.flatnonzero(codes >= 0)  # spots without a group (NaN) do not vote
    indicator = sparse.csr_matrix((np.ones(len(spots)), (codes[spots], spots)), shape=(n_groups, adata.n_obs))
    # Float indicator: summing int32 counts over many spots in int32 could overflow.
    totals = np.asarray((indicator @ adata.X).todense() if sparse.issparse(adata.X) else indicator @ adata.X)
    return (totals > 0).all(axis=0)


def select_genes(
    data: Data,
    *,
    n_top: int = 250,
    method: Literal["mean", "hvg", "list"] = "mean",
    genes: Sequence[str] | None = None,
    groupby: str | None = SAMPLE_KEY,
    table_key: str = TABLE_KEY,
    key_added: str = PANEL_KEY,
    copy: bool = False,
) -> Data | None:
    """Mark the gene panel that the model predicts and embeds.

    With ``"mean"`` and ``"hvg"``, only genes detected (non-zero total count) in **every** group of
    ``groupby`` are candidates, so a panel learnt on several sections is measured in all of them.

    Parameters
    ----------
    data
        SpatialData (its table ``table_key`` is used) or AnnData with raw counts in ``X``.
    n_top
        Panel size for ``"mean"`` and ``"hvg"``; fewer if fewer genes qualify.
    method
        ``"mean"``: highest mean normalised expression (1e4 per spot + log1p; layer ``comtip_norm``
        if present, otherwise computed without changing ``X``). ``"hvg"``: most variable genes by
        :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat"``, on a log-normalised copy).
        ``"list"``: exactly ``genes``.
    genes
        Gene names for ``method="list"``.
    groupby
        ``obs`` column with the section of each spot. If it is the default ``"sample"`` and absent,
        all spots form one group.
    table_key
        Table to use when ``data`` is a SpatialData.
    key_added
        Boolean ``var`` column written.
    copy
        Return a new object instead of modifying ``data``.

    Returns
    -------
    ``None``, or with ``copy=True`` a new object of the type of ``data``. Writes ``var[key_added]``
    and ``uns["comtip"]["panel"]`` (genes in rank order) and the settings in
    ``uns["comtip"]["select_genes"]``.

    Raises
    ------
    KeyError
        If ``method="list"`` and genes are missing from the table (all are named), or ``table_key`` or
        ``groupby`` does not exist.
    ValueError
        For an unknown method or counts that are negative or NaN.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue()
    >>> cs.pp.select_genes(sdata, n_top=50)
    >>> int(sdata.tables["table"].var["comtip_panel"].sum())
    50
    >>> cs.pp.select_genes(sdata, method="list", genes=["KRT19", "PTPRC"])

    """
    if method not in ("mean", "hvg", "list"):
        raise ValueError(f"method must be 'mean', 'hvg' or 'list', got {method!r}.")
    if (method == "list") != (genes is not None):
        raise ValueError("Pass `genes` together with method='list', and only then.")
    if method != "list" and n_top < 1:
        raise ValueError(f"n_top must be positive, got {n_top}.")

    adata = _get_table(data, table_key)
    _check_counts(adata)
    if copy:
        adata = adata.copy()
    var_names = adata.var_names

    if method == "list":
        panel = list(dict.fromkeys(genes))
        missing = [g for g in panel if g not in var_names]
        if missing:
            raise KeyError(f"{len(missing)} requested gene(s) not in the table: {missing}.")
        absent = var_names[~_present_in_all_groups(adata, groupby)].intersection(panel)
        if len(absent):
            logger.warning("Panel genes with zero counts in at least one %r group: %s", groupby, list(absent))
        n_candidates = len(panel)
    else:
        candidates = np.flatnonzero(_present_in_all_groups(adata, groupby))
        n_candidates = len(candidates)
        if n_candidates < n_top:
            logger.warning(
                "Only %d genes are detected in every %r group; the panel has %d instead of %d genes.",
                n_candidates,
                groupby,
                n_candidates,
                n_top,
            )
        lognorm = _log_normalised(adata)[:, candidates]
        if method == "mean":
            score = np.asarray(lognorm.mean(axis=0)).ravel()
            # Stable sort: ties keep the table's gene order, so the panel is reproducible.
            order = np.argsort(-score, kind="stable")[:n_top]
        else:
            order = _hvg_order(lognorm, adata.obs_names, var_names[candidates], n_top)
        panel = list(var_names[candidates[order]])

    adata.var[key_added] = var_names.isin(panel)
    settings = _settings(adata)
    settings["panel"] = panel
    settings["select_genes"] = {
        "method": method,
        "n_top": int(n_top),
        "groupby": groupby or "",
        "key_added": key_added,
        "n_candidates": int(n_candidates),
    }
    logger.info(
        "select_genes(%s): %d genes marked in var[%r]; ranked list in uns[%r]['panel'].",
        method,
        len(panel),
        key_added,
        UNS_KEY,
    )
    return _with_table(data, table_key, adata) if copy else None


def _hvg_order(lognorm, obs_names: pd.Index, genes: pd.Index, n_top: int) -> np.ndarray:
    """Indices (into ``genes``) of the top ``n_top`` genes by scanpy's normalised dispersion."""
    tmp = AnnData(X=lognorm, obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=genes))
    n = min(n_top, len(genes))
    df = sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n, inplace=False)
    disp = df["dispersions_norm"].to_numpy(dtype=float)
    disp = np.where(np.isnan(disp), -np.inf, disp)
    hv = np.flatnonzero(df["highly_variable"].to_numpy())
    return hv[np.argsort(-disp[hv], kind="stable")]


def normalize(
    data: Data,
    *,
    target_sum: float = NORM_TARGET_SUM,
    layer_added: str = NORM_LAYER,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> Data | None:
    """Library-size normalise and log-transform into a layer, keeping raw counts in ``X``.

    Uses :func:`scanpy.pp.normalize_total` and :func:`scanpy.pp.log1p` on a copy of ``X``.

    Parameters
    ----------
    data
        SpatialData (its table ``table_key`` is used) or AnnData with raw counts in ``X``.
    target_sum
        Total each spot is scaled to before ``log1p``.
    layer_added
        Layer written (``float32``).
    table_key
        Table to use when ``data`` is a SpatialData.
    copy
        Return a new object instead of modifying ``data``.

    Returns
    -------
    ``None``, or with ``copy=True`` a new object of the type of ``data``. Writes
    ``layers[layer_added]`` and the settings in ``uns["comtip"]["normalize"]``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue()
    >>> cs.pp.normalize(sdata)
    >>> sdata.tables["table"].layers["comtip_norm"].dtype
    dtype('float32')

    """
    adata = _get_table(data, table_key)
    _check_counts(adata)
    if copy:
        adata = adata.copy()
    norm = sc.pp.normalize_total(adata, target_sum=target_sum, inplace=False)["X"]
    adata.layers[layer_added] = sc.pp.log1p(norm.astype(np.float32), copy=False)
    _settings(adata)["normalize"] = {"target_sum": float(target_sum), "layer": layer_added}
    logger.info(
        "normalize: log1p(counts / total * %g) written to layers[%r]; X unchanged.", target_sum, layer_added
    )
    return _with_table(data, table_key, adata) if copy else None


def filter_spots(
    data: Data,
    *,
    min_counts: int = 100,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> Data | None:
    """Drop spots with fewer than ``min_counts`` UMIs from the table.

    The shapes keep every spot; the filtered table simply annotates fewer of them.

    Parameters
    ----------
    data
        SpatialData (its table ``table_key`` is used) or AnnData with raw counts in ``X``.
    min_counts
        Smallest total UMI count kept.
    table_key
        Table to use when ``data`` is a SpatialData.
    copy
        Return a new object instead of modifying ``data``.

    Returns
    -------
    ``None``, or with ``copy=True`` a new object of the type of ``data``. With a SpatialData and
    ``copy=False`` the table ``table_key`` is **replaced** by the filtered one, so earlier references
    to the old table still see every spot. Settings go to ``uns["comtip"]["filter_spots"]``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue()
    >>> cs.pp.filter_spots(sdata, min_counts=500)
    >>> sdata.tables["table"].n_obs <= 400
    True

    """
    adata = _get_table(data, table_key)
    _check_counts(adata)
    keep, _ = sc.pp.filter_cells(adata.X, min_counts=min_counts, inplace=False)
    removed = ~keep
    if SAMPLE_KEY in adata.obs:
        per_sample = (
            pd.Series(removed, index=adata.obs_names).groupby(adata.obs[SAMPLE_KEY], observed=True).sum()
        )
        detail = ", ".join(f"{s}: {int(n)}" for s, n in per_sample.items())
    else:
        detail = "no sample column"
    logger.info(
        "filter_spots: removed %d of %d spots with < %d UMIs (%s).",
        removed.sum(),
        adata.n_obs,
        min_counts,
        detail,
    )

    if isinstance(data, AnnData) and not copy:
        # AnnData has no public in-place row subset; this is what scanpy's own filters use.
        adata._inplace_subset_obs(keep)
        filtered = adata
    else:
        filtered = adata[keep].copy()
    _settings(filtered)["filter_spots"] = {"min_counts": int(min_counts), "n_removed": int(removed.sum())}
    if copy:
        return _with_table(data, table_key, filtered)
    if isinstance(data, SpatialData):
        data.tables[table_key] = filtered
        logger.info("filter_spots: replaced sdata.tables[%r] with the filtered table.", table_key)
    return None
