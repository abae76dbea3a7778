"""A synthetic whole-slide image on disk, for measuring memory and speed of embedding at slide scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_slide(path: Path, side: int, chunk: int = 1024) -> None:
    """A ``(3, side, side)`` uint8 zarr slide of 1024² chunks tiled with 4 compressible textures."""
    import zarr

    yy, xx = np.mgrid[0:chunk, 0:chunk]
    patterns = []
    for k in range(4):
        cells = ((yy // (6 + 3 * k)) + (xx // (9 + 2 * k))) % 2
        stripes = ((xx + 2 * yy) // (5 + k)) % 3
        base = np.array([[220, 170, 200], [150, 90, 160], [240, 225, 235], [120, 60, 130]][k], np.int16)
        img = base[:, None, None] - 40 * cells[None] - 15 * stripes[None]
        patterns.append(np.clip(img, 0, 255).astype(np.uint8))
    arr = zarr.open_array(str(path), mode="w", shape=(3, side, side), chunks=(3, chunk, chunk), dtype="uint8")
    for by in range(0, side, chunk):
        for bx in range(0, side, chunk):
            p = patterns[(by // chunk + 2 * (bx // chunk)) % 4]
            arr[:, by : by + chunk, bx : bx + chunk] = p[:, : min(chunk, side - by), : min(chunk, side - bx)]


def slide_sdata(path: Path, n_spots: int, um_per_px: float = 0.5):
    """SpatialData over the lazy zarr slide: an Image2DModel, ``n_spots`` circles on a grid and a table."""
    import anndata as ad
    import dask.array as da
    import pandas as pd
    import scipy.sparse as sp
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    image = da.from_zarr(str(path))
    side = image.shape[1]
    per_row = int(np.ceil(np.sqrt(n_spots)))
    pitch = side / per_row
    j = np.arange(n_spots)
    xy = np.stack([(j % per_row + 0.5) * pitch, (j // per_row + 0.5) * pitch], axis=1)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n_spots, 27.5 / um_per_px), transformations={"global": Identity()}
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n_spots), "spot_id": j}, index=[f"s{i}" for i in j]
    )
    table = TableModel.parse(
        ad.AnnData(sp.csr_matrix((n_spots, 1), dtype=np.float32), obs=obs),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    img = Image2DModel.parse(
        image, dims=("c", "y", "x"), c_coords=["r", "g", "b"], transformations={"global": Identity()}
    )
    return SpatialData(images={"slide": img}, shapes={"spots": shapes}, tables={"table": table})
