"""Pooling small bins (Visium HD, 2–16 µm) into pseudo-spots of a chosen size on a square grid."""

from __future__ import annotations

import copy as _copy
import logging

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import get_transformation

from .._constants import (
    ARRAY_COL_KEY,
    ARRAY_ROW_KEY,
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SPATIAL_KEY,
    SPOT_DIAMETER_KEY,
    SPOT_ID_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)
from .._sections import Section, resolve_sections
from .._tables import get_table, with_tables

log = logging.getLogger(__name__)

#: ``obs`` column of a pseudo-spot's number of pooled bins.
N_BINS_KEY = "n_bins"


def aggregate_bins(
    sdata: SpatialData,
    spot_um: float = 55.0,
    *,
    table_key: str = TABLE_KEY,
    min_bins: int | None = None,
    spot_diameter_um: float | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> SpatialData | None:
    """Pool bins into square pseudo-spots of ``spot_um`` µm, summing their counts.

    Each section's bins are laid on a square grid of ``spot_um`` µm, aligned with the axes of the bins'
    own coordinates (the shapes element's, e.g. Visium HD's full-resolution pixels) and starting at the
    outer edge of the first bin row and column. A bin belongs to the grid cell holding its centre; the
    counts of a cell's bins are summed (a sparse matrix product, nothing dense). Cells holding fewer than
    ``min_bins`` bins, mostly tissue edges and holes, are dropped. A pseudo-spot is stored as a circle of
    diameter ``spot_um`` at the centre of its grid cell, so tiles are centred on the cell, but its counts
    come from the whole square cell. The image is kept: the new shapes have the bins' transformations.

    Parameters
    ----------
    sdata
        SpatialData whose table annotates bins (squares or circles), e.g. from
        :func:`comtip_sc.io.from_visium_hd`.
    spot_um
        Side of a pseudo-spot's grid cell in µm (55: a Visium spot; 100: a legacy ST spot). At least the
        bin size.
    table_key
        The bins' table.
    min_bins
        Fewest bins a kept pseudo-spot pools; ``None``: half the bins a full cell holds,
        ``ceil((spot_um / bin_um)² / 2)``.
    spot_diameter_um
        Bin size in µm when the table does not record it (see :class:`comtip_sc.pp.SpotTiles`).
    key_added
        Name of the new table; ``None``: ``f"pseudo_{spot_um:g}um"``. Each new shapes element is named
        ``f"{bins_element}_{key_added}"``.
    copy
        Return a new SpatialData (sharing the other elements with ``sdata``) instead of adding to ``sdata``.

    Returns
    -------
    With ``copy=False``, nothing: ``sdata.tables[key_added]`` and the new shapes elements are added to
    ``sdata``. With ``copy=True``, the new SpatialData. The new table has raw summed counts in ``X``,
    obs ``region``, ``instance_id``, ``spot_id`` (``"<col>x<row>"`` on the grid), ``sample``,
    ``array_row``, ``array_col`` and ``n_bins``, ``obsm["spatial"]`` in image pixels, and in
    ``uns["comtip"]`` the pseudo-spot size as ``spot_diameter_um`` and the settings under
    ``"aggregate_bins"``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> hd = cs.io.from_visium_hd(cs.datasets.visium_hd_tissue(n_rows=28, n_cols=28))
    >>> cs.pp.aggregate_bins(hd, spot_um=56)
    >>> hd.tables["pseudo_56um"].n_obs, int(hd.tables["pseudo_56um"].obs["n_bins"].max())
    (16, 49)

    """
    key_added = key_added or f"pseudo_{spot_um:g}um"
    table = get_table(sdata, table_key)
    if key_added == table_key:
        raise ValueError(f"key_added={key_added!r} would overwrite the bins' table.")
    sections = resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
    parts, shapes = [], {}
    for sec in sections:
        if spot_um < sec.spot_um:
            raise ValueError(
                f"spot_um={spot_um:g} is smaller than the {sec.spot_um:g} µm bins of shapes element "
                f"{sec.region!r}; pseudo-spots pool whole bins."
            )
        need = min_bins if min_bins is not None else int(np.ceil(0.5 * (spot_um / sec.spot_um) ** 2))
        name = f"{sec.region}_{key_added}"
        if name in sdata.shapes and not copy:
            raise ValueError(f"Shapes element {name!r} exists already; pass another key_added.")
        part, shapes[name] = _pool_section(sdata, table, sec, spot_um, need, name)
        parts.append(part)
    pooled = _table(parts, table, spot_um, table_key)
    pooled = TableModel.parse(pooled, region=list(shapes), region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    # The shapes go in before the table that annotates them, so spatialdata's validation finds them.
    out = with_tables(sdata, dict(sdata.tables)) if copy else sdata
    for name, element in shapes.items():
        out.shapes[name] = element
    out.tables[key_added] = pooled
    return out if copy else None


def _pool_section(sdata: SpatialData, table: AnnData, sec: Section, spot_um: float, need: int, name: str):
    """The pooled table part and circle shapes of one section's bins."""
    from_px = np.linalg.inv(sec.to_px)
    xy = (np.column_stack([sec.centers_px, np.ones(len(sec.centers_px))]) @ from_px.T)[:, :2]
    side = spot_um / sec.um_per_unit
    origin = xy.min(axis=0) - 0.5 * sec.spot_um / sec.um_per_unit
    cell = np.floor((xy - origin) / side).astype(np.int64)
    n_cols = int(cell[:, 0].max()) + 1
    cells, member, n_bins = np.unique(
        cell[:, 1] * n_cols + cell[:, 0], return_inverse=True, return_counts=True
    )
    keep = np.flatnonzero(n_bins >= need)
    # pooling[k, j] = 1 when bin j falls in kept cell k.
    slot = np.full(len(cells), -1)
    slot[keep] = np.arange(len(keep))
    inside = slot[member] >= 0
    pooling = sparse.csr_matrix(
        (np.ones(int(inside.sum()), np.float32), (slot[member][inside], np.flatnonzero(inside))),
        shape=(len(keep), len(member)),
    )
    counts = pooling @ sparse.csr_matrix(table.X[sec.obs_index])
    log.info(
        "Shapes element %r: %d bins pooled into %d pseudo-spots of %g µm; %d cells with fewer than %d bins "
        "(%d bins) dropped.",
        sec.region,
        int(inside.sum()),
        len(keep),
        spot_um,
        len(cells) - len(keep),
        need,
        int((~inside).sum()),
    )
    row, col = np.divmod(cells[keep], n_cols)
    centres = origin + (np.column_stack([col, row]) + 0.5) * side
    transformations = _copy.deepcopy(get_transformation(sdata.shapes[sec.region], get_all=True))
    circles = ShapesModel.parse(
        centres,
        geometry=0,
        radius=np.full(len(keep), side / 2),
        index=np.arange(len(keep)),
        transformations=transformations,
    )
    sample = str(table.obs[SAMPLE_KEY].iloc[sec.obs_index[0]]) if SAMPLE_KEY in table.obs else sec.region
    spot_ids = [f"{c}x{r}" for r, c in zip(row, col, strict=True)]
    obs = pd.DataFrame(
        {
            REGION_KEY: name,
            INSTANCE_KEY: np.arange(len(keep)),
            SPOT_ID_KEY: spot_ids,
            SAMPLE_KEY: sample,
            ARRAY_ROW_KEY: row,
            ARRAY_COL_KEY: col,
            N_BINS_KEY: n_bins[keep],
        },
        index=pd.Index([f"{name}_{s}" for s in spot_ids]),
    )
    centres_px = (np.column_stack([centres, np.ones(len(centres))]) @ sec.to_px.T)[:, :2]
    return (obs, counts, centres_px, sample, 1.0 / sec.px_per_um, need), circles


def _table(parts, table: AnnData, spot_um: float, table_key: str) -> AnnData:
    obs = pd.concat([p[0] for p in parts])
    for col in (REGION_KEY, SAMPLE_KEY):
        obs[col] = obs[col].astype("category")
    pooled = AnnData(
        X=sparse.vstack([p[1] for p in parts], format="csr").astype(table.X.dtype),
        obs=obs,
        var=table.var.copy(),
    )
    pooled.obsm[SPATIAL_KEY] = np.concatenate([p[2] for p in parts])
    pooled.uns[UNS_KEY] = {
        SPOT_DIAMETER_KEY: {p[3]: float(spot_um) for p in parts},
        UM_PER_PX_KEY: {p[3]: float(p[4]) for p in parts},
        "aggregate_bins": {
            "spot_um": float(spot_um),
            "min_bins": {p[3]: int(p[5]) for p in parts},
            "table": table_key,
        },
    }
    return pooled
