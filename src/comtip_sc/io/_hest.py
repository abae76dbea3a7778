"""Reader for samples stored in HEST-1k's on-disk layout (``st/``, ``wsis/``, ``metadata/``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData, read_h5ad
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Scale

from .._constants import (
    IMAGE_SUFFIX,
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SHAPES_SUFFIX,
    SPATIAL_KEY,
    SPOT_DIAMETER_KEY,
    SPOT_ID_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)
from .._tables import check_counts

#: Metadata fields giving the slide's µm per pixel, in order of preference.
PIXEL_SIZE_FIELDS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
#: Metadata field giving the spot diameter in µm.
SPOT_DIAMETER_FIELD = "spot_diameter"


def read_hest(
    root: str | PathLike, ids: str | Sequence[str] | None = None
) -> SpatialData | list[SpatialData]:
    """Read samples of a HEST-1k download (or any folder in its layout), lazily, into SpatialData.

    For a sample ``<id>`` the layout is

    * ``st/<id>.h5ad``: AnnData of raw counts (``X``, spots × genes) with the spot centres in the
      whole-slide image's full-resolution pixels in ``obsm["spatial"]`` (x, y);
    * ``wsis/<id>.tif``: the whole-slide image, a (pyramidal) RGB TIFF;
    * ``metadata/<id>.json``: of its fields, ``pixel_size_um_estimated`` (µm per full-resolution pixel;
      ``pixel_size_um_embedded`` when the first is missing) and ``spot_diameter`` (µm) are read; the
      others (``st_technology``, ``organ``, ``species``, ...) are kept in ``uns["comtip"]["hest"]``.

    The image is not loaded: its full-resolution level is a dask array over the TIFF (``tifffile``'s
    zarr view), read window by window when tiles are cut. Each sample becomes an image
    ``<id>_image``, circle shapes ``<id>_spots`` (diameter: ``spot_diameter`` in pixels) and a table
    ``"table"`` of raw counts, in coordinate system ``<id>`` in micrometres, as in
    ``docs/data_layout.md``; ``uns["comtip"]`` records ``spot_diameter_um`` and ``um_per_px``.

    Parameters
    ----------
    root
        Folder holding ``st/``, ``wsis/`` and ``metadata/``.
    ids
        One sample id (returns one SpatialData), a list of them, or ``None`` for every ``st/*.h5ad``
        (return a list, in that order: samples may measure different genes, and
        :func:`comtip_sc.tl.fit` takes such a list as it is).

    Returns
    -------
    A SpatialData, or a list of them.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> samples = cs.io.read_hest("hest_data", ["TENX95", "NCBI785"])  # doctest: +SKIP
    >>> model = cs.tl.fit(samples)  # doctest: +SKIP

    """
    root = Path(root)
    if not (root / "st").is_dir():
        raise FileNotFoundError(f"{root} has no st/ folder; it is not in the HEST layout.")
    if isinstance(ids, str):
        return _read_sample(root, ids)
    if ids is None:
        ids = sorted(p.stem for p in (root / "st").glob("*.h5ad"))
        if not ids:
            raise FileNotFoundError(f"{root / 'st'} holds no .h5ad sample.")
    return [_read_sample(root, str(i)) for i in ids]


def _read_sample(root: Path, sample_id: str) -> SpatialData:
    files = {
        "counts": root / "st" / f"{sample_id}.h5ad",
        "image": root / "wsis" / f"{sample_id}.tif",
        "metadata": root / "metadata" / f"{sample_id}.json",
    }
    for what, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"Sample {sample_id!r}: its {what} file {path} is missing.")
    meta = json.loads(files["metadata"].read_text())
    um_per_px = next((meta[k] for k in PIXEL_SIZE_FIELDS if meta.get(k) is not None), None)
    if um_per_px is None or not float(um_per_px) > 0:
        raise ValueError(f"{files['metadata']}: no positive {' or '.join(PIXEL_SIZE_FIELDS)}.")
    diameter = meta.get(SPOT_DIAMETER_FIELD)
    if diameter is None or not float(diameter) > 0:
        raise ValueError(f"{files['metadata']}: no positive {SPOT_DIAMETER_FIELD!r} (µm).")
    um_per_px, diameter = float(um_per_px), float(diameter)

    adata = read_h5ad(files["counts"])
    if SPATIAL_KEY not in adata.obsm:
        raise ValueError(f"{files['counts']}: obsm[{SPATIAL_KEY!r}] (spot centres in pixels) is missing.")
    check_counts(adata, what=str(files["counts"]))
    centres = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)[:, :2]
    if not np.isfinite(centres).all():
        raise ValueError(f"{files['counts']}: obsm[{SPATIAL_KEY!r}] has non-finite spot centres.")

    transform = Scale([um_per_px, um_per_px], axes=("y", "x"))
    image_name, shapes_name = f"{sample_id}{IMAGE_SUFFIX}", f"{sample_id}{SHAPES_SUFFIX}"
    image = Image2DModel.parse(
        _lazy_rgb(files["image"]), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        transformations={sample_id: transform},
    )  # fmt: skip
    n = adata.n_obs
    shapes = ShapesModel.parse(
        centres,
        geometry=0,
        radius=np.full(n, diameter / 2.0 / um_per_px),
        index=np.arange(n),
        transformations={sample_id: transform},
    )
    obs = adata.obs.copy()
    obs[REGION_KEY] = pd.Categorical([shapes_name] * n)
    obs[INSTANCE_KEY] = np.arange(n, dtype=np.int64)
    obs[SPOT_ID_KEY] = adata.obs_names.astype(str).to_numpy(dtype=object)
    obs[SAMPLE_KEY] = pd.Categorical([sample_id] * n)
    obs.index = pd.Index([f"{sample_id}_{s}" for s in adata.obs_names])
    x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(np.asarray(adata.X))
    table = AnnData(
        X=sp.csr_matrix(x),
        obs=obs,
        var=adata.var.copy(),
        obsm={SPATIAL_KEY: centres},
        uns={
            UNS_KEY: {
                SPOT_DIAMETER_KEY: {sample_id: diameter},
                UM_PER_PX_KEY: {sample_id: um_per_px},
                "hest": {sample_id: {k: v for k, v in meta.items() if _plain(v)}},
            }
        },
    )
    table = TableModel.parse(table, region=shapes_name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images={image_name: image}, shapes={shapes_name: shapes}, tables={TABLE_KEY: table})


def _lazy_rgb(path: Path) -> da.Array:
    """The full-resolution level of a (pyramidal) RGB TIFF as a dask array ``(3, y, x)``, nothing read."""
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, level=0)
    arr = da.from_zarr(zarr.open(store, mode="r"))
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):  # planar (c, y, x)
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB(A) image, got shape {arr.shape}.")
    return arr[..., :3].transpose(2, 0, 1).astype(np.uint8)


def _plain(value: object) -> bool:
    """JSON scalars only: they can be written to a table's uns (h5ad / zarr) as they are."""
    return isinstance(value, str | int | float | bool) and value is not None
