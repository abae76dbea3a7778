"""Reader for legacy Spatial Transcriptomics (ST, 1k and 2k arrays) sections: counts + spot table + H&E."""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.utils import make_index_unique
from PIL import Image
from scipy.spatial import cKDTree
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Scale

from .._constants import (
    ARRAY_COL_KEY,
    ARRAY_ROW_KEY,
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
from .._image import rgb_image_element
from ._checks import _preview, check_coordinates, check_counts, check_overlap, require_columns, require_unique

#: Centre-to-centre spot spacing of the legacy 1k ST array (100 µm spots, 200 µm apart).
LEGACY_1K_SPACING_UM = 200.0
#: Columns a spot table must have; ``new_x``/``new_y``/``selected`` are optional.
SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
#: Pyramid levels are added until the short side of the coarsest one is below this.
#: Full-resolution H&E scans of ST sections (~9k x 10k) exceed PIL's decompression-bomb guard.
_MAX_IMAGE_PIXELS = 1_000_000_000

PathOrFrame = str | PathLike | pd.DataFrame


def read_legacy_st(
    counts: PathOrFrame,
    spots: PathOrFrame,
    image: str | PathLike | np.ndarray,
    *,
    um_per_px: float | None = None,
    spot_diameter_um: float = 100.0,
    sample_id: str = "sample",
    pixel_scale: float = 1.0,
    spot_spacing_um: float | None = None,
) -> SpatialData:
    """Read one legacy ST section (count table, spot table, H&E image) into a SpatialData object.

    The output follows ``docs/data_layout.md``: an image ``f"{sample_id}_image"``, circle shapes
    ``f"{sample_id}_spots"`` and a table ``"table"`` annotating them, with image and shapes mapped to
    the coordinate system ``sample_id`` in micrometres.

    Parameters
    ----------
    counts
        Path of a tab-separated count table (optionally gzipped) or a DataFrame already loaded: one
        row per spot, indexed by the spot id ``"<x>x<y>"`` (the first, unnamed column of the file),
        one column per gene, raw integer UMI.
    spots
        Path or DataFrame of a spot table with the columns ``x y pixel_x pixel_y`` and optionally
        ``new_x new_y selected`` (her2st ``*_selection.tsv``, ST Spot Detector / STUtility
        ``alignment_table_*.tsv``). Only rows with ``selected == 1`` are kept when that column
        exists. ``x``, ``y`` are array coordinates, joined to the count table on
        ``f"{round(x)}x{round(y)}"``; ``pixel_x``/``pixel_y`` are the image column/row.
    image
        Path of the H&E image (JPEG, PNG, TIFF; anything PIL reads) or an ``(H, W, 3)`` ``uint8``
        array.
    um_per_px
        Micrometres per pixel of ``image``. Derived from the spot grid when ``None`` (see Notes).
    spot_diameter_um
        Physical spot diameter; 100 µm for the 1k and 2k ST arrays.
    sample_id
        Section id: names the elements, the coordinate system and the table rows.
    pixel_scale
        Factor applied to ``pixel_x``/``pixel_y`` when ``image`` is a resized copy of the image
        the spot table was made on (for example ``2000 / 6954`` for her2st A1).
    spot_spacing_um
        Centre-to-centre distance of neighbouring spots on the array, used only to derive
        ``um_per_px``. ``None`` means 200 µm, the legacy 1k array; use 141 µm for the 2k array.

    Returns
    -------
    SpatialData with one image, one shapes element and the table. Only spots that are in both
    the count table and the (selected) spot table are kept, in count-table order.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    KeyError
        The spot table lacks a required column.
    ValueError
        Negative, NaN or non-integer counts (naming the first spot and gene); spots without
        coordinates; duplicated spot ids in either table; no spot in common between the tables;
        an image that is not RGB; non-positive scales.

    Notes
    -----
    **Deriving µm/px.** A least-squares affine fit of the spot centres (pixels, after
    ``pixel_scale``) on their integer array coordinates gives the pixels per array unit (the
    square root of the determinant of its linear part, i.e. the mean of the two axis scales). The
    array pitch is the median nearest-neighbour distance between kept spots in array units (1 on
    the square 1k grid, √2 on the 2k checkerboard grid). Then::

        um_per_px = spot_spacing_um / (pitch * px_per_array_unit)

    The fit uses every spot, so detection jitter averages out; a median of nearest-neighbour
    *pixel* distances would instead pick the smallest of several jittered distances, 7 % short of
    the pitch on her2st (271 instead of 290 px on C2), and overstate µm/px as much. Results: her2st C2-C6 ~0.69 µm/px, A1 ~3.2, STUtility MOB ~4.4.
    The inputs passed in are never modified.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> root = "path/to/her2st"
    >>> sdata = cs.io.read_legacy_st(
    ...     f"{root}/data/ST-cnts/C2.tsv.gz",
    ...     f"{root}/data/ST-spotfiles/C2_selection.tsv",
    ...     f"{root}/data/ST-imgs/C/C2/5714_HE_BT_C2.jpg",
    ...     sample_id="C2",
    ... )  # doctest: +SKIP
    >>> sdata.tables["table"].n_obs  # doctest: +SKIP
    187

    """
    sample_id = str(sample_id)
    if not sample_id:
        raise ValueError(
            "sample_id must be a non-empty string; it names the elements and the coordinate system."
        )
    _require_positive(spot_diameter_um=spot_diameter_um, pixel_scale=pixel_scale)
    if spot_spacing_um is not None:
        _require_positive(spot_spacing_um=spot_spacing_um)
    if um_per_px is not None:
        _require_positive(um_per_px=um_per_px)

    count_df, count_source = _read_counts(counts)
    spot_df, spot_source = _read_spots(spots)
    values = check_counts(count_df, count_source)
    require_unique(count_df.index, count_source)
    require_unique(spot_df.index, spot_source)
    common = check_overlap(count_df.index, spot_df.index, count_source, spot_source)
    spot_df = spot_df.loc[common]
    check_coordinates(spot_df, ["pixel_x", "pixel_y"], spot_source)
    values = values[count_df.index.get_indexer(common)]

    centers = spot_df[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * float(pixel_scale)
    grid = spot_df[["x", "y"]].to_numpy(dtype=np.float64).round()
    if um_per_px is None:
        spacing = LEGACY_1K_SPACING_UM if spot_spacing_um is None else float(spot_spacing_um)
        um_per_px = _estimate_um_per_px(grid, centers, spacing, source=spot_source)
    um_per_px = float(um_per_px)

    rgb, image_source = _read_image(image)
    _warn_outside(centers, rgb.shape[:2], common, image_source)

    transform = Scale([um_per_px, um_per_px], axes=("y", "x"))
    image_name, shapes_name = f"{sample_id}{IMAGE_SUFFIX}", f"{sample_id}{SHAPES_SUFFIX}"
    image_el = rgb_image_element(rgb, {sample_id: transform})
    n = len(common)
    shapes_el = ShapesModel.parse(
        centers,
        geometry=0,
        radius=np.full(n, spot_diameter_um / 2.0 / um_per_px),
        index=np.arange(n),
        transformations={sample_id: transform},
    )

    obs = pd.DataFrame(
        {
            REGION_KEY: pd.Categorical([shapes_name] * n),
            INSTANCE_KEY: np.arange(n, dtype=np.int64),
            SPOT_ID_KEY: np.asarray(common, dtype=str).astype(object),
            SAMPLE_KEY: pd.Categorical([sample_id] * n),
            ARRAY_ROW_KEY: grid[:, 1].astype(np.int64),
            ARRAY_COL_KEY: grid[:, 0].astype(np.int64),
        },
        index=pd.Index([f"{sample_id}_{s}" for s in common]),
    )
    genes = pd.Index(count_df.columns.astype(str))
    if genes.has_duplicates:
        warnings.warn(
            f"{count_source}: duplicated gene name(s) {_preview(genes[genes.duplicated()].unique())}; "
            "made unique by appending -1, -2, ...",
            UserWarning,
            stacklevel=2,
        )
        genes = make_index_unique(genes)
    adata = AnnData(
        X=sp.csr_matrix(values.astype(np.int32)),
        obs=obs,
        var=pd.DataFrame(index=genes),
        obsm={SPATIAL_KEY: centers},
        uns={
            UNS_KEY: {
                SPOT_DIAMETER_KEY: {sample_id: float(spot_diameter_um)},
                UM_PER_PX_KEY: {sample_id: um_per_px},
            }
        },
    )
    table = TableModel.parse(adata, region=shapes_name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(
        images={image_name: image_el}, shapes={shapes_name: shapes_el}, tables={TABLE_KEY: table}
    )


def _estimate_um_per_px(
    array_xy: np.ndarray, pixel_xy: np.ndarray, spot_spacing_um: float, *, source: str = "spot table"
) -> float:
    """µm per pixel from spot centres ``(col, row)`` and array coordinates ``(x, y)``; rule in :func:`read_legacy_st`."""
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    design = np.column_stack([array_xy, np.ones(len(array_xy))])
    if len(array_xy) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            f"{source}: cannot derive µm/px from {len(array_xy)} spot(s) that do not span a 2-D grid; "
            "pass um_per_px explicitly."
        )
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    px_per_unit = float(np.sqrt(abs(np.linalg.det(coef[:2]))))
    dist, _ = cKDTree(array_xy).query(array_xy, k=2)
    pitch = float(np.median(dist[:, 1]))
    if not np.isfinite(px_per_unit) or px_per_unit <= 0 or pitch <= 0:
        raise ValueError(
            f"{source}: spot pixel positions do not follow the array grid; pass um_per_px explicitly."
        )
    return float(spot_spacing_um) / (pitch * px_per_unit)


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _existing(path: str | PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _read_counts(counts: PathOrFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(counts, pd.DataFrame):
        df, source = counts.copy(), "count DataFrame"
    else:
        path = _existing(counts, "Count table")
        source = f"count table {path}"
        gzipped = _is_gzip(path)
        df = pd.read_csv(path, sep="\t", index_col=0, compression="gzip" if gzipped else None)
        # pandas renames repeated headers ("A", "A.1"); restore them so duplicates are reported
        with gzip.open(path, "rt") if gzipped else path.open() as fh:
            genes = [g.strip('"') for g in fh.readline().rstrip("\r\n").split("\t")[1:]]
        if len(genes) == df.shape[1] and len(set(genes)) < len(genes):
            df.columns = genes
    df.index = pd.Index(df.index.astype(str))
    return df, source


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_spots(spots: PathOrFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(spots, pd.DataFrame):
        df, source = spots.copy(), "spot DataFrame"
    else:
        path = _existing(spots, "Spot table")
        df, source = pd.read_csv(path, sep="\t"), f"spot table {path}"
    require_columns(df, SPOT_COLUMNS, source)
    if "selected" in df.columns:
        df = df[pd.to_numeric(df["selected"], errors="coerce") == 1]
    check_coordinates(df.set_axis([f"row {i}" for i in df.index], axis=0), ["x", "y"], source)
    xy = df[["x", "y"]].apply(pd.to_numeric).to_numpy(dtype=np.float64).round().astype(np.int64)
    df.index = pd.Index([f"{x}x{y}" for x, y in xy])
    return df, source


@contextmanager
def _pil_pixel_limit(limit: int) -> Iterator[None]:
    # PIL's guard is a module global; raise it only while we read and put it back afterwards
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if previous is None else max(previous, limit)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _read_image(image: str | PathLike | np.ndarray) -> tuple[np.ndarray, str]:
    if isinstance(image, np.ndarray):
        rgb, source = image, "image array"
    else:
        path = _existing(image, "Image")
        source = f"image {path}"
        with _pil_pixel_limit(_MAX_IMAGE_PIXELS), Image.open(path) as im:
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{source} must be RGB uint8 with shape (H, W, 3); got {rgb.dtype} {rgb.shape}.")
    return rgb, source


def _warn_outside(centers: np.ndarray, shape: tuple[int, int], ids: pd.Index, source: str) -> None:
    height, width = shape
    out = (centers[:, 0] < 0) | (centers[:, 0] >= width) | (centers[:, 1] < 0) | (centers[:, 1] >= height)
    if out.any():
        warnings.warn(
            f"{int(out.sum())} spot centre(s) lie outside {source} ({width} x {height} px), e.g. "
            f"{_preview(ids[out], 3)}; is pixel_scale right for this image?",
            UserWarning,
            stacklevel=3,
        )
