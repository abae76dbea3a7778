"""The head's penalty choice: spatial CV folds and ridge over them, on data with a known answer."""

import numpy as np
import pytest

from comtip_sc.tl._ridge import RIDGE_ALPHAS, ridge_cv, spatial_folds


def _grid(n_rows, n_cols, scale=1.0, offset=0.0):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return np.column_stack([c.ravel(), r.ravel()]) * scale + offset


def test_spatial_folds_are_contiguous_blocks_within_each_section():
    # Two sections in different units (pixels of different images): blocks are made per section.
    a, b = _grid(10, 10), _grid(8, 12, scale=290.0, offset=5000.0)
    centres = np.vstack([a, b])
    sections = ["A"] * len(a) + ["B"] * len(b)
    folds = spatial_folds(centres, sections, n_blocks=4)
    for rows, xy in ((slice(0, len(a)), a), (slice(len(a), None), b)):
        f = folds[rows]
        assert sorted(np.unique(f)) == [0, 1, 2, 3]
        # Contiguous: a block's spots are nearer its own centre than any other block's centre.
        means = np.stack([xy[f == k].mean(0) for k in range(4)])
        nearest = np.argmin(((xy[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        assert (nearest == f).all()
    # A section with fewer spots than blocks gets one block per spot.
    few = spatial_folds(np.vstack([a, [[0.0, 0.0], [1.0, 1.0]]]), ["A"] * len(a) + ["C", "C"], 4)
    assert sorted(np.unique(few[-2:])) == [0, 1]


def test_spatial_folds_reject_bad_input():
    with pytest.raises(ValueError, match="n_blocks"):
        spatial_folds(_grid(3, 3), ["s"] * 9, n_blocks=1)
    with pytest.raises(ValueError, match=r"\(n_spots, 2\)"):
        spatial_folds(np.zeros((9, 3)), ["s"] * 9)


def _smooth(rng, xy, n, length):
    """``n`` random fields over the spots, smooth over ``length`` grid units (spatially autocorrelated)."""
    centres = rng.uniform(xy.min(0), xy.max(0), size=(40, 2))
    basis = np.exp(-((xy[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * length**2))
    return basis @ rng.normal(size=(40, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_cv_penalises_features_that_only_track_neighbours(seed):
    # The targets are smooth in space and unrelated to the features, except that the features are smooth
    # too: a held-out spot's neighbours carry the same feature values and targets, so leave-one-spot-out
    # rewards fitting them, and leaving out a whole block does not.
    rng = np.random.default_rng(seed)
    xy = _grid(20, 20)
    x = _smooth(rng, xy, 30, 2.0) + 0.05 * rng.normal(size=(400, 30))
    y = _smooth(rng, xy, 5, 2.0) + 0.05 * rng.normal(size=(400, 5))
    loo = ridge_cv(x, y).alpha_
    blocked = ridge_cv(x, y, spatial_folds(xy, ["s"] * len(xy))).alpha_
    assert loo < 1.0
    assert blocked > 10 * loo
    assert blocked in RIDGE_ALPHAS


def test_ridge_cv_falls_back_to_leave_one_out():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    loo = ridge_cv(x, y).alpha_
    assert ridge_cv(x, y, np.zeros(30, int)).alpha_ == loo
    with pytest.raises(ValueError, match="folds has 29"):
        ridge_cv(x, y, np.arange(29) % 2)
