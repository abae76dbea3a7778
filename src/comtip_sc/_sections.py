"""Resolve and validate the links table → spot shapes → image of a SpatialData object.

Everything downstream (tiling, training, embedding) needs, for every spot of a table, the image it
sits on and where it sits in that image's pixels. This module finds those links through
spatialdata's own metadata (``TableModel`` region keys, coordinate systems and transformations) and
fails early, naming the element, column or spot at fault, when a link is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import get_table_keys
from spatialdata.transformations import (
    get_transformation,
    get_transformation_between_coordinate_systems,
)

from ._constants import SAMPLE_KEY, SPOT_DIAMETER_KEY, TABLE_KEY, UNS_KEY


@dataclass(frozen=True)
class Section:
    """One shapes element annotated by the table, with the image it is read from.

    Attributes
    ----------
    region
        Name of the shapes element.
    image
        Name of the image element sharing a coordinate system with ``region``.
    coordinate_system
        The shared coordinate system.
    obs_index
        Integer positions of the table rows annotating ``region``.
    centers_px
        ``(n, 2)`` spot centres (x, y) in the full-resolution pixels of ``image``.
    px_per_um
        Pixels of ``image`` per micrometre (isotropic; the mean of the x and y scales).

    """

    region: str
    image: str
    coordinate_system: str
    obs_index: np.ndarray
    centers_px: np.ndarray
    px_per_um: float


def get_table(sdata: SpatialData | AnnData, table_key: str = TABLE_KEY) -> AnnData:
    """Return the table of ``sdata`` (or ``sdata`` itself when it is an AnnData), with a clear error."""
    if isinstance(sdata, AnnData):
        return sdata
    if table_key not in sdata.tables:
        raise KeyError(
            f"SpatialData has no table {table_key!r}; available tables: {sorted(sdata.tables.keys())}."
        )
    return sdata.tables[table_key]


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
    """Raise ``ValueError`` naming the first spot and gene with a negative or NaN value.

    With ``integer=True`` (raw counts are needed) a non-integer value is an error too: normalising values
    that are already normalised would silently change their scale.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> check_counts(ad.AnnData(np.ones((2, 3), dtype=np.float32)))

    """
    X = table.layers[layer] if layer is not None else table.X
    data = X.data if sp.issparse(X) else np.asarray(X)
    bad = ~np.isfinite(data) | (data < 0)
    label = "negative or NaN"
    if not bad.any() and integer:
        bad, label = data != np.round(data), "non-integer"
    if not bad.any():
        return
    dense_bad = bad
    if sp.issparse(X):
        coo = X.tocoo()
        dense_bad = np.zeros(coo.shape, dtype=bool)
        dense_bad[coo.row[bad], coo.col[bad]] = True
    rows, cols = np.nonzero(dense_bad)
    source = f"layer {layer!r}" if layer is not None else "X"
    raise ValueError(
        f"{what} {source} has {len(rows)} {label} value(s); the first is at spot "
        f"{table.obs_names[rows[0]]!r}, gene {table.var_names[cols[0]]!r} (value {data[bad][0]})."
        + (
            " Raw integer counts are needed here; for normalised values pass layer=."
            if label == "non-integer"
            else ""
        )
    )


def _spot_diameter_um(table: AnnData, region_rows: np.ndarray, region: str, override: float | None) -> float:
    if override is not None:
        return float(override)
    recorded = table.uns.get(UNS_KEY, {}).get(SPOT_DIAMETER_KEY, {})
    if SAMPLE_KEY in table.obs and len(region_rows):
        sample = str(table.obs[SAMPLE_KEY].iloc[region_rows[0]])
        if sample in recorded:
            return float(recorded[sample])
    raise ValueError(
        f"The spot diameter in µm of shapes element {region!r} is unknown: the table records none in "
        f"uns[{UNS_KEY!r}][{SPOT_DIAMETER_KEY!r}]. Pass spot_diameter_um= (Visium: 55, legacy ST: 100)."
    )


def _linear_scale(matrix: np.ndarray) -> float:
    """Isotropic scale of a 3×3 affine in (x, y): the mean column norm of its linear part."""
    return float(np.mean(np.linalg.norm(matrix[:2, :2], axis=0)))


def _pick_image(sdata: SpatialData, region: str) -> tuple[str, str]:
    shape_cs = list(get_transformation(sdata.shapes[region], get_all=True).keys())
    for cs in shape_cs:
        for name, image in sdata.images.items():
            if cs in get_transformation(image, get_all=True):
                return name, cs
    raise ValueError(
        f"Shapes element {region!r} lives in coordinate system(s) {shape_cs}, but no image element "
        f"has a transformation to any of them (images: {sorted(sdata.images.keys())}). "
        "Add the H&E image to the same coordinate system as the spots."
    )


def resolve_sections(
    sdata: SpatialData,
    *,
    table_key: str = TABLE_KEY,
    spot_diameter_um: float | None = None,
) -> list[Section]:
    """Find, for every shapes element the table annotates, its image and the spot centres in pixels.

    Parameters
    ----------
    sdata
        The SpatialData object.
    table_key
        Name of the table annotating the spot shapes.
    spot_diameter_um
        Spot diameter in µm. ``None`` reads it from ``table.uns["comtip"]["spot_diameter_um"]``
        (written by :mod:`comtip_sc.io` and :mod:`comtip_sc.datasets`).

    Returns
    -------
    One :class:`Section` per annotated shapes element, in the order of the table's regions.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> [s.region for s in resolve_sections(sdata)]
    ['toy_spots']

    """
    table = get_table(sdata, table_key)
    if "spatialdata_attrs" not in table.uns:
        raise ValueError(
            f"Table {table_key!r} annotates no shapes: it has no uns['spatialdata_attrs']. "
            "Parse it with spatialdata.models.TableModel.parse(region=..., region_key=..., instance_key=...)."
        )
    regions, region_key, instance_key = get_table_keys(table)
    regions = [regions] if isinstance(regions, str) else list(regions)
    for col in (region_key, instance_key):
        if col not in table.obs:
            raise ValueError(
                f"Table {table_key!r} lacks the obs column {col!r} named in its spatialdata_attrs."
            )
    if table.obs_names.has_duplicates:
        dup = table.obs_names[table.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Table {table_key!r} has duplicated spot ids (obs_names), e.g. {dup}.")
    sections = []
    region_col = table.obs[region_key].astype(str).to_numpy()
    for region in regions:
        if region not in sdata.shapes:
            raise ValueError(
                f"Table {table_key!r} annotates {region!r}, which is not a shapes element of this "
                f"SpatialData (shapes: {sorted(sdata.shapes.keys())})."
            )
        rows = np.flatnonzero(region_col == region)
        if len(rows) == 0:
            continue
        shapes = sdata.shapes[region]
        if "radius" not in shapes.columns:
            raise ValueError(f"Shapes element {region!r} holds no circles (no 'radius' column).")
        ids = table.obs[instance_key].to_numpy()[rows]
        missing = pd.Index(ids).difference(shapes.index)
        if len(missing):
            raise ValueError(
                f"{len(missing)} spot(s) of table {table_key!r} have no coordinates in shapes element "
                f"{region!r}: instance ids {missing[:5].tolist()} (spots "
                f"{table.obs_names[rows][pd.Index(ids).isin(missing)][:5].tolist()})."
            )
        geom = shapes.loc[ids]
        xy = np.column_stack([geom.geometry.x.to_numpy(), geom.geometry.y.to_numpy()])
        bad = ~np.isfinite(xy).all(axis=1)
        if bad.any():
            raise ValueError(
                f"Spot(s) {table.obs_names[rows][bad][:5].tolist()} of shapes element {region!r} have no "
                "(finite) coordinates."
            )
        image, cs = _pick_image(sdata, region)
        # Visium puts spots and images in several coordinate systems; going through the shared one
        # keeps the path unique.
        to_px = get_transformation_between_coordinate_systems(
            sdata, shapes, sdata.images[image], intermediate_coordinate_systems=cs
        )
        m_px = to_px.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        centers = (np.column_stack([xy, np.ones(len(xy))]) @ m_px.T)[:, :2]
        # µm per coordinate-system unit comes from the known physical spot diameter, so any
        # coordinate system works: µm (our readers), full-resolution pixels (spatialdata_io.visium), ...
        m_cs = get_transformation(shapes, to_coordinate_system=cs).to_affine_matrix(
            input_axes=("x", "y"), output_axes=("x", "y")
        )
        radius_cs = float(np.median(geom["radius"].to_numpy())) * _linear_scale(m_cs)
        diameter_um = _spot_diameter_um(table, rows, region, spot_diameter_um)
        um_per_cs_unit = diameter_um / (2.0 * radius_cs)
        px_per_cs_unit = _linear_scale(m_px) / _linear_scale(m_cs)
        sections.append(
            Section(
                region=region,
                image=image,
                coordinate_system=cs,
                obs_index=rows,
                centers_px=centers,
                px_per_um=px_per_cs_unit / um_per_cs_unit,
            )
        )
    if not sections:
        raise ValueError(f"Table {table_key!r} annotates no spot of any shapes element.")
    return sections


def spot_layout(sections: Sequence[Section], n_obs: int) -> tuple[list[str], np.ndarray]:
    """Section name and pixel centre of every table row, from :func:`resolve_sections`.

    Parameters
    ----------
    sections
        The table's sections.
    n_obs
        Rows of the table.

    Returns
    -------
    ``(names, centres)``: ``n_obs`` section names (``""`` for a row of no section) and ``(n_obs, 2)`` centres
    (NaN there).

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> names, centres = spot_layout(resolve_sections(sdata), sdata.tables["table"].n_obs)
    >>> names[0], centres.shape
    ('toy_spots', (16, 2))

    """
    names = [""] * n_obs
    centres = np.full((n_obs, 2), np.nan)
    for sec in sections:
        centres[sec.obs_index] = sec.centers_px
        for i in sec.obs_index:
            names[i] = sec.region
    return names, centres
