"""comtip_embed / comtip_predict / evaluate and model persistence, on real objects with known answers."""

import copy
import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import pearsonr
from spatialdata import SpatialData

import comtip_sc as cs
from comtip_sc._constants import EMBED_KEY, PRED_KEY
from comtip_sc._predictions import get_predictions
from comtip_sc._tables import normalized_values
from comtip_sc.model._comtip_model import ComtipModel

#: Real gene symbols that the toy tissue does not have.
OUTSIDE = ["ERBB2_NOT_IN_PANEL", "ESR1"]


def _unseen():
    """A section the model never saw: other layout, textures and counts, other ids."""
    return cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=5, sample_id="other")


@pytest.fixture(scope="module")
def unseen_embedded(tiny_model):
    sdata = _unseen()
    cs.tl.comtip_embed(sdata, tiny_model)
    return sdata


# ------------------------------------------------------------------ embed
def test_embed_unseen_section(unseen_embedded, tiny_model):
    table = unseen_embedded.tables["table"]
    emb = table.obsm[EMBED_KEY]
    assert emb.dtype == np.float32
    assert emb.shape == (table.n_obs, tiny_model.config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(emb).all()
    # Different tissue looks different: the embedding is not one constant vector.
    assert emb.std(axis=0).max() > 1e-3
    rec = table.uns["comtip"]["embed"][EMBED_KEY]
    assert rec["n_spots"] == table.n_obs
    assert rec["dim"] == tiny_model.config.embed_dim and rec["tile_um"] == 100


def test_embedding_feeds_scanpy(unseen_embedded):
    table = unseen_embedded.tables["table"].copy()
    sc.pp.neighbors(table, use_rep=EMBED_KEY, n_neighbors=10)
    sc.tl.leiden(table, flavor="igraph", n_iterations=2, directed=False)
    assert table.obsp["connectivities"].shape == (table.n_obs, table.n_obs)
    assert table.obs["leiden"].notna().all() and table.obs["leiden"].nunique() >= 1


def test_embed_copy_leaves_input(tiny_model, unseen_embedded):
    sdata = _unseen()
    out = cs.tl.comtip_embed(sdata, tiny_model, copy=True)
    assert isinstance(out, SpatialData) and out is not sdata
    assert EMBED_KEY not in sdata.tables["table"].obsm
    assert "comtip" not in sdata.tables["table"].uns or "embed" not in sdata.tables["table"].uns["comtip"]
    # Deterministic: the copy holds what writing in place gives.
    np.testing.assert_allclose(
        out.tables["table"].obsm[EMBED_KEY], unseen_embedded.tables["table"].obsm[EMBED_KEY], atol=1e-6
    )


def test_embed_with_tile_workers_equals_in_process(tiny_model):
    """Tiles cut in two loader processes (each with its own chunk reader) give the in-process embedding."""
    sdata = _unseen()
    kw = {"batch_size": 7, "accelerator": "cpu", "copy": True}
    workers = cs.tl.comtip_embed(sdata, tiny_model, num_workers=2, **kw).tables["table"].obsm[EMBED_KEY]
    alone = cs.tl.comtip_embed(sdata, tiny_model, num_workers=0, **kw).tables["table"].obsm[EMBED_KEY]
    np.testing.assert_array_equal(workers, alone)


def test_embed_matches_the_bank_image_embeddings_of_the_training_tiles(tiny_model):
    """The embedding path (uint8 tiles normalised on the device) gives fit's bank its image embeddings."""
    sdata = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=0)
    cs.tl.comtip_embed(sdata, tiny_model, accelerator="cpu")
    np.testing.assert_allclose(
        sdata.tables["table"].obsm[EMBED_KEY], tiny_model.reference.image_embeddings, atol=1e-6
    )


