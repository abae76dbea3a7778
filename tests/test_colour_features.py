import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).parents[1] / "benchmarks" / "colour_features.py"


@pytest.fixture(scope="module")
def cf():
    spec = importlib.util.spec_from_file_location("colour_features", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_colour_features_match_a_per_tile_loop(cf):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    tiles[1] = 40  # a flat tile: zero s.d., one full bin per channel
    f = cf.colour_features(tiles)
    assert f.shape == (5, 54) and f.dtype == np.float32 and len(cf.feature_names()) == 54
    for i, t in enumerate(tiles):
        px = t.reshape(-1, 3).astype(float)
        hist = [np.histogram(px[:, c], bins=16, range=(0, 256))[0] / len(px) for c in range(3)]
        want = np.concatenate([px.mean(0), px.std(0), *hist])
        np.testing.assert_allclose(f[i], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[:, 6:].reshape(5, 3, 16).sum(-1), 1.0, rtol=1e-6)
    assert f[1, 3:6].max() == 0 and f[1, 6 + 40 // 16] == 1.0


def test_colour_features_chunks_and_empty_input(cf, monkeypatch):
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    whole = cf.colour_features(tiles)
    monkeypatch.setattr(cf, "_CHUNK", 3)  # 3 + 3 + 1 tiles: the chunk edges must not shift bins
    np.testing.assert_array_equal(cf.colour_features(tiles), whole)
    assert cf.colour_features(tiles[:0]).shape == (0, 54)


def test_colour_features_refuses_bad_input(cf):
    with pytest.raises(ValueError, match="uint8"):
        cf.colour_features(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        cf.colour_features(np.zeros((2, 4, 4), np.uint8))


def test_neighbour_average_within_sections(cf):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (60, 2))
    pred = rng.normal(size=(60, 3))
    out = cf.neighbour_average(pred, xy, ["a"] * 60, k=4)
    # Brute force: the spot and its 4 nearest by Euclidean distance (random positions: no ties).
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    near = np.argsort(d, axis=1)[:, :5]
    np.testing.assert_allclose(out, pred[near].mean(1))
    assert out.var(0).sum() < pred.var(0).sum()
    # Same coordinates in two sections, values far apart: nothing crosses over.
    both = cf.neighbour_average(
        np.r_[np.zeros((60, 1)), np.ones((60, 1))], np.r_[xy, xy], ["a"] * 60 + ["b"] * 60, k=6
    )
    np.testing.assert_array_equal(both.ravel(), np.r_[np.zeros(60), np.ones(60)])
    # k larger than a section: the mean over the whole section.
    np.testing.assert_allclose(
        cf.neighbour_average(pred[:3], xy[:3], ["s"] * 3, k=10), np.tile(pred[:3].mean(0), (3, 1))
    )
    with pytest.raises(ValueError, match="must agree"):
        cf.neighbour_average(pred, xy[:10], ["a"] * 60)
    with pytest.raises(ValueError, match="k must be"):
        cf.neighbour_average(pred, xy, ["a"] * 60, k=0)
