"""One section laid out for drawing: the H&E crop around its spots and each spot's circle in its pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .._constants import SAMPLE_KEY, TABLE_KEY
from .._image import pyramid_levels
from .._sections import Section, resolve_sections

#: The background is read from the coarsest pyramid level whose crop still has this many pixels on its
#: long side: sharp enough under spots of a few pixels, and a 9k x 9k slide is never computed whole.
_BACKGROUND_PX = 1000


@dataclass
class SectionLayout:
    """A section ready to draw.

    The crop ``bg`` (drawn at ``extent``), spot centres ``xy`` and radii ``r`` in its pixels, the
    spots' table rows and the section's name.
    """

    bg: np.ndarray
    extent: tuple[int, int, int, int]
    xy: np.ndarray
    r: np.ndarray
    rows: np.ndarray
    name: str


def section_layout(
    sdata: SpatialData,
    table: AnnData,
    *,
    table_key: str = TABLE_KEY,
    sample: str | None = None,
    spot_size: float | None = None,
    spot_diameter_um: float | None = None,
) -> SectionLayout:
    """Lay out the section ``sample`` (the only one when ``None``) through the spatialdata transformations.

    ``spot_size`` draws every spot with this diameter in µm instead of its true radius.
    """
    sec = _section_of(
        table, resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um), sample
    )
    shapes = sdata.shapes[sec.region]
    ids = table.obs[table.uns["spatialdata_attrs"]["instance_key"]].to_numpy()[sec.obs_index]
    geom = shapes.loc[ids]
    m_shape = _affine(shapes, sec.coordinate_system)
    xy_cs = (np.column_stack([geom.geometry.x, geom.geometry.y, np.ones(len(geom))]) @ m_shape.T)[:, :2]
    scale_shape = float(np.mean(np.linalg.norm(m_shape[:2, :2], axis=0)))
    if spot_size is not None:
        # µm → cs units through the section's pixel size: px_per_um × (cs units per image pixel).
        m_img = _affine(pyramid_levels(sdata.images[sec.image])[0], sec.coordinate_system)
        cs_per_px = float(np.mean(np.linalg.norm(m_img[:2, :2], axis=0)))
        radius_cs = np.full(len(geom), spot_size / 2 * sec.px_per_um * cs_per_px)
    else:
        radius_cs = geom["radius"].to_numpy(np.float64) * scale_shape
    bg, m_level, (x0, x1, y0, y1) = _background(sdata, sec, xy_cs, radius_cs)
    to_level = np.linalg.inv(m_level)
    xy = (np.column_stack([xy_cs, np.ones(len(xy_cs))]) @ to_level.T)[:, :2]
    r = radius_cs * float(np.mean(np.linalg.norm(to_level[:2, :2], axis=0)))
    name = sec.region
    if SAMPLE_KEY in table.obs:
        name = ", ".join(pd.unique(table.obs[SAMPLE_KEY].astype(str).to_numpy()[sec.obs_index]))
    # extent: pixel edges, y down as in the image
    return SectionLayout(bg, (x0, x1, y1, y0), xy, r, np.asarray(sec.obs_index), name)


def _affine(element, cs: str) -> np.ndarray:
    return get_transformation(element, to_coordinate_system=cs).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )


def _section_of(table: AnnData, sections: list[Section], sample: str | None) -> Section:
    """The one section to draw: the only one, or the one whose spots carry ``obs["sample"] == sample``."""

    def label(sec: Section) -> list[str]:
        if SAMPLE_KEY in table.obs:
            return pd.unique(table.obs[SAMPLE_KEY].astype(str).to_numpy()[sec.obs_index]).tolist()
        return [sec.region]

    if sample is None:
        if len(sections) > 1:
            names = sorted({s for sec in sections for s in label(sec)})
            raise ValueError(
                f"The table spans {len(sections)} sections ({names}); pick one with sample=<one of them>."
            )
        return sections[0]
    hits = [sec for sec in sections if str(sample) in label(sec) or sec.region == str(sample)]
    if not hits:
        names = sorted({s for sec in sections for s in label(sec)})
        raise KeyError(f"sample={sample!r} is not a section of the table; sections: {names}.")
    if len(hits) > 1:
        raise ValueError(f"sample={sample!r} spans several shapes elements {[h.region for h in hits]}.")
    return hits[0]


def _background(sdata: SpatialData, sec: Section, xy_cs: np.ndarray, radius_cs: np.ndarray):
    """Crop of a coarse pyramid level around the spots, its level→cs affine and the crop window."""
    levels = pyramid_levels(sdata.images[sec.image])
    margin = 3 * float(np.max(radius_cs))
    lo, hi = xy_cs.min(axis=0) - margin, xy_cs.max(axis=0) + margin
    corners = np.array([[lo[0], lo[1], 1], [hi[0], lo[1], 1], [lo[0], hi[1], 1], [hi[0], hi[1], 1]])
    # Coarsest first: take the first level whose crop is still _BACKGROUND_PX wide (or the finest).
    for level in reversed(levels):
        m = _affine(level, sec.coordinate_system)
        px = (corners @ np.linalg.inv(m).T)[:, :2]
        h, w = level.sizes["y"], level.sizes["x"]
        x0, y0 = np.clip(np.floor(px.min(axis=0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(px.max(axis=0)).astype(int), 0, [w, h])
        if max(x1 - x0, y1 - y0) >= _BACKGROUND_PX or level is levels[0]:
            break
    crop = level.isel(x=slice(x0, x1), y=slice(y0, y1)).transpose("y", "x", "c")
    rgb = np.asarray(crop.data.compute() if hasattr(crop.data, "compute") else crop.data)
    return _as_rgb(rgb), m, (x0, x1, y0, y1)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """An (y, x, 3) array imshow can draw, from RGB(A) or one-channel images of any dtype."""
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float32)
    top = float(np.nanmax(img)) if img.size else 1.0
    return np.clip(img / (top if top > 0 else 1.0), 0.0, 1.0)


def draw_spots(ax: Axes, bg, extent, xy, r, values, norm, cmap, img_alpha: float) -> EllipseCollection:
    """Draw the crop and the spots as circles of their true size coloured by ``values``."""
    ax.imshow(bg, extent=extent, alpha=img_alpha, interpolation="antialiased")
    # units="xy": widths are in data units, so each circle keeps the spot's true size on any figure size.
    coll = EllipseCollection(
        2 * r, 2 * r, np.zeros(len(r)), units="xy", offsets=xy, offset_transform=ax.transData
    )
    coll.set_array(values)
    coll.set_cmap(cmap)
    coll.set_norm(norm)
    coll.set_edgecolor("none")
    ax.add_collection(coll)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return coll