# ------------------------------------------------------------------ predict
@pytest.mark.parametrize("method", ["retrieval", "head", "zero_shot"])
def test_predict_methods_store_predicted_genes_only(tiny_model, unseen_embedded, method):
    genes = ["KRT19", "COL1A1", "PTPRC"]
    out = cs.tl.comtip_predict(
        unseen_embedded, tiny_model, method=method, genes=genes, use_rep=EMBED_KEY, copy=True
    )
    table = out.tables["table"]
    pred = get_predictions(table, PRED_KEY)
    assert isinstance(pred, pd.DataFrame)
    assert list(pred.columns) == genes and pred.index.equals(table.obs_names)
    assert np.isfinite(pred.to_numpy()).all()
    # A sparse layer over the table's genes, its stored entries exactly the predicted genes' columns.
    layer = table.layers[PRED_KEY]
    assert sp.issparse(layer) and layer.format == "csr" and layer.shape == table.shape
    assert layer.nnz == table.n_obs * len(genes)
    stored = set(np.unique(layer.indices).tolist())
    assert stored == set(table.var_names.get_indexer(genes).tolist())
    np.testing.assert_array_equal(layer[:, table.var_names.get_indexer(genes)].toarray(), pred.to_numpy())
    assert PRED_KEY not in table.obsm  # every predicted gene is measured: nothing left for obsm
    rec = table.uns["comtip"]["predict"][PRED_KEY]
    assert rec["method"] == method and rec["genes"] == genes and rec["unmeasured_genes"] == []
    # Predictions live on the log1p scale of the training values.
    assert pred.to_numpy().min() >= -1.0 and pred.to_numpy().max() < 15.0
    assert PRED_KEY not in unseen_embedded.tables["table"].obsm


def test_each_predict_call_keeps_its_own_record(tiny_model, unseen_embedded):
    out = cs.tl.comtip_predict(
        unseen_embedded, tiny_model, method="retrieval", genes=["KRT19"], key_added="by_retrieval", copy=True
    )
    cs.tl.comtip_predict(out, tiny_model, method="zero_shot", genes=["EPCAM"], key_added="by_zero_shot")
    table = out.tables["table"]
    records = table.uns["comtip"]["predict"]
    assert records["by_retrieval"]["method"] == "retrieval" and records["by_retrieval"]["genes"] == ["KRT19"]
    assert records["by_zero_shot"]["method"] == "zero_shot" and records["by_zero_shot"]["genes"] == ["EPCAM"]
    assert list(get_predictions(table, "by_retrieval").columns) == ["KRT19"]
    assert list(get_predictions(table, "by_zero_shot").columns) == ["EPCAM"]


def test_layer_added_is_a_deprecated_alias(tiny_model, unseen_embedded):
    kw = {"method": "retrieval", "genes": ["KRT19"], "use_rep": EMBED_KEY, "copy": True}
    with pytest.warns(FutureWarning, match="key_added"):
        out = cs.tl.comtip_predict(unseen_embedded, tiny_model, layer_added="old_name", **kw)
    assert list(get_predictions(out.tables["table"], "old_name").columns) == ["KRT19"]
    with pytest.raises(TypeError, match="key_added"):
        cs.tl.comtip_predict(unseen_embedded, tiny_model, layer_added="a", key_added="b", **kw)


def test_predict_default_genes_cover_the_panel(tiny_model, unseen_embedded):
    out = cs.tl.comtip_predict(unseen_embedded, tiny_model, use_rep=EMBED_KEY, copy=True)
    table = out.tables["table"]
    assert list(get_predictions(table, PRED_KEY).columns) == list(tiny_model.panel)
    assert (table.var_names.get_indexer(tiny_model.panel) >= 0).all()
    assert np.isfinite(get_predictions(table, PRED_KEY).to_numpy()).all()


