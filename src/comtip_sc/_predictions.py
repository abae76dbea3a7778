"""Where predicted expression lives in a table, and reading it back.

:func:`comtip_sc.tl.comtip_predict` writes the predictions of the genes the table measures into
``layers[key]``: a sparse CSR matrix over the table's ``var`` whose stored entries are exactly the
predicted genes' columns (every other gene is an implicit zero, never a dense block of NaN). Predicted
genes the table does not measure (zero-shot genes outside its ``var``) go to ``obsm[key]``, a
:class:`pandas.DataFrame` of spots × those genes. ``uns["comtip"]["predict"][key]["genes"]`` lists every
predicted gene in order, so the layer's predicted columns are known without looking at the values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from spatialdata import SpatialData

from ._constants import PRED_KEY, TABLE_KEY, UNS_KEY
from ._tables import get_table


def split_by_table(names: Sequence[str], table: AnnData) -> tuple[list[str], list[str]]:
    """Predicted genes the table measures (they go to the layer) and those it does not (to ``obsm``)."""
    measured = [g for g in names if g in table.var_names]
    return measured, [g for g in names if g not in table.var_names]


def store_predictions(table: AnnData, pred: np.ndarray, names: Sequence[str], key: str) -> None:
    """Write ``pred`` (spots × ``names``) into ``layers[key]`` and ``obsm[key]`` as the module docstring says.

    Whatever an earlier call left under ``key`` is replaced, so no stale gene survives.
    """
    pred = np.asarray(pred, dtype=np.float32)
    measured, unmeasured = split_by_table(names, table)
    table.layers.pop(key, None)
    table.obsm.pop(key, None)
    if measured:
        cols = table.var_names.get_indexer(measured)
        order = np.argsort(cols)  # CSR wants each row's column indices sorted
        pick = np.array([list(names).index(g) for g in measured])[order]
        n, m = table.n_obs, len(measured)
        table.layers[key] = sp.csr_matrix(
            (pred[:, pick].ravel(), np.tile(cols[order], n), np.arange(0, n * m + 1, m)),
            shape=(n, table.n_vars),
        )
    if unmeasured:
        pick = [list(names).index(g) for g in unmeasured]
        table.obsm[key] = pd.DataFrame(
            pred[:, pick], index=table.obs_names.copy(), columns=pd.Index(unmeasured, dtype=str)
        )


def _recorded_genes(table: AnnData, key: str) -> list[str] | None:
    rec = table.uns.get(UNS_KEY, {}).get("predict", {}).get(key)
    if not isinstance(rec, dict) or "genes" not in rec:
        return None
    return [str(g) for g in rec["genes"]]


def get_predictions(table: AnnData, pred_key: str) -> pd.DataFrame:
    """Every prediction stored under ``pred_key`` as one DataFrame of spots × predicted genes.

    Reads ``layers[pred_key]`` (the measured genes recorded in ``uns``) and ``obsm[pred_key]`` (the
    others), and the older layout with every gene in ``obsm[pred_key]``.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> t = ad.AnnData(np.ones((2, 1), np.float32))
    >>> t.obsm["comtip_pred"] = pd.DataFrame({"KRT19": [0.5, 1.0]}, index=t.obs_names)
    >>> get_predictions(t, "comtip_pred").columns.tolist()
    ['KRT19']

    """
    frames = []
    if pred_key in table.layers:
        genes = _recorded_genes(table, pred_key)
        if genes is None:
            raise KeyError(
                f"layers[{pred_key!r}] has no record in uns[{UNS_KEY!r}]['predict'][{pred_key!r}]['genes'], so "
                "which of its columns are predictions is unknown; pass the key_added of cs.tl.comtip_predict."
            )
        in_layer = [g for g in genes if g in table.var_names]
        x = table.layers[pred_key][:, table.var_names.get_indexer(in_layer)]
        values = x.toarray() if sp.issparse(x) else np.asarray(x)
        frames.append(pd.DataFrame(values, index=table.obs_names, columns=pd.Index(in_layer, dtype=str)))
    if pred_key in table.obsm:
        extra = table.obsm[pred_key]
        if not isinstance(extra, pd.DataFrame):
            raise TypeError(
                f"obsm[{pred_key!r}] is a {type(extra).__name__}, not the DataFrame of genes that "
                "cs.tl.comtip_predict writes; pass the key of a prediction."
            )
        # Genes in the layer win over an older copy in obsm (a table written by both layouts).
        frames.append(extra.loc[:, ~extra.columns.isin(frames[0].columns)] if frames else extra)
    if not frames:
        raise KeyError(
            f"{pred_key!r} holds no predictions (layers: {list(table.layers.keys())}, obsm: "
            f"{list(table.obsm.keys())}); run cs.tl.comtip_predict(sdata, model, key_added={pred_key!r}) first."
        )
    frame = pd.concat(frames, axis=1) if len(frames) > 1 else frames[0]
    order = _recorded_genes(table, pred_key)
    if order is not None and set(order) == set(frame.columns):
        frame = frame[order]
    return frame


def predictions_adata(
    sdata: SpatialData | AnnData, *, pred_key: str = PRED_KEY, table_key: str = TABLE_KEY
) -> AnnData:
    """The predictions under ``pred_key`` as an AnnData of spots × predicted genes, for scanpy and squidpy.

    ``X`` holds the predicted values (normalised log1p scale) of every predicted gene, measured by the
    table or not; ``var["measured"]`` says which the table measures. ``obs`` is a copy of the table's,
    ``obsm`` shares the table's arrays (``"spatial"``, embeddings) and ``uns["spatial"]`` (images and
    scale factors, when the table has them) is shared too, so spatial plots and statistics run on the
    predicted genes directly. Nothing is written into ``sdata``.

    Parameters
    ----------
    sdata
        SpatialData (its ``table_key`` table) or AnnData with predictions from
        :func:`~comtip_sc.tl.comtip_predict`.
    pred_key
        ``key_added`` of the prediction.
    table_key
        Table of a SpatialData.

    Returns
    -------
    A new :class:`~anndata.AnnData` with ``obs_names`` of the table and ``var_names`` the predicted genes.

    Examples
    --------
    >>> import squidpy as sq  # doctest: +SKIP
    >>> pred = cs.tl.predictions_adata(sdata, pred_key="comtip_pred")  # doctest: +SKIP
    >>> sq.gr.spatial_neighbors(pred)  # doctest: +SKIP
    >>> sq.gr.spatial_autocorr(pred, mode="moran")  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    frame = get_predictions(table, pred_key)
    obsm = {k: v for k, v in table.obsm.items() if not isinstance(v, pd.DataFrame)}
    uns = {"spatial": table.uns["spatial"]} if "spatial" in table.uns else {}
    out = AnnData(
        X=frame.to_numpy(np.float32),
        obs=table.obs.copy(),
        var=pd.DataFrame({"measured": [g in table.var_names for g in frame.columns]}, index=frame.columns),
        obsm=obsm,
        uns=uns,
    )
    return out
