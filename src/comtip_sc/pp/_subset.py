"""Splitting a multi-section SpatialData by spots, keeping spatialdata's table → region links valid."""

from __future__ import annotations

import numpy as np
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .._constants import REGION_KEY, TABLE_KEY
from .._tables import get_table


def subset_sections(sdata: SpatialData, keep: np.ndarray, *, table_key: str = TABLE_KEY) -> SpatialData:
    """A new SpatialData with the table rows ``keep`` and only the shapes and images they use.

    The typical use is a leave-one-patient-out split. The table is copied; the table's ``region``
    categories and ``uns["spatialdata_attrs"]["region"]`` are narrowed to the shapes that remain, so
    the result validates as a SpatialData. Images and shapes are shared with ``sdata`` (not copied);
    nothing in ``sdata`` is changed.

    Parameters
    ----------
    sdata
        SpatialData with a table annotating spot shapes.
    keep
        Boolean mask over the table's rows.
    table_key
        The table to subset.

    Returns
    -------
    The new SpatialData.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.her2st("path/to/her2st")  # doctest: +SKIP
    >>> patient = sdata.tables["table"].obs["patient"].to_numpy()  # doctest: +SKIP
    >>> train = cs.pp.subset_sections(sdata, patient == "C")  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (table.n_obs,):
        raise ValueError(
            f"keep must be a boolean mask of length {table.n_obs} (the table's rows), got {keep.shape}."
        )
    if not keep.any():
        raise ValueError("keep selects no spot.")
    sub = table[keep].copy()
    regions = sub.obs[REGION_KEY].astype(str).unique().tolist()
    sub.uns["spatialdata_attrs"]["region"] = regions
    sub.obs[REGION_KEY] = sub.obs[REGION_KEY].astype(str).astype("category")
    systems = {cs for r in regions for cs in get_transformation(sdata.shapes[r], get_all=True)}
    images = {k: v for k, v in sdata.images.items() if systems & set(get_transformation(v, get_all=True))}
    return SpatialData(
        images=images,
        shapes={r: sdata.shapes[r] for r in regions},
        tables={table_key: sub},
        attrs=dict(sdata.attrs),
    )