def test_zero_shot_outside_panel_is_stored_with_the_others(tiny_model, unseen_embedded):
    n_vocab = len(tiny_model.network.gene_names)
    vocab = list(tiny_model.network.gene_names)
    out = cs.tl.comtip_predict(
        unseen_embedded,
        tiny_model,
        method="zero_shot",
        genes=["KRT19", *OUTSIDE],
        use_rep=EMBED_KEY,
        copy=True,
    )
    table = out.tables["table"]
    pred = get_predictions(table, PRED_KEY)
    assert list(pred.columns) == ["KRT19", *OUTSIDE]
    # Measured genes in the layer, the others in an obsm DataFrame.
    assert list(table.obsm[PRED_KEY].columns) == OUTSIDE
    assert table.layers[PRED_KEY].nnz == table.n_obs
    np.testing.assert_array_equal(
        table.layers[PRED_KEY][:, table.var_names.get_loc("KRT19")].toarray().ravel(), pred["KRT19"]
    )
    assert np.isfinite(pred.to_numpy()).all()
    assert not any(g in table.var_names for g in OUTSIDE)
    assert table.uns["comtip"]["predict"][PRED_KEY]["unmeasured_genes"] == OUTSIDE
    # The user's model is untouched: no gene was added to its vocabulary.
    assert len(tiny_model.network.gene_names) == n_vocab
    assert list(tiny_model.network.gene_names) == vocab
    assert tiny_model.network.gene_encoder.gene_index(["KRT19"]).numel() == 1
    with pytest.raises(KeyError):
        tiny_model.network.gene_encoder.gene_index([OUTSIDE[0]])


def test_fit_calibrates_the_zero_shot_temperature_on_training_spots(tiny_model):
    from comtip_sc.tl._evaluate import pearson_per_gene
    from comtip_sc.tl._zero_shot import READOUT_FACTORS, zero_shot_values

    cal = tiny_model.history["zero_shot_calibration"]
    learned = 1.0 / float(tiny_model.network.logit_scale().detach())
    assert cal["factors"] == list(READOUT_FACTORS) and len(cal["train_pcc_all"]) == len(READOUT_FACTORS)
    assert cal["learned_temperature"] == pytest.approx(learned)
    # The chosen temperature is the grid's best by training-spot PCC-ALL ...
    best = int(np.argmax(cal["train_pcc_all"]))
    assert cal["chosen_factor"] == READOUT_FACTORS[best]
    assert tiny_model.zero_shot_temperature == pytest.approx(READOUT_FACTORS[best] * learned)
    # ... and that score is the PCC-ALL of zero-shot predictions on the bank's spots, recomputed here.
    bank = tiny_model.reference
    (pred,) = zero_shot_values(
        bank.image_embeddings, tiny_model, bank.genes, [tiny_model.zero_shot_temperature], calibrated=False
    )
    again = float(pearson_per_gene(bank.expression, pred).mean())
    assert again == pytest.approx(cal["train_pcc_all"][best], abs=1e-5)


def test_fit_fits_a_per_gene_zero_shot_read_out_of_the_candidate_scores(tiny_model, unseen_embedded):
    """Panel genes are read by their fitted linear map of the M candidate scores; others by the softmax."""
    import torch

    from comtip_sc.model._losses import candidate_values
    from comtip_sc.tl._ridge import RIDGE_ALPHAS
    from comtip_sc.tl._zero_shot import readout_temperature, zero_shot_values

    readout = tiny_model.zero_shot_readout
    m = tiny_model.config.value_query_candidates
    assert readout["genes"] == tiny_model.reference.genes and readout["n_candidates"] == m
    assert np.shape(readout["weights"]) == (len(readout["genes"]), m)
    assert readout["alpha"] in RIDGE_ALPHAS
    assert tiny_model.history["zero_shot_calibration"]["readout_alpha"] == readout["alpha"]
    genes = [readout["genes"][0], OUTSIDE[1]]
    img = unseen_embedded.tables["table"].obsm[EMBED_KEY]
    t = readout_temperature(tiny_model)
    (calibrated,) = zero_shot_values(img, tiny_model, genes, [t])
    (softmax,) = zero_shot_values(img, tiny_model, genes, [t], calibrated=False)
    # The panel gene, recomputed by hand: its M sentence scores times the stored weights plus intercept.
    net = tiny_model.network
    vmax = torch.tensor([tiny_model.gene_stats["max"][genes[0]]])
    with torch.no_grad():
        scores = net.query_scores(torch.from_numpy(img), net.gene_index(genes[:1]), candidate_values(vmax, m))
    by_hand = scores[:, 0].numpy() @ np.asarray(readout["weights"][0]) + readout["intercept"][0]
    np.testing.assert_allclose(calibrated[:, 0], by_hand, rtol=1e-4, atol=1e-5)
    assert not np.allclose(calibrated[:, 0], softmax[:, 0])
    # A gene outside the panel has no training values to fit: the softmax reads it.
    np.testing.assert_array_equal(calibrated[:, 1], softmax[:, 1])
    # Another candidate grid than the fitted one falls back to the softmax for every gene.
    (other_grid,) = zero_shot_values(img, tiny_model, genes, [t], n_candidates=m + 1)
    (other_softmax,) = zero_shot_values(img, tiny_model, genes, [t], n_candidates=m + 1, calibrated=False)
    np.testing.assert_array_equal(other_grid, other_softmax)


