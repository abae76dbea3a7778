"""Visium HD bins and Xenium cells from spatialdata-io output, laid out as in ``docs/data_layout.md``.

``spatialdata_io.visium_hd`` and ``spatialdata_io.xenium`` read the vendor folders; the functions here
pick from their output one table, the shapes it annotates and the H&E image, and record what tiling
needs (sample, spot size in µm). Elements and count matrices are shared with the input, not copied.
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import TableModel, get_table_keys
from spatialdata.transformations import get_transformation

from .._constants import (
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SPATIAL_KEY,
    SPOT_DIAMETER_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)
from .._sections import _linear_scale, _spot_geometry, resolve_sections

log = logging.getLogger(__name__)

#: spatialdata-io's Xenium coordinate system (morphology-image pixels) and the cell id column.
XENIUM_CS = "global"
XENIUM_CELL_ID = "cell_id"
#: µm per pixel of Xenium's morphology images: ``pixel_size`` of ``experiment.xenium``.
XENIUM_PIXEL_SIZE_UM = 0.2125


def _need(kind: str, key: str, available, hint: str) -> None:
    if key not in available:
        raise KeyError(f"The SpatialData has no {kind} {key!r} ({kind}s: {sorted(available)}). {hint}")


def _rebuilt(sdata, table, *, region, instance_key, image_key, sample, spot_um, extra_obs=None):
    """A SpatialData of ``image_key``, ``region`` and a table over ``table``'s counts, validated."""
    obs = table.obs.copy()
    obs[REGION_KEY] = pd.Categorical.from_codes(np.zeros(len(obs), np.int8), categories=[region])
    obs[SAMPLE_KEY] = pd.Categorical.from_codes(np.zeros(len(obs), np.int8), categories=[sample])
    for col, values in (extra_obs or {}).items():
        obs[col] = values
    new = AnnData(X=table.X, obs=obs, var=table.var.copy())
    if SPATIAL_KEY in table.obsm:
        new.obsm[SPATIAL_KEY] = np.asarray(table.obsm[SPATIAL_KEY])
    new.uns[UNS_KEY] = {SPOT_DIAMETER_KEY: {sample: float(spot_um)}}
    new = TableModel.parse(new, region=region, region_key=REGION_KEY, instance_key=instance_key)
    out = SpatialData(
        images={image_key: sdata.images[image_key]},
        shapes={region: sdata.shapes[region]},
        tables={TABLE_KEY: new},
        attrs=dict(sdata.attrs),
    )
    (section,) = resolve_sections(out)
    new.uns[UNS_KEY][UM_PER_PX_KEY] = {sample: 1.0 / section.px_per_um}
    return out


def from_visium_hd(
    sdata: SpatialData, bin_size: int = 8, *, image_key: str | None = None, sample_id: str | None = None
) -> SpatialData:
    """The bins of one size of ``spatialdata_io.visium_hd`` output, ready for the package.

    Takes the table ``f"square_{bin_size:03d}um"``, the square (or circle) bins it annotates,
    ``f"{dataset}_square_{bin_size:03d}um"``, and the full-resolution H&E ``f"{dataset}_full_image"``.
    Each bin is a spot: its tile is centred on the bin's centroid, its size (``bin_size`` µm) fixes the
    µm scale. Pool bins into larger pseudo-spots with :func:`comtip_sc.pp.aggregate_bins`.

    Parameters
    ----------
    sdata
        Output of ``spatialdata_io.visium_hd`` (any ``bins_as_squares``).
    bin_size
        Bin side in µm: 2, 8 or 16.
    image_key
        H&E image; ``None`` takes ``f"{dataset}_full_image"``.
    sample_id
        Sample name; ``None`` takes the dataset id of the element names.

    Returns
    -------
    A new SpatialData with the image, the bin shapes and a table ``"table"`` sharing the counts of the
    input table, with obs ``sample`` and ``instance_id`` added and ``uns["comtip"]`` recording the bin
    size as ``spot_diameter_um`` and the image's ``um_per_px``. ``sdata`` is not changed.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> hd = cs.io.from_visium_hd(cs.datasets.visium_hd_tissue(n_rows=10, n_cols=10), bin_size=8)
    >>> hd.tables["table"].uns["comtip"]["spot_diameter_um"]
    {'hd': 8.0}

    """
    name = f"square_{int(bin_size):03d}um"
    _need(
        "table",
        name,
        sdata.tables,
        f"Read bin size {bin_size} with spatialdata_io.visium_hd(..., bin_size=).",
    )
    table = sdata.tables[name]
    if "spatialdata_attrs" not in table.uns:
        raise ValueError(f"Table {name!r} annotates no shapes (no uns['spatialdata_attrs']).")
    region, _, instance_key = get_table_keys(table)
    if not isinstance(region, str) or not region.endswith(f"_{name}"):
        raise ValueError(
            f"Table {name!r} annotates {region!r}; expected one shapes element '<dataset>_{name}'."
        )
    _need(
        "shapes element",
        region,
        sdata.shapes,
        "Read with spatialdata_io.visium_hd(..., annotate_table_by_labels=False).",
    )
    dataset = region[: -len(f"_{name}")]
    image_key = image_key or f"{dataset}_full_image"
    _need(
        "image",
        image_key,
        sdata.images,
        "Tiles of a few µm need the full-resolution H&E: pass spatialdata_io.visium_hd(..., "
        "fullres_image_file=) or image_key=.",
    )
    return _rebuilt(
        sdata,
        table,
        region=region,
        instance_key=INSTANCE_KEY,
        image_key=image_key,
        sample=sample_id or dataset,
        spot_um=float(bin_size),
        extra_obs={INSTANCE_KEY: table.obs[instance_key].to_numpy()},
    )


