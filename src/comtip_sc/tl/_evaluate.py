"""``cs.tl.evaluate``: expression-prediction metrics as defined in the benchmark protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import PRED_KEY, TABLE_KEY
from .._deprecation import renamed_arguments
from .._predictions import get_predictions
from .._tables import get_table, normalized_values

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


@renamed_arguments(layer_true="layer", layer_pred="pred_key")
def evaluate(
    sdata: SpatialData | AnnData,
    *,
    pred_key: str = PRED_KEY,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    groupby: str | None = None,
    table_key: str = TABLE_KEY,
    key_added: str | None = None,
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
    pred_key
        Key of the predictions written by :func:`comtip_predict` (its ``key_added``: ``layers`` and
        ``obsm``). Formerly
        ``layer_pred``, still accepted with a :class:`FutureWarning`.
    layer
        Layer of observed expression, as everywhere in the package: ``None`` reads the raw counts in
        ``X`` and normalises them (1e4 per spot + log1p) without writing anything; a layer name is taken
        as already on that scale (e.g. from :func:`comtip_sc.pp.normalize`). Formerly ``layer_true``.
    genes
        Genes to score; default every predicted gene that the table measures.
    groupby
        ``obs`` column: one row of metrics per group (e.g. per section), plus ``"all"``.
    table_key
        Table of a SpatialData.
    key_added
        ``None`` (default): nothing is written. A name: the per-gene Pearson over all evaluated spots goes
        to ``var[key_added]`` (NaN for genes not evaluated), as :func:`comtip_sc.pl.gene_pcc` reads it.
    n_heg, n_hvg
        Sizes of the HEG / HVG subsets.

    Returns
    -------
    DataFrame indexed by group (``"all"`` first) with PCC-ALL, PCC-HEG, PCC-HVG, MSE, MAE, n_spots, n_genes.

    Examples
    --------
    >>> cs.tl.evaluate(sdata, pred_key="comtip_pred", groupby="sample")  # doctest: +SKIP
    >>> cs.tl.evaluate(sdata, key_added="comtip_pcc")  # doctest: +SKIP
    >>> cs.pl.gene_pcc(sdata, key="comtip_pcc")  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    frame = get_predictions(table, pred_key)
    if genes is None:
        genes = [g for g in frame.columns if g in table.var_names]
        if not genes:
            raise ValueError(
                f"Prediction {pred_key!r} predicts no gene that the table measures "
                f"(predicted: {list(frame.columns)[:10]})."
            )
    else:
        genes = list(genes)
        missing = [g for g in genes if g not in table.var_names]
        if missing:
            raise KeyError(f"Genes {missing[:10]} are not in the table.")
        unpredicted = [g for g in genes if g not in frame.columns]
        if unpredicted:
            raise KeyError(f"Genes {unpredicted[:10]} have no prediction under {pred_key!r}.")
    pred = frame[list(genes)].to_numpy(np.float64)
    if np.isnan(pred).any():
        bad = [genes[j] for j in np.flatnonzero(np.isnan(pred).any(axis=0))[:5]]
        raise ValueError(f"Prediction {pred_key!r} has NaN values for genes {bad}.")
    true = normalized_values(table, list(genes), layer=layer).astype(np.float64)
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
        col[table.var_names.get_indexer(list(genes))] = r
        table.var[key_added] = col
    return pd.DataFrame.from_dict(rows, orient="index")