def test_score_read_out_recovers_a_linear_map_and_skips_unmeasured_entries():
    from comtip_sc.tl._ridge import RIDGE_ALPHAS
    from comtip_sc.tl._zero_shot import fit_score_readout

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(120, 3, 4))
    true = np.stack([2 * scores[:, 0, 3] - scores[:, 0, 0], scores[:, 1, 1] + 1.0, scores[:, 2, 2]], 1)
    true[:60, 1] = np.nan  # a gene of another panel: measured on half the spots
    true[:115, 2] = np.nan  # measured on too few spots to fit M weights
    folds = np.arange(120) % 4
    weights, intercept, alpha, fitted = fit_score_readout(scores, true, folds)
    assert fitted.tolist() == [True, True, False]
    np.testing.assert_allclose(weights[0], [-1, 0, 0, 2], atol=0.02)
    np.testing.assert_allclose(weights[1], [0, 1, 0, 0], atol=0.02)
    assert (
        intercept[1] == pytest.approx(1.0, abs=0.02) and alpha == RIDGE_ALPHAS[0]
    )  # noiseless: the weakest penalty
    assert fit_score_readout(scores, true, np.zeros(120, int)) is None  # one fold: nothing to choose by


def test_zero_shot_temperature_default_and_override(tiny_model, unseen_embedded):
    kw = {"method": "zero_shot", "genes": ["KRT19", "EPCAM"], "use_rep": EMBED_KEY, "copy": True}
    default = cs.tl.comtip_predict(unseen_embedded, tiny_model, **kw).tables["table"]
    chosen = tiny_model.zero_shot_temperature
    assert default.uns["comtip"]["predict"][PRED_KEY]["temperature"] == pytest.approx(chosen)
    # An explicit temperature reads every gene by the softmax, the fitted per-gene read-out set aside.
    from comtip_sc.tl._zero_shot import zero_shot_values

    img = unseen_embedded.tables["table"].obsm[EMBED_KEY]
    same = cs.tl.comtip_predict(unseen_embedded, tiny_model, temperature=chosen, **kw).tables["table"]
    (softmax,) = zero_shot_values(img, tiny_model, kw["genes"], [chosen], calibrated=False)
    np.testing.assert_allclose(get_predictions(same, PRED_KEY)[kw["genes"]].to_numpy(), softmax, rtol=1e-6)
    # A very cold read-out snaps every spot to one candidate value; a very warm one flattens towards the
    # middle of the candidate range: the two differ, and the warm one varies less between spots.
    cold = cs.tl.comtip_predict(unseen_embedded, tiny_model, temperature=1e-4, **kw).tables["table"]
    warm = cs.tl.comtip_predict(unseen_embedded, tiny_model, temperature=100.0, **kw).tables["table"]
    assert not np.allclose(
        get_predictions(cold, PRED_KEY)[kw["genes"]].to_numpy(),
        get_predictions(warm, PRED_KEY)[kw["genes"]].to_numpy(),
    )
    assert (
        get_predictions(warm, PRED_KEY)[kw["genes"]].to_numpy().std(0).max()
        < get_predictions(cold, PRED_KEY)[kw["genes"]].to_numpy().std(0).max()
    )
    # By default the read-out uses the candidate grid the value-query term trained on (M values).
    m = tiny_model.config.value_query_candidates
    (on_default,), (on_m,), (on_24,) = (
        zero_shot_values(img, tiny_model, kw["genes"], [chosen], n_candidates=n) for n in (None, m, 24)
    )
    np.testing.assert_array_equal(on_default, on_m)
    np.testing.assert_allclose(
        on_default, get_predictions(default, PRED_KEY)[kw["genes"]].to_numpy(), rtol=1e-6
    )
    assert not np.allclose(on_default, on_24)
    with pytest.raises(ValueError, match="temperature"):
        cs.tl.comtip_predict(unseen_embedded, tiny_model, temperature=0.0, **kw)


