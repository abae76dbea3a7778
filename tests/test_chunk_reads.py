"""Reading image windows from decoded chunks, and cutting tiles a batch at a time."""

import dask.array as da
import numpy as np
import pytest
import zarr
from torch.utils.data import DataLoader

import comtip_sc as cs
from comtip_sc.model._inference import TileItems, stack_tiles
from comtip_sc.pp import _chunk_cache
from comtip_sc.pp._chunk_cache import ChunkCache
from comtip_sc.pp._image_levels import resample_uint8


def _channels_last(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(block, 0, -1))


@pytest.fixture(scope="module")
def zarr_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "image.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=(3, 300, 260), chunks=(3, 64, 64), dtype="uint8")
    arr[:] = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)
    return path


@pytest.mark.parametrize("layout", ["graph", "split_channels", "too_many_chunks"])
def test_windows_from_cached_chunks_equal_dask_slices(zarr_image, layout, monkeypatch):
    # A small image's chunks come from its task graph built once; channels stored in several chunks, or
    # more chunks than that graph may hold, go through dask slicing. Every way gives dask's own pixels.
    image = da.from_zarr(str(zarr_image))
    if layout == "split_channels":
        image = image.rechunk((1, 64, 64))
    if layout == "too_many_chunks":
        monkeypatch.setattr(_chunk_cache, "GRAPH_CHUNKS_MAX", 4)
    cache = ChunkCache()
    rng = np.random.default_rng(1)
    for _ in range(12):
        y0, x0 = int(rng.integers(0, 200)), int(rng.integers(0, 160))
        h, w = int(rng.integers(1, 100)), int(rng.integers(1, 100))
        out = np.empty((h, w, 3), np.uint8)
        cache.fill("img", image, _channels_last, out, y0, x0)
        np.testing.assert_array_equal(out, _channels_last(image[:, y0 : y0 + h, x0 : x0 + w].compute()))
    built = cache._layouts["img"]
    assert (built.tasks is not None) == (layout == "graph")
    assert 0 < cache.decoded <= 5 * 5  # each of the 5 x 5 chunks decoded at most once (all fit the cache)


def test_resampling_a_stack_equals_resampling_each_window():
    rng = np.random.default_rng(2)
    windows = rng.integers(0, 255, (5, 90, 90, 3), dtype=np.uint8)
    stacked = resample_uint8(windows, 32)
    assert stacked.shape == (5, 32, 32, 3)
    for window, tile in zip(windows, stacked, strict=True):
        np.testing.assert_array_equal(tile, resample_uint8(window, 32))


@pytest.mark.parametrize("colour_norm", [None, "section"])
def test_a_batch_of_tiles_equals_the_tiles_one_by_one(colour_norm):
    # Spots read at two pyramid levels: 150 px windows at full resolution go through torch together,
    # 75 px windows of the coarser level (under 2x downsampling to 48 px) through PIL one by one; the
    # batch puts every tile back at its spot.
    toy = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=1)
    tiles = cs.pp.SpotTiles(toy, tile_um=150, tile_px=48, colour_norm=colour_norm)
    tiles._level_of[::2] = 0
    tiles._level_of[1::2] = 1
    order = np.random.default_rng(3).permutation(len(tiles))
    batch = tiles.take(order)
    assert batch.shape == (len(tiles), 48, 48, 3) and batch.dtype == np.uint8
    one_by_one = np.stack([tiles[int(i)] for i in order])
    np.testing.assert_array_equal(batch, one_by_one)
    assert not np.array_equal(batch[order % 2 == 0][0], batch[order % 2 == 1][0])
    assert tiles.take([]).shape == (0, 48, 48, 3)


def test_a_loader_hands_over_the_tiles_the_reader_takes():
    toy = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)
    tiles = cs.pp.SpotTiles(toy, tile_um=100, tile_px=32)
    items = TileItems(tiles)
    got = items.__getitems__([3, 1, 2])
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, tiles.take([3, 1, 2]))
    loader = DataLoader(items, batch_size=5, collate_fn=stack_tiles)
    images = np.concatenate([b["image"].numpy() for b in loader])
    np.testing.assert_array_equal(images, tiles.take())
    # A plain array of tiles is indexed directly.
    array_items = TileItems(tiles.take())
    np.testing.assert_array_equal(array_items.__getitems__([2, 0]), tiles.take([2, 0]))
