"""The simple colour bar: colour statistics of the tiles, and ridges on them chosen by spatial-block CV."""

import numpy as np
import pytest

import comtip_sc as cs
from comtip_sc._tables import normalized_values

GENES = ["KRT19", "COL1A1", "PTPRC", "ADIPOQ"]


def _section(seed: int, sample: str):
    return cs.datasets.toy_tissue(n_rows=7, n_cols=7, n_genes=30, seed=seed, sample_id=sample)


def test_colour_stats_of_a_reader_equal_those_of_its_array():
    sdata = _section(0, "a")
    tiles = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=16)
    np.testing.assert_array_equal(cs.pp.colour_stats(tiles, chunk=5), cs.pp.colour_stats(tiles.take()))
    feats = cs.pp.colour_features(sdata, tile_um=100, tile_px=16)
    wide = cs.pp.colour_stats(cs.pp.SpotTiles(sdata, tile_um=300, tile_px=16).take())
    np.testing.assert_array_equal(feats[:, 54:], wide)
    # Each channel's histogram sums to 1.
    np.testing.assert_allclose(feats[:, 6:54].reshape(-1, 3, 16).sum(-1), 1.0, rtol=1e-5)


def test_colour_bar_predicts_unseen_sections_and_chooses_by_training_cv():
    train = [_section(0, "a"), _section(1, "b")]
    test = _section(2, "c")
    before = test.tables["table"].copy()
    bar = cs.tl.colour_bar(train, test, genes=GENES, tile_um=100, tile_px=16)
    # Four variants, each with a CV score and a penalty; the chosen one has the best CV score.
    assert len(bar.fit.cv_pcc) == 4 and set(bar.fit.alphas) == set(bar.fit.cv_pcc)
    assert bar.variant == max(bar.fit.cv_pcc, key=bar.fit.cv_pcc.get)
    (pred,) = bar.predictions
    assert pred.shape == (49, len(GENES)) and list(pred.columns) == GENES
    assert pred.index.equals(test.tables["table"].obs_names)
    np.testing.assert_array_equal(pred.to_numpy(), bar.fit.predictions[bar.variant])
    # The toy tissue's colour shows its tissue types: the markers are predicted well on a new section.
    r = cs.tl.pearson_per_gene(normalized_values(test.tables["table"], GENES), pred.to_numpy())
    assert r.mean() > 0.5
    # Nothing was written into the test object.
    assert (
        set(test.tables["table"].obsm) == set(before.obsm)
        and test.tables["table"].uns.keys() == before.uns.keys()
    )
    smoothed = cs.tl.colour_bar(train, test, genes=GENES, tile_um=100, tile_px=16, smooth=4)
    assert smoothed.variant == bar.variant
    assert not np.allclose(smoothed.predictions[0].to_numpy(), pred.to_numpy())


def test_colour_bar_predict_checks_its_inputs():
    x = np.zeros((10, 108))
    with pytest.raises(ValueError, match="colour features"):
        cs.tl.colour_bar_predict(x[:, :54], np.zeros((10, 2)), ["a"] * 10, np.arange(10) % 2, x, ["b"] * 10)
    with pytest.raises(ValueError, match="two CV folds"):
        cs.tl.colour_bar_predict(x, np.zeros((10, 2)), ["a"] * 10, np.zeros(10), x, ["b"] * 10)