def test_retrieval_and_head_with_given_reference(tiny_model, unseen_embedded):
    reference = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=9, sample_id="ref")
    for method in ("retrieval", "head"):
        out = cs.tl.comtip_predict(
            unseen_embedded, tiny_model, method=method, reference=reference, k=5, copy=True
        )
        table = out.tables["table"]
        rec = table.uns["comtip"]["predict"][PRED_KEY]
        assert rec["reference"] == "given"
        assert len(rec["genes"]) == len(tiny_model.panel)
        assert np.isfinite(get_predictions(table, PRED_KEY)[rec["genes"]].to_numpy()).all()
    # k=1 retrieval returns, per spot, exactly one reference spot's expression row.
    out = cs.tl.comtip_predict(
        unseen_embedded, tiny_model, reference=reference, k=1, genes=["KRT19"], copy=True
    )
    pred = get_predictions(out.tables["table"], PRED_KEY)["KRT19"].to_numpy()
    ref_vals = normalized_values(reference.tables["table"], ["KRT19"])[:, 0]
    assert np.isin(np.round(pred, 5), np.round(ref_vals, 5)).all()


def test_head_chooses_its_penalty_by_spatial_blocks(tiny_model, unseen_embedded):
    bank = tiny_model.reference
    assert len(bank.sections) == len(bank.obs_names) and bank.centres.shape == (len(bank.obs_names), 2)
    kw = dict(method="head", use_rep=EMBED_KEY, copy=True)
    runs = {}
    for cv_blocks in (4, None):
        out = cs.tl.comtip_predict(unseen_embedded, tiny_model, cv_blocks=cv_blocks, **kw)
        runs[cv_blocks] = out.tables["table"].uns["comtip"]["predict"][PRED_KEY]
    assert runs[4]["head_cv"] == "4 spatial blocks" and runs[None]["head_cv"] == "loo"
    folds = cs.tl.spatial_folds(bank.centres, bank.sections, 4)
    expected = cs.tl.ridge_cv(bank.image_embeddings, bank.expression, folds).alpha_
    assert runs[4]["head_alphas"] == [expected]
    loo = cs.tl.ridge_cv(bank.image_embeddings, bank.expression).alpha_
    assert runs[None]["head_alphas"] == [loo]
    # A bank saved by an earlier version has no centres: leave-one-spot-out, said so in uns.
    old = copy.copy(tiny_model)
    old.reference = copy.copy(bank)
    old.reference.sections, old.reference.centres = [], None
    out = cs.tl.comtip_predict(unseen_embedded, old, **kw)
    assert out.tables["table"].uns["comtip"]["predict"][PRED_KEY]["head_cv"] == "loo"
    with pytest.raises(ValueError, match="cv_blocks"):
        cs.tl.comtip_predict(unseen_embedded, tiny_model, cv_blocks=1, **kw)


def test_predict_bad_inputs(tiny_model, unseen_embedded):
    with pytest.raises(ValueError, match="method"):
        cs.tl.comtip_predict(unseen_embedded, tiny_model, method="magic", copy=True)
    with pytest.raises(KeyError, match="X_nothing"):
        cs.tl.comtip_predict(unseen_embedded, tiny_model, use_rep="X_nothing", copy=True)
    with pytest.raises(KeyError, match="ESR1"):
        cs.tl.comtip_predict(
            unseen_embedded, tiny_model, method="retrieval", genes=["ESR1"], use_rep=EMBED_KEY, copy=True
        )


