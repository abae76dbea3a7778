import copy

import numpy as np
import pytest
import spatialdata as sd
from sklearn.neighbors import NearestNeighbors

import comtip_sc as cs
from comtip_sc._constants import PRED_KEY
from comtip_sc._predictions import get_predictions
from comtip_sc._sections import resolve_sections, spot_layout
from comtip_sc.pp._smooth import smooth_over_neighbours

GENES = ["KRT19", "COL1A1", "PTPRC"]


def _field(n=400, seed=0):
    """Spots at random positions, a smooth truth over them and a noisy read-out of it."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 20, (n, 2))
    truth = np.column_stack([np.sin(xy[:, 0] / 5), np.cos(xy[:, 1] / 4)])
    return xy, truth, truth + rng.normal(0, 0.5, truth.shape)


def test_smoothing_is_the_mean_over_the_k_nearest_and_reduces_noise():
    xy, truth, noisy = _field()
    k = 6
    smoothed = smooth_over_neighbours(noisy, xy, ["s"] * len(xy), k)
    # Against an independent k-NN (positions are random, so there are no ties): self + k neighbours.
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    np.testing.assert_allclose(smoothed, noisy[idx].mean(1), rtol=1e-5, atol=1e-6)
    # The noise shrinks and the prediction moves towards the smooth truth.
    assert smoothed.var(0).sum() < noisy.var(0).sum()
    assert ((smoothed - truth) ** 2).mean() < ((noisy - truth) ** 2).mean()


def test_smoothing_never_mixes_sections():
    xy, _, _ = _field(n=100)
    # Two sections on the same coordinates, with values far apart.
    centres = np.vstack([xy, xy + 0.01])
    values = np.concatenate([np.zeros((100, 1)), np.full((100, 1), 100.0)])
    sections = ["a"] * 100 + ["b"] * 100
    out = smooth_over_neighbours(values, centres, sections, 8)
    np.testing.assert_array_equal(out[:100], 0.0)
    np.testing.assert_array_equal(out[100:], 100.0)
    # A section smaller than k averages over its other spots; a lone spot keeps its value.
    tiny = smooth_over_neighbours(np.array([[1.0], [3.0], [7.0]]), xy[:3], ["x", "x", "y"], 5)
    np.testing.assert_allclose(tiny.ravel(), [2.0, 2.0, 7.0])


def test_smoothing_refuses_bad_input():
    xy, _, noisy = _field(n=10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive int"):
            smooth_over_neighbours(noisy, xy, ["s"] * 10, bad)
    with pytest.raises(ValueError, match="must agree"):
        smooth_over_neighbours(noisy, xy[:5], ["s"] * 10, 3)
    with pytest.raises(ValueError, match="no finite centre"):
        smooth_over_neighbours(noisy, np.full_like(xy, np.nan), ["s"] * 10, 3)


def _two_sections():
    parts = [
        cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=s, sample_id=n)
        for s, n in ((0, "toy"), (5, "other"))
    ]
    both = sd.concatenate(parts, concatenate_tables=True)
    # spatialdata's concatenate drops uns; the readers' per-section records are merged back by hand.
    both.tables["table"].uns["comtip"] = {
        key: {s: v for p in parts for s, v in p.tables["table"].uns["comtip"][key].items()}
        for key in ("spot_diameter_um", "um_per_px")
    }
    return both


@pytest.mark.parametrize("method", ["retrieval", "zero_shot"])
def test_predict_smooth_within_sections_and_records_it(tiny_model, method):
    sdata = _two_sections()
    table = sdata.tables["table"]
    before = (
        table.X.copy(),
        table.obs.copy(),
        sorted(table.layers),
        sorted(table.obsm),
        copy.deepcopy(dict(table.uns)),
    )
    plain = cs.tl.comtip_predict(sdata, tiny_model, method=method, genes=GENES, copy=True)
    smoothed = cs.tl.comtip_predict(sdata, tiny_model, method=method, genes=GENES, smooth=4, copy=True)
    # The user's object is untouched by copy=True calls.
    assert (table.X != before[0]).nnz == 0 and table.obs.equals(before[1])
    assert (sorted(table.layers), sorted(table.obsm)) == before[2:4] and dict(table.uns) == before[4]
    t_plain, t_smooth = plain.tables["table"], smoothed.tables["table"]
    p, s = (
        get_predictions(t_plain, PRED_KEY)[GENES].to_numpy(),
        get_predictions(t_smooth, PRED_KEY)[GENES].to_numpy(),
    )
    names, centres = spot_layout(resolve_sections(sdata), table.n_obs)
    assert len(set(names)) == 2
    np.testing.assert_allclose(s, smooth_over_neighbours(p, centres, names, 4), rtol=1e-5, atol=1e-6)
    assert s.var(0).sum() < p.var(0).sum()
    # Only the documented outputs differ between the two calls: the predictions and the record.
    assert list(get_predictions(t_smooth, PRED_KEY).columns) == GENES
    assert sorted(t_smooth.layers) == sorted(t_plain.layers) and sorted(t_smooth.obsm) == sorted(t_plain.obsm)
    rec_plain, rec_smooth = (t.uns["comtip"]["predict"][PRED_KEY] for t in (t_plain, t_smooth))
    assert rec_plain["smooth"] is None and rec_smooth["smooth"] == 4
    assert {k: v for k, v in rec_plain.items() if k != "smooth"} == {
        k: v for k, v in rec_smooth.items() if k != "smooth"
    }


def test_predict_rejects_bad_smooth(tiny_model):
    sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=30, seed=5)
    with pytest.raises(ValueError, match="smooth must be None or a positive int"):
        cs.tl.comtip_predict(sdata, tiny_model, method="zero_shot", smooth=0)
