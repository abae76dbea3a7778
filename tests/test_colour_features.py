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


def test_colour_stats_match_a_per_tile_loop(cf):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    tiles[1] = 40  # a flat tile: zero s.d., one full bin per channel
    f = cf.colour_stats(tiles)
    assert f.shape == (5, 54) and f.dtype == np.float32
    for i, t in enumerate(tiles):
        px = t.reshape(-1, 3).astype(float)
        hist = [np.histogram(px[:, c], bins=16, range=(0, 256))[0] / len(px) for c in range(3)]
        want = np.concatenate([px.mean(0) / 255, px.std(0) / 255, *hist])
        np.testing.assert_allclose(f[i], want, rtol=1e-5, atol=1e-5)
    assert f[1, 3:6].max() < 1e-6 and f[1, 6 + 40 // 16] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        cf.colour_stats(np.zeros((2, 4, 4, 3), np.float32))


def test_neighbour_average_within_sections(cf):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (60, 2))
    pred = rng.normal(size=(60, 3))
    out = cf.neighbour_average(pred, xy, ["a"] * 60, k=4)
    # Brute force: the 4 nearest spots, the spot itself included (random positions: no ties).
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    near = np.argsort(d, axis=1)[:, :4]
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
    with pytest.raises(ValueError, match="centres must be"):
        cf.neighbour_average(pred, xy[:10], ["a"] * 60)