def test_zero_shot_refused_for_names_only_model(tiny_config, unseen_embedded):
    from comtip_sc.model import build_network

    cfg = tiny_config.replace(use_values=False, paat=False, value_query=False)
    names_only = ComtipModel(build_network(cfg, ["G1", "G2"]), panel=["G1", "G2"], tile_um=100, tile_px=32)
    with pytest.raises(ValueError, match="use_values=True"):
        cs.tl.comtip_predict(unseen_embedded, names_only, method="zero_shot", copy=True)


# ------------------------------------------------------------------ evaluate
def _hand_metrics(true, pred, n_heg, n_hvg):
    r = np.array(
        [
            0.0 if np.ptp(true[:, j]) == 0 or np.ptp(pred[:, j]) == 0 else pearsonr(true[:, j], pred[:, j])[0]
            for j in range(true.shape[1])
        ]
    )
    heg = np.argsort(-true.mean(0), kind="stable")[:n_heg]
    hvg = np.argsort(-true.var(0), kind="stable")[:n_hvg]
    return {
        "PCC-ALL": r.mean(),
        "PCC-HEG": r[heg].mean(),
        "PCC-HVG": r[hvg].mean(),
        "MSE": np.mean((true - pred) ** 2),
        "MAE": np.mean(np.abs(true - pred)),
    }, r


@pytest.fixture
def known():
    """12 spots x 6 genes with a known truth layer; gene 'flat' is constant in the truth."""
    rng = np.random.default_rng(3)
    truth = rng.gamma(2.0, 1.0, size=(12, 6)) * np.array([1, 3, 0.5, 2, 1, 1])
    truth[:, 5] = 2.0
    pred = truth + rng.normal(0, 0.8, size=truth.shape)
    pred[:, 4] = 1.0  # constant prediction
    adata = ad.AnnData(
        sp.csr_matrix(rng.poisson(5, size=(12, 6)).astype(np.float32)),
        obs=pd.DataFrame({"grp": ["a"] * 7 + ["b"] * 5}, index=[f"s{i}" for i in range(12)]),
        var=pd.DataFrame(index=["g0", "g1", "g2", "g3", "g4", "flat"]),
    )
    adata.layers["truth"] = truth
    adata.obsm["pred"] = pd.DataFrame(pred, index=adata.obs_names, columns=adata.var_names)
    return adata


def test_evaluate_matches_hand_computation(known):
    res = cs.tl.evaluate(
        known, layer="truth", pred_key="pred", groupby="grp", n_heg=2, n_hvg=3, key_added="comtip_pcc"
    )
    assert list(res.index) == ["all", "a", "b"]
    truth, pred = known.layers["truth"], known.obsm["pred"].to_numpy()
    groups = {"all": slice(None), "a": slice(0, 7), "b": slice(7, 12)}
    for name, sel in groups.items():
        want, _ = _hand_metrics(truth[sel], pred[sel], 2, 3)
        for metric, value in want.items():
            assert res.loc[name, metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, metric)
        assert res.loc[name, "n_spots"] == len(truth[sel]) and res.loc[name, "n_genes"] == 6
    _, r = _hand_metrics(truth, pred, 2, 3)
    np.testing.assert_allclose(known.var["comtip_pcc"].to_numpy(), r, rtol=1e-6)
    assert known.var.loc["flat", "comtip_pcc"] == 0.0 and known.var.loc["g4", "comtip_pcc"] == 0.0
    assert not res.isna().any().any()


def test_evaluate_normalises_counts_and_subsets_genes(known):
    res = cs.tl.evaluate(known, pred_key="pred", genes=["g0", "g1"], n_heg=1, n_hvg=1)
    X = known.X.toarray().astype(np.float64)
    norm = np.log1p(X / X.sum(1, keepdims=True) * 1e4)[:, :2]
    want, _ = _hand_metrics(norm, known.obsm["pred"].to_numpy()[:, :2], 1, 1)
    for metric, value in want.items():
        assert res.loc["all", metric] == pytest.approx(value, rel=1e-6)
    assert "comtip_pcc" not in known.var  # evaluate writes nothing unless key_added is given