def from_xenium(
    sdata: SpatialData,
    *,
    shapes_key: str = "cell_circles",
    image_key: str = "he_image",
    table_key: str = TABLE_KEY,
    pixel_size_um: float = XENIUM_PIXEL_SIZE_UM,
    sample_id: str = "xenium",
) -> SpatialData:
    """The cells of ``spatialdata_io.xenium`` output with their post-Xenium H&E, ready for the package.

    Each cell is a spot: its tile is centred on the cell's circle centre or polygon centroid. The table
    is re-annotated to ``shapes_key`` through ``cell_id`` (spatialdata-io annotates the cell labels by
    default). The µm scale comes from ``pixel_size_um``, the size of one unit of Xenium's ``"global"``
    coordinate system; the median cell size in µm (circle diameter, or the side of the square of a
    polygon's area) is recorded as the spot size.

    Parameters
    ----------
    sdata
        Output of ``spatialdata_io.xenium`` with the H&E added, e.g. by
        ``spatialdata_io.xenium_aligned_image(he_path, alignment_csv)`` as ``sdata.images["he_image"]``.
    shapes_key
        ``"cell_circles"`` (read with ``cells_as_circles=True``) or ``"cell_boundaries"`` (polygons).
    image_key
        The H&E image element, in the ``"global"`` coordinate system.
    table_key
        The cell table.
    pixel_size_um
        µm per unit of ``"global"`` (``pixel_size`` in ``experiment.xenium``; 0.2125 on Xenium).
    sample_id
        Sample name.

    Returns
    -------
    A new SpatialData with the image, the cell shapes and a table ``"table"`` sharing the counts of the
    input table, annotating ``shapes_key``; ``sdata`` is not changed.

    Examples
    --------
    >>> import spatialdata_io  # doctest: +SKIP
    >>> sdata = spatialdata_io.xenium("path/to/xenium", cells_as_circles=True)  # doctest: +SKIP
    >>> sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(
    ...     "path/to/he_image.ome.tif", "path/to/he_imagealignment.csv")  # doctest: +SKIP
    >>> cells = cs.io.from_xenium(sdata)  # doctest: +SKIP

    """
    _need("table", table_key, sdata.tables, "")
    table = sdata.tables[table_key]
    if XENIUM_CELL_ID not in table.obs:
        raise ValueError(f"Table {table_key!r} has no obs column {XENIUM_CELL_ID!r} linking it to the cells.")
    _need(
        "shapes element",
        shapes_key,
        sdata.shapes,
        "Read cells as circles with spatialdata_io.xenium(..., cells_as_circles=True) or pass "
        "shapes_key='cell_boundaries'.",
    )
    _need(
        "image",
        image_key,
        sdata.images,
        "Add the H&E with spatialdata_io.xenium_aligned_image(image_path, alignment_file).",
    )
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}.")
    shapes = sdata.shapes[shapes_key]
    ids = table.obs[XENIUM_CELL_ID].to_numpy()
    missing = pd.Index(ids).difference(shapes.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} cell(s) of table {table_key!r} are not in shapes element {shapes_key!r} "
            f"(indexed by cell id), e.g. {missing[:5].tolist()}."
        )
    transformations = get_transformation(shapes, get_all=True)
    if XENIUM_CS not in transformations:
        raise ValueError(
            f"Shapes element {shapes_key!r} has no transformation to Xenium's {XENIUM_CS!r} coordinate "
            f"system (it has {sorted(transformations)})."
        )
    m = transformations[XENIUM_CS].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    _, size = _spot_geometry(shapes, ids, shapes_key)
    cell_um = float(np.median(size)) * _linear_scale(m) * pixel_size_um
    return _rebuilt(
        sdata,
        table,
        region=shapes_key,
        instance_key=XENIUM_CELL_ID,
        image_key=image_key,
        sample=sample_id,
        spot_um=cell_um,
    )


