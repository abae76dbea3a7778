"""Spot tiles of a fixed physical size, read lazily from the image elements.

The spot → pixel mapping comes from spatialdata's transformations (see :mod:`comtip_sc._sections`);
this module only slices the (dask) image at the right pyramid level and resamples the window to a
square of ``tile_px`` pixels. ``spatialdata.dataloader.ImageTilesDataset`` costs tens to hundreds of
milliseconds per tile (measured on her2st C2), so the slicing is done here, in the data-loader workers, on
the lazily loaded levels, from whole image chunks decoded once per process
(:class:`~comtip_sc.pp._chunk_cache.ChunkCache`).
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
from PIL import Image
from spatialdata import SpatialData

from .._constants import (
    COLOUR_NORM_SPOTS,
    COLOUR_NORMS,
    COLOUR_REF_MEAN,
    COLOUR_REF_STD,
    DEFAULT_TILE_PX,
    DEFAULT_TILE_UM,
    TABLE_KEY,
)
from .._sections import resolve_sections
from .._tables import get_table
from ._chunk_cache import ChunkCache
from ._image_levels import PAD_VALUE, ImageLevels, image_levels, resample_uint8

logger = logging.getLogger(__name__)

# The reference colour as arrays once, not per tile read.
_REF_MEAN = np.asarray(COLOUR_REF_MEAN)
_REF_STD = np.asarray(COLOUR_REF_STD)

#: Tiles cut and resampled together by :meth:`SpotTiles.take`.
_TAKE_BATCH = 64
#: Most bytes of windows resampled in one call.
_WINDOW_BYTES = 8 * 2**20


class SpotTiles:
    """Lazy, indexable collection of spot tiles of ``tile_um`` µm resampled to ``tile_px`` pixels.

    Item ``i`` is the tile of table row ``i`` as a ``uint8`` array ``(tile_px, tile_px, 3)``. Only the
    pixel window of that tile is read from the image (at the coarsest pyramid level that still has at
    least ``tile_px`` pixels across the tile), so a worker never holds a whole slide. Tiles crossing
    the image border are padded with white. The window is resampled with an antialiased bilinear filter:
    PIL's, over the exact sub-pixel box, when it is downsampled less than 2x; torch's (the same filter,
    faster) over the box snapped to whole pixels when it is downsampled 2x or more. Decoded image chunks
    are kept in a bounded per-process cache; :meth:`read_order` is the order that reuses them best.

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table annotating them.
    tile_um
        Side of the square tile in micrometres.
    tile_px
        Side of the returned tile in pixels.
    table_key
        Table whose rows define the spots (and their order).
    spot_diameter_um
        Physical spot diameter in µm, when the table does not record it in
        ``uns["comtip"]["spot_diameter_um"]`` (Visium: 55).
    colour_norm
        ``None`` (default): the tiles as scanned. ``"section"``: standardise each image's tiles per RGB
        channel with the mean and standard deviation of (up to 256 of) that image's spot tiles, mapped
        onto a fixed H&E reference colour (RGB Reinhard-style normalisation). It removes brightness and
        stain shifts between scans, and also any real difference in the sections' mean tissue colour
        (see ``docs/benchmarks.md`` for where it helped and where it hurt).

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> tiles = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=32)
    >>> tiles[0].shape
    (32, 32, 3)

    """

    def __init__(
        self,
        sdata: SpatialData,
        *,
        tile_um: float = DEFAULT_TILE_UM,
        tile_px: int = DEFAULT_TILE_PX,
        table_key: str = TABLE_KEY,
        spot_diameter_um: float | None = None,
        colour_norm: str | None = None,
    ) -> None:
        if tile_um <= 0 or tile_px <= 0:
            raise ValueError(f"tile_um and tile_px must be positive, got {tile_um} and {tile_px}.")
        if colour_norm not in COLOUR_NORMS:
            raise ValueError(f"colour_norm must be one of {COLOUR_NORMS}, got {colour_norm!r}.")
        self.colour_norm = colour_norm
        #: Per image: its spot tiles' RGB mean and the reference-std / std scale, filled on first use
        #: when colour_norm="section".
        self._colour_stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # Decoded image chunks of this process (dropped when the reader is pickled into a worker).
        self._chunk_cache = ChunkCache()
        table = get_table(sdata, table_key)
        sections = resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
        self.tile_um = float(tile_um)
        self.tile_px = int(tile_px)
        self.obs_names = table.obs_names.to_numpy().astype(str)
        n = table.n_obs
        self._image_of = np.full(n, -1, dtype=np.int32)
        self._centers = np.full((n, 2), np.nan)
        self._half_px = np.full(n, np.nan)
        self._images: list[ImageLevels] = []
        self.image_names: list[str] = []
        for sec in sections:
            if sec.image not in self.image_names:
                self.image_names.append(sec.image)
                self._images.append(image_levels(sec.image, sdata.images[sec.image]))
            self._image_of[sec.obs_index] = self.image_names.index(sec.image)
            self._centers[sec.obs_index] = sec.centers_px
            self._half_px[sec.obs_index] = 0.5 * self.tile_um * sec.px_per_um
        if (self._image_of < 0).any():
            missing = self.obs_names[self._image_of < 0][:5].tolist()
            raise ValueError(f"Spots {missing} of table {table_key!r} are not linked to any image.")
        self._check_boxes()
        # Per spot, the coarsest level whose tile is still at least tile_px wide: saves reading and
        # resampling. Chosen once here rather than on every read.
        self._level_of = np.zeros(n, dtype=np.int16)
        for k, img in enumerate(self._images):
            on = self._image_of == k
            ok = 2 * self._half_px[on, None] / img.factors[None, :, 0] >= self.tile_px
            last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
            self._level_of[on] = np.where(ok.any(axis=1), last, 0)

    def _check_boxes(self) -> None:
        """Fail, naming image and spots, on tiles under a pixel, over the whole image, or off the image."""
        boxes = self.boxes_px
        for k, (name, img) in enumerate(zip(self.image_names, self._images, strict=True)):
            on = self._image_of == k
            height, width = img.arrays[0].shape[1:]
            side = 2 * self._half_px[on]
            um_per_px = self.tile_um / float(np.median(side))
            if side.min() < 1.0:
                raise ValueError(
                    f"tile_um={self.tile_um:g} is under one pixel of image {name!r} ({um_per_px:.3g} µm per "
                    "pixel): there is nothing to resample. Use a larger tile_um."
                )
            if side.max() > max(height, width):
                raise ValueError(
                    f"tile_um={self.tile_um:g} ({side.max():.0f} px) is larger than image {name!r} "
                    f"({width}×{height} px, {width * um_per_px:.0f}×{height * um_per_px:.0f} µm). Use a smaller "
                    "tile_um."
                )
            b = boxes[on]
            off = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= width) | (b[:, 1] >= height)
            if off.any():
                spots = self.obs_names[on][off]
                raise ValueError(
                    f"{len(spots)} spot(s) have their tile entirely outside image {name!r} ({width}×{height} "
                    f"px), e.g. {spots[:5].tolist()} at pixel centres "
                    f"{np.round(self._centers[on][off][:2]).tolist()}. Check the spots' coordinates and the "
                    "transformation between the shapes and the image."
                )

    def __len__(self) -> int:
        return len(self._image_of)

    @property
    def boxes_px(self) -> np.ndarray:
        """``(n, 4)`` tile boxes ``(x0, y0, x1, y1)`` in full-resolution pixels of each spot's image."""
        return np.column_stack(
            [self._centers - self._half_px[:, None], self._centers + self._half_px[:, None]]
        )

    def __getitem__(self, i: int) -> np.ndarray:
        return self.take([i])[0]

    def _normalise_colour(self, idx: np.ndarray, tiles: np.ndarray) -> None:
        """Map ``tiles`` (of spots ``idx``) onto the reference colour in place, image by image."""
        images = self._image_of[idx]
        for k in np.unique(images):
            if k not in self._colour_stats:
                mean, std = self._image_colour(int(k))
                self._colour_stats[int(k)] = (mean, _REF_STD / std)
            mean, scale = self._colour_stats[int(k)]
            on = images == k
            tiles[on] = np.clip(np.rint((tiles[on] - mean) * scale + _REF_MEAN), 0, 255)

    def precompute_colour_stats(self) -> None:
        """Compute every image's colour statistics now (``colour_norm="section"``; else nothing to do).

        Worth calling once before the reader is copied into worker processes, which would each compute them.
        """
        if self.colour_norm is None:
            return
        for k in range(len(self._images)):
            if k not in self._colour_stats:
                mean, std = self._image_colour(k)
                self._colour_stats[k] = (mean, _REF_STD / std)

    def _image_colour(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB mean and std over (a fixed sample of) the spot tiles of image ``k``."""
        spots = np.flatnonzero(self._image_of == k)
        if len(spots) > COLOUR_NORM_SPOTS:
            # Evenly spaced, not random: the same spots whichever process asks (data-loader workers, DDP).
            spots = spots[np.linspace(0, len(spots) - 1, COLOUR_NORM_SPOTS).astype(int)]
        px = self._scanned(spots).reshape(-1, 3).astype(np.float64)
        # A floor on the std keeps a flat (e.g. blank) image from being blown up to noise.
        return px.mean(0), np.maximum(px.std(0), 1.0)

    def _cut(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Write the tiles of spots ``idx``, as scanned, into ``out``.

        At 2x downsampling or more, the window snapped to whole pixels is at most a quarter of an output
        pixel off the exact box, and torch's antialiased bilinear (PIL's filter) resamples uint8
        channels-last several times faster than PIL; windows of one size go through it together. Below
        2x, PIL resamples the exact sub-pixel box, tile by tile.
        """
        by_size: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}
        for j, i in enumerate(idx.tolist()):
            k, level = int(self._image_of[i]), int(self._level_of[i])
            fx, fy = self._images[k].factors[level]
            cx, cy = self._centers[i, 0] / fx, self._centers[i, 1] / fy
            hx, hy = self._half_px[i] / fx, self._half_px[i] / fy
            if min(hx, hy) < self.tile_px:
                out[j] = self._exact_tile(k, level, cx - hx, cy - hy, cx + hx, cy + hy)
                continue
            ix0, iy0 = round(cx - hx), round(cy - hy)
            w, h = round(2 * hx), round(2 * hy)
            by_size.setdefault((h, w), []).append((j, (k, level, ix0, iy0, ix0 + w, iy0 + h)))
        for (h, w), members in by_size.items():
            # At most 8 MiB of windows at a time (29 of 300 px): every loader worker holds its own.
            step = max(1, _WINDOW_BYTES // (3 * h * w))
            for start in range(0, len(members), step):
                part = members[start : start + step]
                windows = np.empty((len(part), h, w, 3), np.uint8)
                for m, (_, box) in enumerate(part):
                    self._window(*box, out=windows[m])
                out[[j for j, _ in part]] = resample_uint8(windows, self.tile_px)

    def _exact_tile(self, k: int, level: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """The tile over the sub-pixel box ``(x0, y0, x1, y1)`` of image ``k`` at ``level``, resampled by PIL."""
        ix0, iy0 = math.floor(x0) - 1, math.floor(y0) - 1
        ix1, iy1 = math.ceil(x1) + 1, math.ceil(y1) + 1
        window = np.empty((iy1 - iy0, ix1 - ix0, 3), np.uint8)
        self._window(k, level, ix0, iy0, ix1, iy1, out=window)
        # PIL resamples a sub-pixel box with antialiasing, so the physical field is exact.
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        tile = Image.fromarray(window).resize(
            (self.tile_px, self.tile_px), Image.Resampling.BILINEAR, box=box
        )
        return np.asarray(tile)

    def _window(self, k: int, level: int, ix0: int, iy0: int, ix1: int, iy1: int, *, out: np.ndarray) -> None:
        """Write pixels ``[iy0:iy1, ix0:ix1]`` of image ``k`` at ``level`` into ``out`` (``(h, w, 3)`` uint8).

        Pixels outside the image are white.
        """
        arr = self._images[k].arrays[level]
        _, height, width = arr.shape
        sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, width), min(iy1, height)
        if (sx0, sy0, sx1, sy1) != (ix0, iy0, ix1, iy1):
            out.fill(PAD_VALUE)
        if sx1 > sx0 and sy1 > sy0:
            # Chunks are kept as RGB uint8, channels last: converted once per chunk, not once per tile.
            target = out[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0]
            self._chunk_cache.fill((k, level), arr, self._images[k].rgb, target, sy0, sx0)

    def with_chunk_cache(self, max_bytes: int) -> SpotTiles:
        """A copy of this reader that keeps at most ``max_bytes`` of decoded chunks (this one is unchanged).

        Loader workers each hold their own copy of a reader; with many workers a smaller cache each
        bounds their memory together, and :meth:`read_order` picks blocks that fit it.
        """
        out = copy.copy(self)
        out._chunk_cache = ChunkCache(max_bytes)
        return out

    def read_order(self) -> np.ndarray:
        """Every spot index, ordered so that each image chunk is decoded about once when read in turn.

        By image and level, then in blocks of ``k × k`` chunks, block rows swept left to right and right
        to left in turn, and inside a block in bands one chunk row high (by the tile's top edge, so a tile
        touches its band's chunk row and at most the next), also swept both ways in turn. ``k`` is the
        largest block whose chunks and their right and lower neighbours fit in the reader's chunk cache
        (``(k + 1)(k + 2)`` chunks), so the chunks a block shares with the next one are still decoded when
        it comes. The table's order can revisit every chunk of a slide's width many times; on a 40 × 40
        chunk image with 9 spots per chunk, this order decodes each chunk 1.15 times with a cache of 42
        chunks (k = 5) and 1.65 times with 12 (k = 2); bands across the whole width, 1.63 and 1.88.
        Inference reads in this order and puts the results back in the table's.
        """
        band = np.zeros(len(self))
        block_row, block_col = np.zeros(len(self)), np.zeros(len(self))
        x, top = self._centers[:, 0].copy(), self._centers[:, 1] - self._half_px
        left = x - self._half_px
        for k, img in enumerate(self._images):
            for level, arr in enumerate(img.arrays):
                on = (self._image_of == k) & (self._level_of == level)
                fx, fy = img.factors[level]
                x[on], top[on], left[on] = x[on] / fx, top[on] / fy, left[on] / fx
                rows = max(arr.chunks[1]) if hasattr(arr, "chunks") else arr.shape[1]
                cols = max(arr.chunks[2]) if hasattr(arr, "chunks") else arr.shape[2]
                side = _block_side(self._chunk_cache.max_bytes // max(1, 3 * rows * cols))
                band[on] = np.floor(top[on] / rows)
                block_row[on] = np.floor(band[on] / side)
                block_col[on] = np.floor(np.floor(left[on] / cols) / side)
        blocks = np.where(block_row % 2 == 1, -block_col, block_col)  # odd block rows right to left
        sweep = np.where(band % 2 == 1, -x, x)  # odd bands right to left
        return np.lexsort((top, sweep, band, blocks, block_row, self._level_of, self._image_of))

    def take(self, indices: np.ndarray | list[int] | None = None) -> np.ndarray:
        """The tiles at ``indices`` (all when ``None``) as ``(k, tile_px, tile_px, 3)``, cut in that order.

        Reading many tiles at once is faster than one by one: windows of the same size are resampled
        together. Embedding asks for whole batches this way.
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = self._scanned(idx)
        if self.colour_norm is not None and len(idx):
            self._normalise_colour(idx, out)
        return out

    def _scanned(self, idx: np.ndarray) -> np.ndarray:
        """The tiles of spots ``idx`` as scanned (no colour normalisation), cut :data:`_TAKE_BATCH` at a time."""
        out = np.empty((len(idx), self.tile_px, self.tile_px, 3), np.uint8)
        for start in range(0, len(idx), _TAKE_BATCH):
            self._cut(idx[start : start + _TAKE_BATCH], out[start : start + _TAKE_BATCH])
        return out


def extract_tiles(
    sdata: SpatialData,
    *,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    table_key: str = TABLE_KEY,
    spots: list[str] | None = None,
    spot_diameter_um: float | None = None,
    colour_norm: str | None = None,
) -> np.ndarray:
    """Cut tiles of ``tile_um`` µm around spots, resampled to ``tile_px`` pixels.

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table annotating them.
    tile_um
        Side of the square tile in micrometres.
    tile_px
        Side of the returned tiles in pixels.
    table_key
        Table whose rows are the spots.
    spots
        ``obs_names`` of the spots to cut; all spots when ``None``.
    spot_diameter_um
        Physical spot diameter when the table does not record it.
    colour_norm
        ``None`` or ``"section"``: see :class:`SpotTiles` (statistics over all of the image's spots, also
        when ``spots`` picks a few).

    Returns
    -------
    ``uint8`` array ``(n_spots, tile_px, tile_px, 3)`` in the order of ``spots`` (or of the table).

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> cs.pp.extract_tiles(sdata, tile_um=100, tile_px=16).shape
    (16, 16, 16, 3)

    """
    tiles = SpotTiles(
        sdata,
        tile_um=tile_um,
        tile_px=tile_px,
        table_key=table_key,
        spot_diameter_um=spot_diameter_um,
        colour_norm=colour_norm,
    )
    if spots is None:
        return tiles.take()
    pos = {name: i for i, name in enumerate(tiles.obs_names)}
    unknown = [s for s in spots if s not in pos]
    if unknown:
        raise KeyError(f"Spots {unknown[:5]} are not in table {table_key!r}.")
    return tiles.take([pos[s] for s in spots])


def _block_side(cache_chunks: int) -> int:
    """The largest ``k`` with ``(k + 1)(k + 2) <= cache_chunks``: a block, its right and lower neighbours.

    Examples
    --------
    >>> _block_side(42), _block_side(12), _block_side(3)
    (5, 2, 1)

    """
    k = int((np.sqrt(1 + 4 * max(cache_chunks, 0)) - 1) / 2) - 1
    return max(1, k)