def test_evaluate_old_argument_names_still_work(known):
    new = cs.tl.evaluate(known, layer="truth", pred_key="pred")
    with pytest.warns(FutureWarning, match="layer_pred"):
        old = cs.tl.evaluate(known, layer_true="truth", layer_pred="pred")
    pd.testing.assert_frame_equal(new, old)


def test_evaluate_defaults_to_predicted_genes(known):
    known.obsm["pred"] = known.obsm["pred"].drop(columns="g2")
    res = cs.tl.evaluate(known, layer="truth", pred_key="pred", key_added="comtip_pcc")
    assert res.loc["all", "n_genes"] == 5
    assert np.isnan(known.var.loc["g2", "comtip_pcc"])


def test_evaluate_bad_inputs_name_the_culprit(known):
    with pytest.raises(KeyError, match=r"no_pred.*comtip_predict"):
        cs.tl.evaluate(known, pred_key="no_pred")
    with pytest.raises(KeyError, match="no_truth"):
        cs.tl.evaluate(known, layer="no_truth", pred_key="pred")
    with pytest.raises(KeyError, match="GHOST"):
        cs.tl.evaluate(known, layer="truth", pred_key="pred", genes=["g0", "GHOST"])
    with pytest.raises(KeyError, match="nogroup"):
        cs.tl.evaluate(known, layer="truth", pred_key="pred", groupby="nogroup")
    known.obsm["pred"].loc["s3", "g1"] = np.nan
    with pytest.raises(ValueError, match="g1"):
        cs.tl.evaluate(known, layer="truth", pred_key="pred")


def test_evaluate_on_spatialdata_predictions(tiny_model, unseen_embedded):
    out = cs.tl.comtip_predict(unseen_embedded, tiny_model, use_rep=EMBED_KEY, copy=True)
    res = cs.tl.evaluate(out, groupby="sample")
    assert list(res.index) == ["all", "other"]
    assert res.loc["all", "n_genes"] == len(tiny_model.panel)
    assert np.isfinite(res[["PCC-ALL", "PCC-HEG", "PCC-HVG", "MSE", "MAE"]].to_numpy()).all()
    assert -1.0 <= res.loc["all", "PCC-ALL"] <= 1.0


# ------------------------------------------------------------------ persistence
@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    tiny_model.save(path)
    return path


def test_save_load_gives_identical_embeddings(tiny_model, saved, unseen_embedded):
    loaded = ComtipModel.load(saved)
    assert loaded.panel == tiny_model.panel and loaded.genes == tiny_model.genes
    assert (loaded.tile_um, loaded.tile_px) == (tiny_model.tile_um, tiny_model.tile_px)
    np.testing.assert_array_equal(loaded.reference.embeddings, tiny_model.reference.embeddings)
    np.testing.assert_array_equal(loaded.reference.expression, tiny_model.reference.expression)
    np.testing.assert_array_equal(loaded.reference.centres, tiny_model.reference.centres)
    assert loaded.reference.centres.dtype == tiny_model.reference.centres.dtype == np.float64
    assert loaded.reference.sections == tiny_model.reference.sections
    assert loaded.zero_shot_temperature == tiny_model.zero_shot_temperature is not None
    assert loaded.zero_shot_readout == tiny_model.zero_shot_readout is not None
    out = cs.tl.comtip_embed(unseen_embedded, loaded, copy=True)
    np.testing.assert_array_equal(
        out.tables["table"].obsm[EMBED_KEY], unseen_embedded.tables["table"].obsm[EMBED_KEY]
    )


def test_truncated_weights_raise_value_error(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*(truncated|corrupt)"):
        ComtipModel.load(broken)


def test_other_format_version_raises(saved, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    meta = json.loads((other / "config.json").read_text())
    meta["format_version"] = 999
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 999"):
        ComtipModel.load(other)
