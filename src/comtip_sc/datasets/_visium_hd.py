"""A synthetic Visium HD slide: square bins with counts on an H&E-like image, shaped like spatialdata-io output.

The tissue, its colours, textures and gene programmes are those of :func:`~comtip_sc.datasets.toy_tissue`;
only the layout differs: a dense grid of square bins (2, 8 or 16 µm) instead of round spots, with the
element names, coordinate systems and table columns that ``spatialdata_io.visium_hd`` writes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from anndata import AnnData
from geopandas import GeoDataFrame
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

from .._constants import SPATIAL_KEY
from .._image import rgb_image_element
from ._toy import _appearance, _counts, _gradient, _programme, _regions, _render, _sizes, _type_name

__all__ = ["visium_hd_tissue"]

#: Column names of spatialdata_io.visium_hd's bin tables.
HD_REGION_KEY = "region"
HD_INSTANCE_KEY = "location_id"
#: Bins whose counts are drawn at once: bounds the dense temporaries whatever the slide's size.
_COUNT_BLOCK = 2**15
#: Tissue domains are laid out on this lattice (µm), whatever the bin size.
_DOMAIN_SPACING_UM = 100.0
#: Downscaling of the low-resolution image (spatialdata-io: ``tissue_lowres_scalef``).
_LOWRES_FACTOR = 8


def visium_hd_tissue(
    *,
    n_rows: int = 64,
    n_cols: int = 64,
    bin_um: int = 8,
    n_genes: int = 60,
    n_types: int = 4,
    um_per_px: float = 1.0,
    mean_umi: float = 60.0,
    dataset_id: str = "hd",
    seed: int = 0,
) -> SpatialData:
    """Synthetic Visium HD slide with the elements ``spatialdata_io.visium_hd`` returns.

    The tissue is that of :func:`~comtip_sc.datasets.toy_tissue` (same types, colours, textures, marker
    genes and gradient), sampled by an ``n_rows × n_cols`` grid of square bins of ``bin_um`` µm. Each
    bin's counts follow the type under its centre. Counts are drawn block by block into a sparse
    matrix, so a slide of millions of bins never holds a dense bins × genes array.

    The layout follows spatialdata-io's Visium HD reader with ``bins_as_squares=True``:

    * image ``f"{dataset_id}_full_image"`` (RGB, multiscale) with an identity transformation to the
      coordinate system ``dataset_id``, which is therefore in full-resolution pixels; an image
      ``f"{dataset_id}_lowres_image"`` downscaled 8 times, in ``f"{dataset_id}_downscaled_lowres"``;
    * shapes ``f"{dataset_id}_square_{bin_um:03d}um"``: square polygons in full-resolution pixels,
      indexed ``0..n-1``;
    * table ``f"square_{bin_um:03d}um"`` annotating them (``region_key="region"``,
      ``instance_key="location_id"``), with obs ``in_tissue``, ``array_row``, ``array_col``,
      ``location_id``, ``region``, obs names like ``s_008um_00012_00034-1``, ``obsm["spatial"]`` (bin
      centre in full-resolution pixels) and float32 counts in a CSR ``X``. The true tissue type of each
      bin is in ``obs["tissue_type"]``.

    The table records no spot size: the package reads the bin side from the shapes' name, as it does for
    spatialdata-io output. Nothing here is read from or claims to be vendor files.

    Parameters
    ----------
    n_rows, n_cols
        Bins per column and per row.
    bin_um
        Side of a bin in µm (Visium HD: 2, 8 or 16).
    n_genes, n_types
        Genes and tissue types, as in :func:`~comtip_sc.datasets.toy_tissue`.
    um_per_px
        Resolution of the full image in µm per pixel.
    mean_umi
        Typical total UMI count of a bin.
    dataset_id
        Prefix of the element names and name of the pixel coordinate system.
    seed
        Seed of the layout, textures and counts.

    Returns
    -------
    The SpatialData. A margin of 50 µm surrounds the bins.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.visium_hd_tissue(n_rows=20, n_cols=30)
    >>> sdata.tables["square_008um"].n_obs, list(sdata.shapes)
    (600, ['hd_square_008um'])

    """
    if min(n_rows, n_cols) < 1 or not 0 < bin_um < 1000 or min(um_per_px, mean_umi) <= 0:
        raise ValueError("Grid sizes, bin_um (1..999), um_per_px and mean_umi must be positive.")
    names, _, grad_idx, profiles = _programme(n_genes, n_types)
    bg_rgb, ink_rgb, families, variants = _appearance(n_types)
    rng = np.random.default_rng(seed)

    margin = 50.0
    height_um, width_um = n_rows * bin_um + 2 * margin, n_cols * bin_um + 2 * margin
    h, w = round(height_um / um_per_px), round(width_um / um_per_px)
    # Tissue domains seeded on a coarse lattice, as on the toy's spots.
    ly, lx = np.meshgrid(
        np.arange(margin, height_um - margin, _DOMAIN_SPACING_UM) + _DOMAIN_SPACING_UM / 2,
        np.arange(margin, width_um - margin, _DOMAIN_SPACING_UM) + _DOMAIN_SPACING_UM / 2,
        indexing="ij",
    )
    label = _regions(rng, (h, w), um_per_px, ly.ravel(), lx.ravel(), _DOMAIN_SPACING_UM, n_types)
    image = _render(rng, label, bg_rgb, ink_rgb, families, variants, um_per_px)

    n = n_rows * n_cols
    rows, cols = np.divmod(np.arange(n), n_cols)
    cy_um = margin + (rows + 0.5) * bin_um
    cx_um = margin + (cols + 0.5) * bin_um
    bin_type = label[
        np.clip((cy_um / um_per_px).astype(np.int64), 0, h - 1),
        np.clip((cx_um / um_per_px).astype(np.int64), 0, w - 1),
    ]
    del label
    counts = _bin_counts(rng, bin_type, profiles, grad_idx, _gradient(rng, cy_um, cx_um), mean_umi, families)

    px = np.column_stack([cx_um, cy_um]) / um_per_px
    half = bin_um / 2 / um_per_px
    suffix = f"square_{bin_um:03d}um"
    shapes_name = f"{dataset_id}_{suffix}"
    lowres_cs = f"{dataset_id}_downscaled_lowres"
    to_cs = {dataset_id: Identity(), lowres_cs: Scale([1 / _LOWRES_FACTOR] * 2, axes=("x", "y"))}
    squares = shapely.box(px[:, 0] - half, px[:, 1] - half, px[:, 0] + half, px[:, 1] + half)
    shapes = ShapesModel.parse(GeoDataFrame(geometry=squares, index=np.arange(n)), transformations=to_cs)
    hwc = np.moveaxis(image, 0, -1)
    images = {
        f"{dataset_id}_full_image": rgb_image_element(hwc, {dataset_id: Identity()}),
        f"{dataset_id}_lowres_image": Image2DModel.parse(
            np.ascontiguousarray(image[:, ::_LOWRES_FACTOR, ::_LOWRES_FACTOR]),
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations={
                lowres_cs: Identity(),
                dataset_id: Scale([_LOWRES_FACTOR] * 2, axes=("x", "y")),
            },
        ),
    }
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n, np.int32),
            "array_row": rows,
            "array_col": cols,
            HD_INSTANCE_KEY: np.arange(n),
            HD_REGION_KEY: pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[shapes_name]),
            "tissue_type": pd.Categorical.from_codes(
                bin_type.astype(np.int64), categories=[_type_name(t) for t in range(n_types)]
            ),
        },
        # Python ints (tolist) format several times faster than numpy scalars.
        index=pd.Index(
            [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
        ),
    )
    var = pd.DataFrame(
        {"gene_ids": names, "feature_types": "Gene Expression", "genome": "synthetic"},
        index=pd.Index(names),
    )
    adata = AnnData(X=counts, obs=obs, var=var)
    adata.obsm[SPATIAL_KEY] = px
    table = TableModel.parse(
        adata, region=shapes_name, region_key=HD_REGION_KEY, instance_key=HD_INSTANCE_KEY
    )
    return SpatialData(images=images, shapes={shapes_name: shapes}, tables={suffix: table})


def _bin_counts(rng, bin_type, profiles, grad_idx, u, mean_umi, families) -> sparse.csr_matrix:
    """Counts of every bin as a float32 CSR matrix, drawn ``_COUNT_BLOCK`` bins at a time."""
    n_types = profiles.shape[0]
    one_hot = np.eye(n_types)
    size = _sizes(rng, one_hot[bin_type], mean_umi, families)
    blocks = []
    for start in range(0, len(bin_type), _COUNT_BLOCK):
        sl = slice(start, start + _COUNT_BLOCK)
        dense = _counts(rng, one_hot[bin_type[sl]], profiles, grad_idx, u[sl], size[sl])
        blocks.append(sparse.csr_matrix(dense, dtype=np.float32))
    return sparse.vstack(blocks, format="csr")
