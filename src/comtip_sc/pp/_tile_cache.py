"""An on-disk zarr cache of spot tiles, so that later epochs read small arrays instead of slides."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from spatialdata import SpatialData
from torch.utils.data import DataLoader, Dataset

from .._atomic import atomic_path
from .._constants import DEFAULT_TILE_PX, DEFAULT_TILE_UM, TABLE_KEY
from .._logging import tqdm
from ._tiles import SpotTiles

logger = logging.getLogger(__name__)

#: Tiles per zarr chunk: small enough for cheap random access, large enough to keep file counts low.
_CHUNK = 16


#: Caches up to this size are read whole into memory by default (``in_memory=None``); larger ones are read
#: chunk by chunk. Each data-loader worker of each process holds its own copy, so the bound is kept small.
#: Measured on 2 CPU cores (``benchmarks/throughput.py``, stage e): random reads from memory ran ~80x (tiles)
#: and ~60x (trunk tokens) more items/s than through the chunk LRU, whose ~3,000 tiles/s and ~400 token
#: items/s cost ~10 ms and ~80 ms per batch of 32 (a ``cpu``-preset step on cached tokens took ~500 ms):
#: worth it for small caches, not worth a copy of a large cache in every worker.
IN_MEMORY_MAX_BYTES = 256 * 1024**2

#: Decoded zarr chunks a lazy reader keeps per process (16 items each; ~6 MiB for 128-px tiles).
CHUNK_LRU = 8


class LazyZarrArray:
    """One array of a zarr group, opened lazily in each process; read whole into memory only when small.

    Instances pickle cheaply into data-loader workers (the opened array and decoded chunks are dropped from
    the pickle). Read from disk, the last :data:`CHUNK_LRU` decoded zarr chunks are kept, so memory stays
    bounded by a few chunks, not by the cache, and consecutive items of one chunk are decoded once.
    ``in_memory``: ``True`` always loads the whole array, ``False`` always reads chunks from disk, ``None``
    loads it when it is at most ``IN_MEMORY_MAX_BYTES``.
    """

    path: str
    in_memory: bool | None = None
    _array = None
    _lru: OrderedDict | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        state["_lru"] = None
        return state

    def _load(self, name: str):
        if self._array is None:
            arr = zarr.open_group(self.path, mode="r")[name]
            load = arr.nbytes <= IN_MEMORY_MAX_BYTES if self.in_memory is None else self.in_memory
            self._array = arr[:] if load else arr
            self._lru = OrderedDict()
        return self._array

    def _item(self, name: str, i: int) -> np.ndarray:
        """Row ``i`` of array ``name`` (a view into memory or into a cached decoded chunk)."""
        arr = self._load(name)
        if isinstance(arr, np.ndarray):
            return arr[i]
        if i < 0:
            i += arr.shape[0]
        if not 0 <= i < arr.shape[0]:
            raise IndexError(f"index {i} is out of range for {arr.shape[0]} items of {self.path}.")
        step = arr.chunks[0]
        c = i // step
        chunk = self._lru.get(c)
        if chunk is None:
            chunk = arr[c * step : (c + 1) * step]
            self._lru[c] = chunk
            if len(self._lru) > CHUNK_LRU:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(c)
        return chunk[i - c * step]


class CachedTiles(LazyZarrArray):
    """Tiles read back from a cache written by :func:`~comtip_sc.pp.cache_tiles`; indexable like :class:`~comtip_sc.pp.SpotTiles`.

    The zarr store is opened lazily in each process, so instances pickle cheaply into data-loader
    workers. By default tiles are read from disk a zarr chunk (16 tiles) at a time through a small
    per-process LRU of decoded chunks (``LazyZarrArray``), so a cache larger than memory trains with
    memory bounded by the batch; a cache up to ``IN_MEMORY_MAX_BYTES`` (256 MiB) is read whole into
    memory at the first access instead, where reads are cheapest.

    Parameters
    ----------
    path
        Folder of the zarr cache.
    in_memory
        ``True``: always load the whole cache into memory (in every process that reads it); ``False``:
        always read chunks from disk; ``None`` (default): load it when it is at most
        ``IN_MEMORY_MAX_BYTES``.

    Examples
    --------
    >>> import comtip_sc as cs, tempfile, os
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiles.zarr")
    >>> tiles = cs.pp.cache_tiles(sdata, path, tile_um=100, tile_px=16)
    >>> tiles[0].shape
    (16, 16, 3)

    """

    def __init__(self, path: str | os.PathLike, in_memory: bool | None = None) -> None:
        self.path = str(path)
        self.in_memory = in_memory
        group = zarr.open_group(self.path, mode="r")
        self.tile_um = float(group.attrs["tile_um"])
        self.tile_px = int(group.attrs["tile_px"])
        # Caches written before colour_norm existed hold tiles as scanned.
        self.colour_norm = group.attrs.get("colour_norm")
        self.obs_names = np.asarray(group.attrs["obs_names"], dtype=str)
        self._array = None

    def __len__(self) -> int:
        return len(self.obs_names)

    def _tiles(self):
        return self._load("tiles")

    def __getitem__(self, i: int) -> np.ndarray:
        # A copy: callers may modify the tile, and a cached array or chunk must not change under them.
        return np.array(self._item("tiles", int(i)))

    def take(self, indices=None) -> np.ndarray:
        """Stack the tiles at ``indices`` (all when ``None``)."""
        tiles = self._tiles()
        if indices is None:
            return np.array(tiles[:])
        idx = np.asarray(indices, dtype=int)
        if isinstance(tiles, np.ndarray):
            return tiles[idx]
        return np.asarray(tiles.get_orthogonal_selection((idx,)))


class _Chunks(Dataset):
    """Item ``c``: the tiles of cache chunk ``c`` (``_CHUNK`` spots), stacked."""

    def __init__(self, source: SpotTiles) -> None:
        self.source = source

    def __len__(self) -> int:
        return -(-len(self.source) // _CHUNK)

    def __getitem__(self, c: int) -> np.ndarray:
        return self.source.take(range(c * _CHUNK, min((c + 1) * _CHUNK, len(self.source))))


def _as_is(block: np.ndarray) -> np.ndarray:
    return block


def _workers(num_workers: int | None, n: int) -> int:
    """Cutting processes: as asked, or one per available core (at most 8) when there are 4+ chunks."""
    if num_workers is not None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        return int(num_workers)
    if n < 4 * _CHUNK:  # starting processes costs more than cutting a few chunks
        return 0
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _cut_chunks(source: SpotTiles, num_workers: int) -> Iterable[np.ndarray]:
    """The cache's chunks in order, cut here or by ``num_workers`` data-loader processes."""
    chunks = _Chunks(source)
    if num_workers == 0:
        return (chunks[c] for c in range(len(chunks)))
    # Colour statistics once here, not once per worker (they are read from up to 256 tiles per image).
    source.precompute_colour_stats()
    # batch_size=None: each item is already a chunk; _as_is keeps it a numpy array (no tensor round trip).
    return DataLoader(chunks, batch_size=None, num_workers=num_workers, collate_fn=_as_is)


