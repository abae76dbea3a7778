"""Resolve and validate the links table → spot shapes → image of a SpatialData object.

Everything downstream (tiling, training, embedding) needs, for every spot of a table, the image it
sits on and where it sits in that image's pixels. This module finds those links through
spatialdata's own metadata (``TableModel`` region keys, coordinate systems and transformations) and
fails early, naming the element, column or spot at fault, when a link is missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import get_table_keys
from spatialdata.transformations import (
    get_transformation,
    get_transformation_between_coordinate_systems,
)

from ._constants import SAMPLE_KEY, SPOT_DIAMETER_KEY, TABLE_KEY, UNS_KEY
from ._tables import get_table

#: spatialdata_io.visium_hd's name of a bin shapes element ends in the bin side: "…_square_008um".
_BIN_NAME = re.compile(r"square_(\d{3})um$")
_POINT = int(shapely.GeometryType.POINT)
_POLYGONS = {int(shapely.GeometryType.POLYGON), int(shapely.GeometryType.MULTIPOLYGON)}
#: Polygons whose centroids are computed at once.
_BLOCK = 2**16


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
    spot_um
        Size of one spot in µm: a circle's diameter, a square bin's side.
    to_px
        ``3×3`` affine from the shapes element's own coordinates (x, y) to the pixels of ``image``.

    """

    region: str
    image: str
    coordinate_system: str
    obs_index: np.ndarray
    centers_px: np.ndarray
    px_per_um: float
    spot_um: float
    to_px: np.ndarray

    @property
    def um_per_unit(self) -> float:
        """Micrometres per unit of the shapes element's own coordinates."""
        return _linear_scale(self.to_px) / self.px_per_um


def _spot_diameter_um(table: AnnData, region_rows: np.ndarray, region: str, override: float | None) -> float:
    if override is not None:
        return float(override)
    recorded = table.uns.get(UNS_KEY, {}).get(SPOT_DIAMETER_KEY, {})
    if SAMPLE_KEY in table.obs and len(region_rows):
        sample = str(table.obs[SAMPLE_KEY].iloc[region_rows[0]])
        if sample in recorded:
            return float(recorded[sample])
    # spatialdata_io.visium_hd names its bins "<dataset>_square_008um": the bin side is in the name.
    match = _BIN_NAME.search(region)
    if match:
        return float(match.group(1))
    raise ValueError(
        f"The spot size in µm of shapes element {region!r} is unknown: the table records none in "
        f"uns[{UNS_KEY!r}][{SPOT_DIAMETER_KEY!r}] and the name is not a Visium HD bin name (…_square_008um). "
        "Pass spot_diameter_um= (Visium: 55, legacy ST: 100, a square bin: its side)."
    )


def _spot_geometry(shapes: pd.DataFrame, ids: np.ndarray, region: str) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` and sizes ``(n,)`` of the spots ``ids``, in the shapes element's own coordinates.

    A circle's size is its diameter; a polygon's is the side of the square of the same area (the side of
    a square bin). Polygon centroids are computed in blocks, so a million bins never hold a million
    temporary point objects at once.
    """
    geoms = shapes.geometry.loc[ids].to_numpy()
    kinds = set(shapely.get_type_id(geoms[: min(len(geoms), 1000)]).tolist())
    if kinds <= {_POINT} and "radius" in shapes.columns:
        xy = np.column_stack([shapely.get_x(geoms), shapely.get_y(geoms)])
        return xy, 2.0 * shapes["radius"].loc[ids].to_numpy(dtype=float)
    if kinds <= _POLYGONS:
        box, area = shapely.bounds(geoms), shapely.area(geoms)
        xy = (box[:, :2] + box[:, 2:]) / 2
        # An axis-aligned square bin fills its bounding box, whose centre is then its centroid; other
        # polygons get shapely's centroid.
        other = np.flatnonzero(~np.isclose(area, np.prod(box[:, 2:] - box[:, :2], axis=1), rtol=1e-9))
        for start in range(0, len(other), _BLOCK):
            rows = other[start : start + _BLOCK]
            centroids = shapely.centroid(geoms[rows])
            xy[rows] = np.column_stack([shapely.get_x(centroids), shapely.get_y(centroids)])
        return xy, np.sqrt(area)
    raise ValueError(
        f"Shapes element {region!r} holds neither circles (points with a 'radius' column) nor polygons "
        "(e.g. square bins); found geometry types "
        f"{sorted(shapely.GeometryType(k).name for k in kinds)}."
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

    Spots are circles (points with a ``radius``) or polygons such as Visium HD's square bins; a polygon's
    centre is its centroid and its size the side of the square of the same area.

    Parameters
    ----------
    sdata
        The SpatialData object.
    table_key
        Name of the table annotating the spot shapes.
    spot_diameter_um
        Spot diameter (a square bin's side) in µm. ``None`` reads it from
        ``table.uns["comtip"]["spot_diameter_um"]`` (written by :mod:`comtip_sc.io` and
        :mod:`comtip_sc.datasets`), or else from a Visium HD bin name (``…_square_008um``: 8 µm).

    Returns
    -------
    One ``Section`` (region, image, spot centres in pixels, spot size) per annotated shapes element, in the order of the table's regions.

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
        ids = table.obs[instance_key].to_numpy()[rows]
        missing = pd.Index(ids).difference(shapes.index)
        if len(missing):
            raise ValueError(
                f"{len(missing)} spot(s) of table {table_key!r} have no coordinates in shapes element "
                f"{region!r}: instance ids {missing[:5].tolist()} (spots "
                f"{table.obs_names[rows][pd.Index(ids).isin(missing)][:5].tolist()})."
            )
        xy, size = _spot_geometry(shapes, ids, region)
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
        # µm per coordinate-system unit comes from the known physical spot size, so any coordinate
        # system works: µm (our readers), full-resolution pixels (spatialdata_io.visium, visium_hd), ...
        m_cs = get_transformation(shapes, to_coordinate_system=cs).to_affine_matrix(
            input_axes=("x", "y"), output_axes=("x", "y")
        )
        size_cs = float(np.median(size)) * _linear_scale(m_cs)
        if not size_cs > 0:
            raise ValueError(f"The spots of shapes element {region!r} have zero size (radius or area).")
        diameter_um = _spot_diameter_um(table, rows, region, spot_diameter_um)
        um_per_cs_unit = diameter_um / size_cs
        px_per_cs_unit = _linear_scale(m_px) / _linear_scale(m_cs)
        sections.append(
            Section(
                region=region,
                image=image,
                coordinate_system=cs,
                obs_index=rows,
                centers_px=centers,
                px_per_um=px_per_cs_unit / um_per_cs_unit,
                spot_um=diameter_um,
                to_px=m_px,
            )
        )
    if not sections:
        raise ValueError(f"Table {table_key!r} annotates no spot of any shapes element.")
    return sections


def spot_layout(sections: Sequence[Section], n_obs: int) -> tuple[list[str], np.ndarray]:
    """Section name and pixel centre of every table row, from :func:`~comtip_sc.pp.resolve_sections`.

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