def read_visium_hd(
    path: str | PathLike,
    bin_size: int = 8,
    *,
    dataset_id: str | None = None,
    fullres_image_file: str | PathLike | None = None,
    **kwargs: Any,
) -> SpatialData:
    """Read one bin size of a Visium HD Space Ranger output folder with spatialdata-io.

    ``spatialdata_io.visium_hd(path, bin_size=bin_size, bins_as_squares=True, ...)`` followed by
    :func:`from_visium_hd`.

    Parameters
    ----------
    path
        The Space Ranger output folder (``binned_outputs/``, ``spatial/``, ...).
    bin_size
        Bin side in µm: 2, 8 or 16.
    dataset_id, fullres_image_file
        Passed to ``spatialdata_io.visium_hd``; the full-resolution H&E is needed for tiles.
    **kwargs
        Further arguments of ``spatialdata_io.visium_hd``.

    Returns
    -------
    The SpatialData of :func:`from_visium_hd`.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> hd = cs.io.read_visium_hd("path/to/visium_hd", bin_size=16)  # doctest: +SKIP

    """
    from spatialdata_io import visium_hd

    kwargs.setdefault("load_segmentations_only", False)
    sdata = visium_hd(
        path,
        dataset_id=dataset_id,
        bin_size=int(bin_size),
        bins_as_squares=True,
        fullres_image_file=fullres_image_file,
        **kwargs,
    )
    return from_visium_hd(sdata, bin_size)


def read_xenium(
    path: str | PathLike,
    he_image: str | PathLike,
    alignment_file: str | PathLike | None = None,
    *,
    shapes_key: str = "cell_circles",
    sample_id: str = "xenium",
) -> SpatialData:
    """Read a Xenium output folder and its post-Xenium H&E with spatialdata-io.

    ``spatialdata_io.xenium`` (cells as circles and polygons, no transcripts or morphology images) and
    ``spatialdata_io.xenium_aligned_image(he_image, alignment_file)``, then :func:`from_xenium` with the
    pixel size of ``experiment.xenium``.

    Parameters
    ----------
    path
        The Xenium output folder.
    he_image
        The H&E image (e.g. an OME-TIFF).
    alignment_file
        The 3×3 affine from H&E pixels to Xenium pixels (Xenium Explorer's alignment CSV); ``None`` when
        the image is already aligned.
    shapes_key
        ``"cell_circles"`` or ``"cell_boundaries"``.
    sample_id
        Sample name.

    Returns
    -------
    The SpatialData of :func:`from_xenium`.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cells = cs.io.read_xenium("path/to/xenium", "path/to/he.ome.tif", "path/to/alignment.csv")  # doctest: +SKIP

    """
    from spatialdata_io import xenium, xenium_aligned_image

    path = Path(path)
    pixel_size = json.loads((path / "experiment.xenium").read_text())["pixel_size"]
    sdata = xenium(
        path,
        cells_as_circles=True,
        cells_labels=False,
        nucleus_labels=False,
        transcripts=False,
        morphology_mip=False,
        morphology_focus=False,
        aligned_images=False,
    )
    sdata.images["he_image"] = xenium_aligned_image(he_image, alignment_file)
    return from_xenium(
        sdata, shapes_key=shapes_key, image_key="he_image", pixel_size_um=pixel_size, sample_id=sample_id
    )
