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

from .._constants import N_TOP_GENES, NORM_LAYER, NORM_TARGET_SUM, PANEL_KEY, SAMPLE_KEY, TABLE_KEY, UNS_KEY
from .._deprecation import renamed_arguments
from .._tables import check_counts, get_table, log_normalize, with_tables

__all__ = ["filter_spots", "normalize", "select_genes"]

logger = logging.getLogger(__name__)

Data = TypeVar("Data", SpatialData, AnnData)


def _with_table(data: Data, table_key: str, table: AnnData) -> Data:
    """A new container holding ``table``; a SpatialData's other elements are shared, not copied."""
    if isinstance(data, AnnData):
        return table
    return with_tables(data, {**data.tables, table_key: table})


def _settings(adata: AnnData) -> dict:
    if not isinstance(adata.uns.get(UNS_KEY), dict):
        adata.uns[UNS_KEY] = {}
    return adata.uns[UNS_KEY]


def _log_normalised(adata: AnnData):
    """The normalised layer if present, otherwise the same values computed without touching ``X``."""
    if NORM_LAYER in adata.layers:
        return adata.layers[NORM_LAYER]
    return log_normalize(adata.X)


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


@renamed_arguments(n_top="n_top_genes")
def select_genes(
    data: Data,
    *,
    n_top_genes: int = N_TOP_GENES,
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
    n_top_genes
        Panel size for ``"mean"`` and ``"hvg"``; fewer if fewer genes qualify (formerly ``n_top``,
        still accepted with a :class:`FutureWarning`).
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
    >>> cs.pp.select_genes(sdata, n_top_genes=50)
    >>> int(sdata.tables["table"].var["comtip_panel"].sum())
    50
    >>> cs.pp.select_genes(sdata, method="list", genes=["KRT19", "PTPRC"])

    """
    if method not in ("mean", "hvg", "list"):
        raise ValueError(f"method must be 'mean', 'hvg' or 'list', got {method!r}.")
    if (method == "list") != (genes is not None):
        raise ValueError("Pass `genes` together with method='list', and only then.")
    if method != "list" and n_top_genes < 1:
        raise ValueError(f"n_top_genes must be positive, got {n_top_genes}.")

    adata = get_table(data, table_key)
    check_counts(adata)
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
            where = "in the table" if groupby is None else f"in at least one {groupby!r} group"
            logger.warning("Panel genes with zero counts %s: %s", where, list(absent))
        n_candidates = len(panel)
    else:
        candidates = np.flatnonzero(_present_in_all_groups(adata, groupby))
        n_candidates = len(candidates)
        if n_candidates < n_top_genes:
            where = "in the table" if groupby is None else f"in every {groupby!r} group"
            # The default size is a ceiling that a small panel simply does not reach; a size the caller asked
            # for and did not get is worth a warning.
            logger.log(
                logging.INFO if n_top_genes == N_TOP_GENES else logging.WARNING,
                "Only %d genes are detected %s; the panel has %d instead of %d genes.",
                n_candidates,
                where,
                n_candidates,
                n_top_genes,
            )
        lognorm = _log_normalised(adata)[:, candidates]
        if method == "mean":
            score = np.asarray(lognorm.mean(axis=0)).ravel()
            # Stable sort: ties keep the table's gene order, so the panel is reproducible.
            order = np.argsort(-score, kind="stable")[:n_top_genes]
        else:
            order = _hvg_order(lognorm, adata.obs_names, var_names[candidates], n_top_genes)
        panel = list(var_names[candidates[order]])

    adata.var[key_added] = var_names.isin(panel)
    settings = _settings(adata)
    settings["panel"] = panel
    settings["select_genes"] = {
        "method": method,
        "n_top_genes": int(n_top_genes),
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


def _hvg_order(lognorm, obs_names: pd.Index, genes: pd.Index, n_top_genes: int) -> np.ndarray:
    """Indices (into ``genes``) of the top ``n_top_genes`` genes by scanpy's normalised dispersion."""
    tmp = AnnData(X=lognorm, obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=genes))
    n = min(n_top_genes, len(genes))
    df = sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n, inplace=False)
    disp = df["dispersions_norm"].to_numpy(dtype=float)
    disp = np.where(np.isnan(disp), -np.inf, disp)
    hv = np.flatnonzero(df["highly_variable"].to_numpy())
    return hv[np.argsort(-disp[hv], kind="stable")]


@renamed_arguments(layer_added="key_added")
def normalize(
    data: Data,
    *,
    target_sum: float = NORM_TARGET_SUM,
    key_added: str = NORM_LAYER,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> Data | None:
    """Library-size normalise and log-transform into a layer, keeping raw counts in ``X``.

    The values of :func:`scanpy.pp.normalize_total` followed by :func:`scanpy.pp.log1p`, computed from
    ``X`` without changing it (sparse counts give a sparse layer).

    Parameters
    ----------
    data
        SpatialData (its table ``table_key`` is used) or AnnData with raw counts in ``X``.
    target_sum
        Total each spot is scaled to before ``log1p``.
    key_added
        Layer written (``float32``; formerly ``layer_added``, still accepted with a :class:`FutureWarning`).
    table_key
        Table to use when ``data`` is a SpatialData.
    copy
        Return a new object instead of modifying ``data``.

    Returns
    -------
    ``None``, or with ``copy=True`` a new object of the type of ``data``. Writes
    ``layers[key_added]`` and the settings in ``uns["comtip"]["normalize"]``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue()
    >>> cs.pp.normalize(sdata)
    >>> sdata.tables["table"].layers["comtip_norm"].dtype
    dtype('float32')

    """
    adata = get_table(data, table_key)
    check_counts(adata)
    if copy:
        adata = adata.copy()
    adata.layers[key_added] = log_normalize(adata.X, target_sum=target_sum)
    _settings(adata)["normalize"] = {"target_sum": float(target_sum), "key_added": key_added}
    logger.info(
        "normalize: log1p(counts / total * %g) written to layers[%r]; X unchanged.", target_sum, key_added
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
    adata = get_table(data, table_key)
    check_counts(adata)
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
