"""``cs.tl.evaluate``: expression-prediction metrics as defined in the benchmark protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import TABLE_KEY
from .._sections import get_table
from ._datamodule import normalized_values

#: Genes in the "highly expressed" and "highly variable" subsets of the protocol.
N_HEG = 50
N_HVG = 50


def pearson_per_gene(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column; a column constant in either input scores 0 (never NaN).

    Examples
    --------
    >>> import numpy as np
    >>> pearson_per_gene(np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]), np.array([[1.0, 5.0], [2.0, 1.0], [4.0, 0.0]])).round(3).tolist()
    [0.982, 0.0]

    """
    t = true - true.mean(axis=0)
    p = pred - pred.mean(axis=0)
    ss_t, ss_p = (t**2).sum(axis=0), (p**2).sum(axis=0)
    # A constant column leaves rounding residue after centring (~1e-16 of its magnitude), and that residue
    # correlates with anything: "constant" is judged relative to the column's magnitude, not absolutely.
    flat = (ss_t <= _flat_tol(true)) | (ss_p <= _flat_tol(pred))
    denom = np.sqrt(ss_t * ss_p)
    num = (t * p).sum(axis=0)
    r = np.divide(num, denom, out=np.zeros(true.shape[1]), where=~flat & (denom > 0))
    return np.clip(r, -1.0, 1.0)


def _flat_tol(x: np.ndarray) -> np.ndarray:
    """Sum of squares under which a column's spread is rounding error of its magnitude."""
    return len(x) * (1e-9 * np.abs(x).max(axis=0, initial=0.0)) ** 2 + 1e-24


def _metrics(
    true: np.ndarray, pred: np.ndarray, n_heg: int, n_hvg: int
) -> tuple[dict[str, float], np.ndarray]:
    r = pearson_per_gene(true, pred)
    heg = np.argsort(-true.mean(axis=0), kind="stable")[:n_heg]
    hvg = np.argsort(-true.var(axis=0), kind="stable")[:n_hvg]
    row = {
        "PCC-ALL": float(r.mean()),
        "PCC-HEG": float(r[heg].mean()),
        "PCC-HVG": float(r[hvg].mean()),
        "MSE": float(np.mean((true - pred) ** 2)),
        "MAE": float(np.mean(np.abs(true - pred))),
        "n_spots": int(true.shape[0]),
        "n_genes": int(true.shape[1]),
    }
    return row, r


def evaluate(
    sdata: SpatialData | AnnData,
    *,
    layer_true: str | None = None,
    layer_pred: str = "comtip_pred",
    genes: Sequence[str] | None = None,
    groupby: str | None = None,
    table_key: str = TABLE_KEY,
    key_added: str | None = "comtip_pcc",
    n_heg: int = N_HEG,
    n_hvg: int = N_HVG,
) -> pd.DataFrame:
    """Score predicted against observed expression.

    Metrics follow the benchmark protocol: PCC-ALL is the mean per-gene Pearson correlation over the
    genes (a gene constant in the observed or predicted values counts 0, never NaN); PCC-HEG and
    PCC-HVG average it over the ``n_heg`` genes with the highest mean and the ``n_hvg`` genes with the
    highest variance of the observed values in the evaluated spots; MSE and MAE average over spots × genes.

    Parameters
    ----------
    sdata
        SpatialData (its ``table_key`` table is used) or an AnnData.
    layer_true
        Layer of observed expression on the normalised log1p scale; ``None`` normalises ``X`` (1e4 + log1p).
    layer_pred
        Layer of predictions (e.g. from :func:`comtip_predict`).
    genes
        Genes to score; default every gene with a prediction (no NaN).
    groupby
        ``obs`` column: one row of metrics per group (e.g. per section), plus ``"all"``.
    table_key
        Table of a SpatialData.
    key_added
        ``var`` column receiving the per-gene Pearson over all evaluated spots (``None``: not written).
    n_heg, n_hvg
        Sizes of the HEG / HVG subsets.

    Returns
    -------
    DataFrame indexed by group (``"all"`` first) with PCC-ALL, PCC-HEG, PCC-HVG, MSE, MAE, n_spots, n_genes.

    Examples
    --------
    >>> cs.tl.evaluate(sdata, layer_pred="comtip_pred", groupby="sample")  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    if layer_pred not in table.layers:
        raise KeyError(f"Layer {layer_pred!r} is not in the table; run cs.tl.comtip_predict first.")
    pred_all = table.layers[layer_pred]
    pred_all = np.asarray(pred_all.toarray() if sp.issparse(pred_all) else pred_all, dtype=np.float64)
    if genes is None:
        keep = ~np.isnan(pred_all).any(axis=0)
        genes = table.var_names[keep].tolist()
        if not genes:
            raise ValueError(f"Layer {layer_pred!r} has no gene predicted for every spot.")
    else:
        missing = [g for g in genes if g not in table.var_names]
        if missing:
            raise KeyError(f"Genes {missing[:10]} are not in the table.")
    cols = table.var_names.get_indexer(list(genes))
    pred = pred_all[:, cols]
    if np.isnan(pred).any():
        bad = [genes[j] for j in np.flatnonzero(np.isnan(pred).any(axis=0))[:5]]
        raise ValueError(f"Layer {layer_pred!r} has NaN predictions for genes {bad}.")
    true = normalized_values(table, list(genes), layer=layer_true).astype(np.float64)
    overall, r = _metrics(true, pred, n_heg, n_hvg)
    rows = {"all": overall}
    if groupby is not None:
        if groupby not in table.obs:
            raise KeyError(f"groupby={groupby!r} is not an obs column.")
        labels = table.obs[groupby].astype(str).to_numpy()
        if "all" in labels:
            raise ValueError(
                f"groupby={groupby!r} has a group named 'all', which is the label of the overall row."
            )
        for g in pd.unique(labels):
            sel = labels == g
            rows[g], _ = _metrics(true[sel], pred[sel], n_heg, n_hvg)
    if key_added is not None:
        col = np.full(table.n_vars, np.nan)
        col[cols] = r
        table.var[key_added] = col
    return pd.DataFrame.from_dict(rows, orient="index")