#: Tiles hashed into a cache's fingerprint of its source (evenly spaced over the spots).
_FINGERPRINT_TILES = 4


def _fingerprint(source: SpotTiles) -> str:
    """Hash of what the tiles are cut from: images, spot boxes and a few tiles' pixels.

    Spot ids alone do not tell a re-scanned image, moved spots or another section with the same ids.
    """
    h = hashlib.sha1()
    for name, img in zip(source.image_names, source._images, strict=True):
        h.update(f"{name}:{tuple(img.arrays[0].shape)}".encode())
    h.update(np.round(source.boxes_px, 2).tobytes())
    for i in (
        np.unique(np.linspace(0, len(source) - 1, _FINGERPRINT_TILES).astype(int)) if len(source) else []
    ):
        h.update(source[int(i)].tobytes())
    return h.hexdigest()


def cache_tiles(
    sdata: SpatialData,
    path: str | os.PathLike,
    *,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    table_key: str = TABLE_KEY,
    spot_diameter_um: float | None = None,
    colour_norm: str | None = None,
    overwrite: bool = False,
    num_workers: int | None = None,
) -> CachedTiles:
    """Cut every spot's tile once and store them in a zarr array at ``path``.

    An existing cache with the same ``tile_um``, ``tile_px``, colour normalisation, spots and source (the
    images, the spot positions and a few tiles' pixels) is reused as it is; one built from other data raises.
    The tiles do not depend on the backbone: a cache serves any model with the same ``tile_px``. The cache
    is written to a temporary folder beside ``path`` and renamed into place, so an interrupted run
    never leaves a half-written cache behind.

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table annotating them.
    path
        Folder of the zarr cache (created).
    tile_um, tile_px
        Physical tile side in µm and its resampled side in pixels.
    table_key
        Table whose rows are the spots.
    spot_diameter_um
        Physical spot diameter when the table does not record it.
    colour_norm
        ``None`` or ``"section"`` (per-image colour standardisation, see :class:`SpotTiles`); recorded
        in the cache and part of its match.
    overwrite
        Rebuild even when a matching cache exists; replace a non-matching one instead of raising.
    num_workers
        Processes that cut tiles in parallel (a :class:`torch.utils.data.DataLoader` over chunks of 16
        tiles, written in order, so the cache is the same whatever the number). ``0``: cut in this process;
        ``None`` (default): one per available CPU core, at most 8, and none for caches of under 4 chunks.

    Returns
    -------
    The cache, opened for reading.

    Examples
    --------
    >>> import comtip_sc as cs, tempfile, os
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> tiles = cs.pp.cache_tiles(sdata, os.path.join(tempfile.mkdtemp(), "t.zarr"), tile_um=100, tile_px=16)
    >>> len(tiles)
    16

    """
    path = Path(path)
    source = SpotTiles(
        sdata,
        tile_um=tile_um,
        tile_px=tile_px,
        table_key=table_key,
        spot_diameter_um=spot_diameter_um,
        colour_norm=colour_norm,
    )
    if path.exists() and not overwrite:
        try:
            cached = CachedTiles(path)
        except Exception as err:
            raise ValueError(f"{path} exists but is not a readable tile cache; pass overwrite=True.") from err
        same = (
            cached.tile_um == float(tile_um)
            and cached.tile_px == int(tile_px)
            and cached.colour_norm == colour_norm
            and np.array_equal(cached.obs_names, source.obs_names)
        )
        recorded = zarr.open_group(str(path), mode="r").attrs.get("source")
        if same and recorded is not None and recorded != _fingerprint(source):
            raise ValueError(
                f"The tile cache at {path} has the same spots and settings but was cut from other data (other "
                "images or spot positions) or by an earlier version's resampling; pass overwrite=True to rebuild it, or use another path."
            )
        if same:
            logger.info("Reusing the tile cache at %s (%d tiles).", path, len(cached))
            return cached
        raise ValueError(
            f"The tile cache at {path} was built for other settings or spots (tile_um={cached.tile_um}, "
            f"tile_px={cached.tile_px}, colour_norm={cached.colour_norm!r}, {len(cached)} spots); pass "
            "overwrite=True to rebuild it."
        )
    # Without overwrite, a cache another process (DDP rank) finished first is kept, never swapped
    # under its readers.
    with atomic_path(path, replace_existing=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        n = len(source)
        arr = group.create_array(
            "tiles", shape=(n, tile_px, tile_px, 3), chunks=(_CHUNK, tile_px, tile_px, 3), dtype="uint8"
        )
        chunks = _cut_chunks(source, _workers(num_workers, n))
        # disable=None: a bar on terminals and notebooks, silence in logs and CI.
        bar = tqdm(chunks, total=-(-n // _CHUNK), desc="Cutting tiles", unit="chunk", disable=None)
        for c, block in enumerate(bar):
            arr[c * _CHUNK : c * _CHUNK + len(block)] = block
        group.attrs.update(
            {
                "tile_um": float(tile_um),
                "tile_px": int(tile_px),
                "colour_norm": colour_norm,
                "obs_names": source.obs_names.tolist(),
                "source": _fingerprint(source),
            }
        )
    logger.info("Cached %d tiles of %g µm at %d px in %s.", n, tile_um, tile_px, path)
    return CachedTiles(path)
