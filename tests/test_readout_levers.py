"""Read-out levers: test-time augmentation of the embedding and the hybrid (embedding + colour) head."""

import copy

import numpy as np
import pytest
import torch

import comtip_sc as cs
from comtip_sc._constants import EMBED_KEY, PRED_KEY
from comtip_sc._predictions import get_predictions
from comtip_sc.model import ComtipModel
from comtip_sc.model._inference import encode_tiles
from comtip_sc.tl._hybrid import with_bank_colour
from comtip_sc.tl._tta import DihedralMean

GENES = ["KRT19", "COL1A1", "PTPRC", "ADIPOQ"]


def _train():
    """The section ``tiny_model`` was trained on (conftest), so its bank's spots are found in it."""
    return cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=0)


def _unseen():
    return cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=7, sample_id="other")


def _encode(model, tiles, tta):
    """Embeddings of a ``(n, H, W, 3)`` tile array, in batches of 7 (the last one partial)."""
    net = DihedralMean(model.network) if tta else model.network
    return encode_tiles(net, tiles, batch_size=7, device=torch.device("cpu"))


# ------------------------------------------------------------------ test-time augmentation
@pytest.fixture(scope="module")
def tiles(tiny_model):
    return tiny_model.tiles(_unseen()).take()


def test_tta_is_the_renormalised_mean_of_the_eight_views(tiny_model, tiles):
    views = []
    for k in range(4):
        turned = np.ascontiguousarray(np.rot90(tiles, k, axes=(1, 2)))
        views += [turned, np.ascontiguousarray(turned[:, :, ::-1])]
    explicit = np.mean([_encode(tiny_model, v, tta=False) for v in views], axis=0)
    explicit /= np.linalg.norm(explicit, axis=1, keepdims=True)
    got = _encode(tiny_model, tiles, tta=True)
    np.testing.assert_allclose(got, explicit, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # The views differ: without augmentation the embedding is another one.
    assert np.abs(got - _encode(tiny_model, tiles, tta=False)).max() > 1e-4


def test_tta_embedding_is_invariant_to_rotating_every_tile(tiny_model, tiles):
    turned = np.ascontiguousarray(np.rot90(tiles, 1, axes=(1, 2)))
    mirrored = np.ascontiguousarray(tiles[:, ::-1])
    base = _encode(tiny_model, tiles, tta=True)
    np.testing.assert_allclose(_encode(tiny_model, turned, tta=True), base, atol=1e-5)
    np.testing.assert_allclose(_encode(tiny_model, mirrored, tta=True), base, atol=1e-5)


def test_embed_and_predict_with_tta(tiny_model):
    sdata = _unseen()
    out = cs.tl.comtip_embed(sdata, tiny_model, tta=True, copy=True)
    table = out.tables["table"]
    assert table.uns["comtip"]["embed"][EMBED_KEY]["tta"] is True
    np.testing.assert_allclose(
        table.obsm[EMBED_KEY], _encode(tiny_model, tiny_model.tiles(sdata).take(), True), atol=1e-5
    )
    pred = cs.tl.comtip_predict(sdata, tiny_model, method="head", genes=GENES, tta=True, copy=True)
    via_rep = cs.tl.comtip_predict(out, tiny_model, method="head", genes=GENES, use_rep=EMBED_KEY, copy=True)
    np.testing.assert_allclose(
        get_predictions(pred.tables["table"], PRED_KEY).to_numpy(),
        get_predictions(via_rep.tables["table"], PRED_KEY).to_numpy(),
        atol=1e-4,
    )
    assert pred.tables["table"].uns["comtip"]["predict"][PRED_KEY]["tta"] is True
    with pytest.raises(ValueError, match="use_rep"):
        cs.tl.comtip_predict(out, tiny_model, method="head", use_rep=EMBED_KEY, tta=True, copy=True)


# ------------------------------------------------------------------ hybrid head
@pytest.fixture(scope="module")
def plain(tiny_model):
    """The model as saved before fit stored colour statistics in the bank."""
    out = copy.copy(tiny_model)
    out.reference = copy.copy(tiny_model.reference)
    out.reference.colour = None
    return out


@pytest.fixture(scope="module")
def coloured(plain):
    return with_bank_colour(plain, [_train()])


def test_bank_colour_comes_from_the_training_sections(tiny_model, plain, coloured):
    assert plain.reference.colour is None  # the model given is left as it was
    # fit stores the same statistics in the bank of the model it returns.
    np.testing.assert_allclose(tiny_model.reference.colour, coloured.reference.colour)
    bank = coloured.reference
    assert bank.colour.shape == (len(bank.embeddings), 108) and np.isfinite(bank.colour).all()
    np.testing.assert_allclose(
        bank.colour,
        cs.pp.colour_features(_train(), tile_um=100, tile_px=tiny_model.tile_px)[
            _train().tables["table"].obs_names.get_indexer(bank.obs_names)
        ],
    )


def test_hybrid_predicts_and_records_its_choices(tiny_model, coloured):
    sdata = _unseen()
    out = cs.tl.comtip_predict(sdata, coloured, method="hybrid", genes=GENES, copy=True)
    table = out.tables["table"]
    pred = get_predictions(table, PRED_KEY)
    assert list(pred.columns) == GENES and pred.shape == (table.n_obs, len(GENES))
    assert np.isfinite(pred.to_numpy()).all() and pred.to_numpy().std(axis=0).min() > 0
    rec = table.uns["comtip"]["predict"][PRED_KEY]
    assert rec["method"] == "hybrid" and rec["colour_weight"] in (0.5, 1.0, 2.0)
    assert rec["head_cv"] == "5 spatial blocks" and len(rec["head_alphas"]) == 1
    # A reference given as data gives the same bank, colour statistics included.
    given = cs.tl.comtip_predict(
        sdata, tiny_model, method="hybrid", genes=GENES, reference=_train(), copy=True
    )
    np.testing.assert_allclose(
        get_predictions(given.tables["table"], PRED_KEY).to_numpy(), pred.to_numpy(), atol=1e-4
    )


def test_hybrid_needs_colour_statistics_of_the_bank(plain):
    with pytest.raises(ValueError, match="colour statistics"):
        cs.tl.comtip_predict(_unseen(), plain, method="hybrid", copy=True)


def test_bank_colour_survives_save_and_older_models_load(plain, coloured, tmp_path):
    coloured.save(tmp_path / "with")
    plain.save(tmp_path / "without")
    np.testing.assert_array_equal(
        ComtipModel.load(tmp_path / "with").reference.colour, coloured.reference.colour
    )
    assert ComtipModel.load(tmp_path / "without").reference.colour is None


def test_bank_subset_keeps_rows_aligned(coloured):
    bank = coloured.reference
    sub = bank.subset(np.arange(len(bank.embeddings)) % 3 == 0)
    idx = np.arange(0, len(bank.embeddings), 3)
    assert sub.obs_names == [bank.obs_names[i] for i in idx]
    np.testing.assert_array_equal(sub.colour, bank.colour[idx])
    np.testing.assert_array_equal(sub.expression, bank.expression[idx])
    np.testing.assert_array_equal(sub.centres, bank.centres[idx])
