"""Property-based tests (hypothesis): tiling geometry and the evaluation metrics."""

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from spatialdata.models import Image2DModel
from spatialdata.transformations import Scale, Sequence, get_transformation

import comtip_sc as cs
from comtip_sc.tl._evaluate import pearson_per_gene

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def toy():
    return cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)


def _moved(sdata, x, y):
    """``sdata`` with its first spot moved to (x, y) in the shapes' own coordinates."""
    shapes = sdata.shapes["toy_spots"].copy()
    shapes.loc[shapes.index[0], "geometry"] = shapely.Point(x, y)
    out = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)
    out.shapes["toy_spots"] = shapes
    return out


@SETTINGS
@given(
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
    tile_um=st.floats(20.0, 300.0),
    tile_px=st.integers(4, 40),
)
def test_every_spot_inside_the_image_gives_a_tile_of_the_requested_shape(toy, fx, fy, tile_um, tile_px):
    height, width = toy.images["toy_image"]["scale0"]["image"].shape[1:]
    sdata = _moved(toy, fx * (width - 1), fy * (height - 1))  # the toy's coordinates are image pixels
    tiles = cs.pp.SpotTiles(sdata, tile_um=tile_um, tile_px=tile_px)
    tile = tiles[0]
    assert tile.shape == (tile_px, tile_px, 3) and tile.dtype == np.uint8


@pytest.fixture(scope="module")
def halved(toy):
    """The toy section with its image downsampled 2× and a scale transformation that keeps it in place."""
    el = toy.images["toy_image"]
    rgb = np.moveaxis(np.asarray(el["scale0"]["image"].values), 0, -1)
    small = np.asarray(Image.fromarray(rgb).reduce(2))  # 2×2 box average
    transforms = {
        cs_name: Sequence([Scale([2.0, 2.0], axes=("x", "y")), t])
        for cs_name, t in get_transformation(el, get_all=True).items()
    }
    out = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)
    out.images["toy_image"] = Image2DModel.parse(
        np.moveaxis(small, -1, 0), dims=("c", "y", "x"), transformations=transforms
    )
    return out


@SETTINGS
@given(spot=st.integers(0, 15), tile_um=st.floats(60.0, 250.0))
def test_physical_field_is_kept_when_the_image_is_rescaled(toy, halved, spot, tile_um):
    # Tiles of tile_um µm cover ≥ 60 px of the full image: resampled to 16 px both copies see the same field.
    full = cs.pp.SpotTiles(toy, tile_um=tile_um, tile_px=16)[spot].astype(float)
    half = cs.pp.SpotTiles(halved, tile_um=tile_um, tile_px=16)[spot].astype(float)
    np.testing.assert_allclose(cs.pp.SpotTiles(halved, tile_um=tile_um, tile_px=16).boxes_px[spot] * 2,
                               cs.pp.SpotTiles(toy, tile_um=tile_um, tile_px=16).boxes_px[spot], atol=1e-6)  # fmt: skip
    # Same field: the mean colour agrees closely and the pixels agree up to resampling blur.
    assert np.abs(full.mean((0, 1)) - half.mean((0, 1))).max() < 4
    assert np.abs(full - half).mean() < 12


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
matrices = st.integers(2, 12).flatmap(
    lambda n: st.integers(1, 5).flatmap(
        lambda g: st.tuples(
            arrays(np.float64, (n, g), elements=finite), arrays(np.float64, (n, g), elements=finite)
        )
    )
)


@SETTINGS
@given(matrices)
def test_pcc_is_symmetric_bounded_and_never_nan(pair):
    a, b = pair
    r = pearson_per_gene(a, b)
    assert np.isfinite(r).all() and (np.abs(r) <= 1 + 1e-9).all()
    np.testing.assert_allclose(r, pearson_per_gene(b, a), atol=1e-12)


@SETTINGS
@given(matrices, st.integers(0, 4), finite)
def test_constant_genes_score_zero(pair, col, value):
    a, b = pair
    col = col % a.shape[1]
    a = a.copy()
    a[:, col] = value
    assert pearson_per_gene(a, b)[col] == 0.0
    assert pearson_per_gene(b, a)[col] == 0.0


@SETTINGS
@given(
    cy=st.integers(1, 9),
    cx=st.integers(1, 9),
    box=st.tuples(st.integers(0, 29), st.integers(1, 30), st.integers(0, 22), st.integers(1, 23)),
    max_chunks=st.integers(1, 6),
)
def test_chunk_cache_windows_equal_direct_slices(cy, cx, box, max_chunks) -> None:
    import dask.array as da

    from comtip_sc.pp._chunk_cache import ChunkCache

    img = np.random.default_rng(0).integers(0, 256, (3, 30, 23), dtype=np.uint8)
    arr = da.from_array(img, chunks=(3, cy, cx))
    y0, y1 = sorted((box[0], box[1]))
    x0, x1 = sorted((box[2], box[3]))
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    # A store holding a few chunks at most: windows are still exact while chunks are evicted.
    cache = ChunkCache(max_bytes=max(4, max_chunks) * 3 * cy * cx)
    # Two preparations of the same image, kept under their own keys: channels last, and one channel doubled.
    preps = {"rgb": lambda b: np.moveaxis(b, 0, -1), "g2": lambda b: b[1] * 2}
    expected = {"rgb": img[:, y0:y1, x0:x1].transpose(1, 2, 0), "g2": img[1, y0:y1, x0:x1] * 2}
    for name, prepare in preps.items():
        out = np.zeros(expected[name].shape, np.uint8)
        cache.fill(("i", name), arr, prepare, out, y0, x0)
        np.testing.assert_array_equal(out, expected[name])
    assert cache._bytes <= cache.max_bytes or len(cache) == 1
    # Chunks larger than a quarter of the store are not kept: the window is read through dask.
    small = ChunkCache(max_bytes=3 * cy * cx)
    out = np.zeros(expected["rgb"].shape, np.uint8)
    small.fill("i", arr, preps["rgb"], out, y0, x0)
    np.testing.assert_array_equal(out, expected["rgb"])
    assert len(small) == 0


def test_tile_reader_drops_its_chunks_when_pickled(toy) -> None:
    import pickle

    tiles = cs.pp.SpotTiles(toy, tile_um=100, tile_px=16)
    first = tiles[0]
    assert len(tiles._chunk_cache) > 0
    copy = pickle.loads(pickle.dumps(tiles))
    assert len(copy._chunk_cache) == 0
    np.testing.assert_array_equal(copy[0], first)
