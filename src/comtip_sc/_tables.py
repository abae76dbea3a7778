"""The expression table: finding it, validating its counts, normalising them, and shallow copies.

Every reader of counts in the package goes through here, so the checks and the 1e4 + log1p scale are
the same in preprocessing, training, prediction, evaluation and plotting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from spatialdata import SpatialData

from ._constants import NORM_TARGET_SUM, TABLE_KEY


def get_table(sdata: SpatialData | AnnData, table_key: str = TABLE_KEY) -> AnnData:
    """Return the table of ``sdata`` (or ``sdata`` itself when it is an AnnData), with a clear error.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> get_table(cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)).n_obs
    16

    """
    if isinstance(sdata, AnnData):
        return sdata
    if not isinstance(sdata, SpatialData):
        raise TypeError(f"Expected a SpatialData or an AnnData, got {type(sdata).__name__}.")
    if table_key not in sdata.tables:
        raise KeyError(
            f"SpatialData has no table {table_key!r}; available tables: {sorted(sdata.tables.keys())}."
        )
    return sdata.tables[table_key]


def require_spatialdata(sdata: object, what: str, also: str = "") -> None:
    """Raise a ``TypeError`` saying what to pass when ``what`` (a function needing H&E tiles) got no SpatialData.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> require_spatialdata(ad.AnnData(np.ones((1, 1))), "cs.tl.comtip_embed")
    Traceback (most recent call last):
    ...
    TypeError: cs.tl.comtip_embed cuts each spot's tile from the H&E image, so it needs a SpatialData...

    """
    if isinstance(sdata, SpatialData):
        return
    got = type(sdata).__name__
    hint = ""
    if isinstance(sdata, AnnData):
        hint = (
            " An AnnData holds the table only. Read the data with spatialdata_io (e.g. "
            "spatialdata_io.visium), with comtip_sc.io or comtip_sc.datasets, or convert a scanpy Visium "
            "AnnData with spatialdata_io.experimental.from_legacy_anndata(adata); the table is then "
            f"sdata.tables['table'].{also}"
        )
    raise TypeError(
        f"{what} cuts each spot's tile from the H&E image, so it needs a SpatialData (image, spot shapes "
        f"and a table annotating them), got {got}.{hint}"
    )


def with_tables(sdata: SpatialData, tables: dict[str, AnnData]) -> SpatialData:
    """A new SpatialData sharing ``sdata``'s images, labels, points, shapes and attrs, with ``tables``.

    The elements are shared, not copied (images can be whole slides and are only read); ``attrs`` is a
    new dict with the same entries, so the copy can annotate itself without touching ``sdata``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> new = with_tables(sdata, {"table": sdata.tables["table"].copy()})
    >>> new.images["toy_image"] is sdata.images["toy_image"]
    True

    """
    return SpatialData(
        images=dict(sdata.images),
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=dict(sdata.shapes),
        tables=tables,
        attrs=dict(sdata.attrs),
    )


def check_genes(table: AnnData, what: str = "table") -> None:
    """Raise ``ValueError`` naming duplicated gene names (``var_names``) of ``table``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> check_genes(ad.AnnData(np.ones((2, 2)), var={"x": [0, 1]}))

    """
    if table.var_names.has_duplicates:
        dup = table.var_names[table.var_names.duplicated()].unique()
        raise ValueError(
            f"{what} has {len(dup)} duplicated gene name(s) in var_names, e.g. {dup[:5].tolist()}. Make them "
            "unique (table.var_names_make_unique()) or keep one row per gene."
        )


def check_counts(
    table: AnnData, *, layer: str | None = None, what: str = "table", integer: bool = False
) -> None:
    """Raise ``ValueError`` naming the first spot and gene with a negative or non-finite value.

    With ``integer=True`` (raw counts are needed) a non-integer value is an error too: normalising values
    that are already normalised would silently change their scale.

    Parameters
    ----------
    table
        The table to check.
    layer
        Layer to check; ``None`` checks ``X`` (raw counts).
    what
        How the error names the table.
    integer
        Also refuse non-integer values.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> check_counts(ad.AnnData(np.ones((2, 3), dtype=np.float32)))

    """
    if layer is not None and layer not in table.layers:
        raise KeyError(f"Layer {layer!r} is not in the {what} (layers: {list(table.layers.keys())}).")
    x = table.layers[layer] if layer is not None else table.X
    source = f"layer {layer!r}" if layer is not None else "X"
    if x is None:
        raise ValueError(f"The {what} has no X; raw counts are expected there.")
    first = _first_bad(x, lambda v: ~np.isfinite(v) | (v < 0))
    label, rule = "negative or NaN", "counts must be non-negative and finite"
    if first is None and integer:
        first = _first_bad(x, lambda v: v != np.round(v))
        label, rule = "non-integer", "raw integer counts are needed here; for normalised values pass layer="
    if first is None:
        return
    row, col, value, n_bad = first
    raise ValueError(
        f"The {what}'s {source} has {n_bad} {label} value(s); the first is at spot {table.obs_names[row]!r}, "
        f"gene {table.var_names[col]!r} = {value}. {rule[0].upper()}{rule[1:]}."
    )


def _first_bad(x, is_bad) -> tuple[int, int, float, int] | None:
    """``(row, col, value, count)`` of the first entry (row-major) where ``is_bad`` holds, else ``None``."""
    if sp.issparse(x):
        # Only the stored entries can be bad; find the first in row-major order without densifying.
        x = sp.csr_matrix(x)
        bad = np.flatnonzero(is_bad(x.data))
        if bad.size == 0:
            return None
        rows = np.searchsorted(x.indptr, bad, side="right") - 1
        first = bad[rows == rows.min()]
        k = first[np.argmin(x.indices[first])]
        return int(rows.min()), int(x.indices[k]), x.data[k], int(bad.size)
    arr = np.asarray(x)
    mask = is_bad(arr)
    if not mask.any():
        return None
    row, col = np.argwhere(mask)[0]
    return int(row), int(col), arr[row, col], int(mask.sum())


def log_normalize(x, *, target_sum: float = NORM_TARGET_SUM, cols: np.ndarray | None = None):
    """``log1p(counts / spot total * target_sum)`` as ``float32``, sparse in → sparse out.

    Computed by :func:`scanpy.pp.normalize_total` and :func:`scanpy.pp.log1p` on a copy (spots with no
    counts stay 0), so the values are scanpy's to the last bit. Totals are over all genes; ``cols`` then
    selects the genes returned.

    Examples
    --------
    >>> import numpy as np
    >>> log_normalize(np.array([[1.0, 3.0], [2.0, 2.0]]), cols=np.array([1])).round(3).ravel().tolist()
    [8.923, 8.517]

    """
    counts = x if sp.issparse(x) else np.asarray(x)
    if not np.issubdtype(counts.dtype, np.floating):
        counts = counts.astype(np.float32)
    norm = sc.pp.normalize_total(AnnData(counts), target_sum=target_sum, inplace=False)["X"]
    if cols is not None:
        norm = norm[:, cols]
    return sc.pp.log1p(norm.astype(np.float32), copy=True)


def normalized_values(
    table: AnnData, genes: Sequence[str], *, layer: str | None = None, target_sum: float = NORM_TARGET_SUM
) -> np.ndarray:
    """Values of ``genes`` on the 1e4-per-spot + log1p scale, as a dense ``float32`` array.

    With ``layer=None`` the raw counts in ``X`` are normalised on the fly (``log_normalize``, the
    scale of :func:`comtip_sc.pp.normalize`) without writing anything into ``table``. With a layer name,
    that layer is taken as already normalised.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> t = ad.AnnData(np.array([[1.0, 3.0], [2.0, 2.0]]))
    >>> t.var_names = ["A", "B"]
    >>> normalized_values(t, ["B"]).round(3).ravel().tolist()
    [8.923, 8.517]

    """
    missing = [g for g in genes if g not in table.var_names]
    if missing:
        raise KeyError(f"Genes {missing[:10]} ({len(missing)} in all) are not in the table's var_names.")
    cols = table.var_names.get_indexer(list(genes))
    if layer is not None:
        if layer not in table.layers:
            raise KeyError(f"Layer {layer!r} is not in the table (layers: {list(table.layers.keys())}).")
        x = table.layers[layer][:, cols]
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    x = log_normalize(table.X, target_sum=target_sum, cols=cols)
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
