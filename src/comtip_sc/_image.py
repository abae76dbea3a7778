"""H&E image elements: building a multiscale SpatialData image from RGB, and reading its pyramid levels."""

from __future__ import annotations

import numpy as np
from spatialdata import get_pyramid_levels
from spatialdata.models import Image2DModel
from spatialdata.transformations import BaseTransformation
from xarray import DataArray, DataTree

#: Pyramid levels halve until the short side is under this many pixels (docs/data_layout.md).
PYRAMID_MIN_SIDE = 512
#: Chunk side of the image levels: a spot tile touches at most a few chunks.
IMAGE_CHUNK = 1024


def pyramid_factors(shape_yx: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE) -> list[int]:
    """Downscale factors (all 2) that halve the image until its short side is under ``min_side``.

    An image already smaller than ``min_side`` still gets one level, so every image is multiscale.

    Examples
    --------
    >>> pyramid_factors((2200, 2000))
    [2, 2]

    """
    factors, side = [], min(shape_yx)
    while side >= min_side:
        factors.append(2)
        side //= 2
    return factors or [2]


def rgb_image_element(rgb_hwc: np.ndarray, transformations: dict[str, BaseTransformation]) -> DataTree:
    """Parse an ``(H, W, 3)`` uint8 RGB array into a multiscale image element with materialised levels.

    ``Image2DModel.parse`` builds the coarser levels as lazy dask graphs; left lazy, every tile read
    from a coarse level would recompute the downsampling of whole chunks (seconds per tile on a
    9k×9k slide). The levels are therefore computed once here (``persist``), which costs a few seconds
    per slide and makes a tile read cost milliseconds.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialdata.transformations import Identity
    >>> el = rgb_image_element(np.zeros((600, 700, 3), np.uint8), {"s": Identity()})
    >>> sorted(el.children)
    ['scale0', 'scale1']

    """
    if rgb_hwc.ndim != 3 or rgb_hwc.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 3) RGB array, got shape {rgb_hwc.shape}.")
    element = Image2DModel.parse(
        np.moveaxis(np.asarray(rgb_hwc, dtype=np.uint8), -1, 0),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=pyramid_factors(rgb_hwc.shape[:2]),
        chunks=(3, IMAGE_CHUNK, IMAGE_CHUNK),
        transformations=transformations,
    )
    return element.persist()


def pyramid_levels(image: DataArray | DataTree) -> list[DataArray]:
    """The levels of an image element as DataArrays (c, y, x), finest first; a single-scale image is one.

    Sorted by width rather than by the order of the pyramid's children, so the finest level comes first
    whatever the children are called.

    Examples
    --------
    >>> import numpy as np
    >>> from spatialdata.transformations import Identity
    >>> el = rgb_image_element(np.zeros((600, 700, 3), np.uint8), {"s": Identity()})
    >>> [level.sizes["x"] for level in pyramid_levels(el)]
    [700, 350]

    """
    if isinstance(image, DataTree):
        return sorted(get_pyramid_levels(image), key=lambda level: -level.sizes["x"])
    return [image]
