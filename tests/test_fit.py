import json

import numpy as np
import pytest
import spatialdata as sd
import torch

import comtip_sc as cs
from comtip_sc.model._comtip_model import ComtipModel
from comtip_sc.tl import _fit_check


@pytest.fixture
def fit(tiny_config):
    """``cs.tl.fit`` with the tiny test config and quiet, seeded settings."""

    def run(sdata, tmp_path, **kw):
        kw.setdefault("max_epochs", 1)
        return cs.tl.fit(
            sdata,
            config=kw.pop("config", tiny_config),
            tile_um=100,
            batch_size=16,
            seed=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
            **kw,
        )

    return run


@pytest.fixture(scope="module")
def toy():
    return cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0)


def _snapshot(table):
    return (
        table.X.copy(),
        list(table.obs.columns),
        list(table.var.columns),
        sorted(table.layers.keys()),
        sorted(table.obsm.keys()),
        json.dumps(sorted(table.uns.keys())),
    )


def test_fit_returns_trained_model_with_bank_and_leaves_input_alone(toy, tmp_path, fit):
    table = toy.tables["table"]
    before = _snapshot(table)
    model = fit(toy, tmp_path, max_epochs=2)
    assert isinstance(model, ComtipModel)
    assert len(model.panel) == 30 and model.genes[:30] == model.panel
    assert model.reference.embeddings.shape == (table.n_obs, 32)
    np.testing.assert_allclose(np.linalg.norm(model.reference.embeddings, axis=1), 1.0, rtol=1e-5)
    assert model.reference.image_embeddings.shape == (table.n_obs, 32)
    assert model.history["global_steps"] == 2 * int(np.ceil(table.n_obs / 16))
    assert np.isfinite(model.history["metrics"]["train/loss_epoch"])
    after = _snapshot(table)
    assert (before[0] != after[0]).nnz == 0 and before[1:] == after[1:]


def test_fit_records_the_embedding_cone_and_warns_when_it_closes(toy, tmp_path, fit, monkeypatch, caplog):
    model = fit(toy, tmp_path / "a")
    cone = model.history["cone"]
    assert cone == model.reference.cone()
    bank = model.reference
    assert cone["image"] == pytest.approx(np.linalg.norm(bank.image_embeddings.mean(0)))
    assert 0.0 < cone["image"] <= 1.0 and 0.0 < cone["sentence"] <= 1.0
    # A mean of unit vectors is never longer than 1, and any real fit's is longer than 0: the warning
    # is silent above 1 and names the lengths at 0 (this one-epoch fit sits near 1, as untrained nets do).
    for threshold, warned in ((1.01, False), (0.0, True)):
        monkeypatch.setattr(_fit_check, "CONE_WARN", threshold)
        caplog.clear()
        with caplog.at_level("WARNING", logger="comtip_sc"):
            fit(toy, tmp_path / f"t{threshold}")
        assert ("point nearly the same way" in caplog.text) is warned
    assert str(round(cone["image"], 3)) in caplog.text


def test_same_seed_same_model(toy, tmp_path, fit):
    a = fit(toy, tmp_path / "a")
    b = fit(toy, tmp_path / "b")
    for (k, va), (_, vb) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    np.testing.assert_array_equal(a.reference.embeddings, b.reference.embeddings)


def test_enable_checkpointing_false_writes_none_and_trains_the_same(toy, tmp_path, fit):
    a = fit(toy, tmp_path / "a")
    b = fit(toy, tmp_path / "b", enable_checkpointing=False)
    assert list((tmp_path / "a").rglob("*.ckpt")) and not list((tmp_path / "b").rglob("*.ckpt"))
    assert b.history["best_checkpoint"] == ""
    for (k, va), (_, vb) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_several_datasets_with_different_gene_sets_and_section_validation(tmp_path, fit):
    one = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=30, seed=1, sample_id="s1")
    two = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=40, seed=2, sample_id="s2")
    # Make the gene sets really differ: drop some genes from the first dataset.
    t1 = one.tables["table"]
    one.tables["table"] = t1[:, t1.var_names[5:]].copy()
    model = fit([one, two], tmp_path, max_epochs=2, genes=None, n_top_genes=20)
    assert len(model.genes) > 20, "the vocabulary is the union of both panels"
    assert model.history["val_sections"] == ["dataset1:s2_spots"]
    assert "val/loss" in model.history["metrics"]
    # Genes a dataset lacks are NaN in its rows of the bank, never zero-filled.
    expr = model.reference.expression
    assert np.isnan(expr).any() and np.isfinite(expr[~np.isnan(expr)]).all()


def test_resume_from_lightning_checkpoint(toy, tmp_path, fit):
    first = fit(toy, tmp_path, max_epochs=1, val_sections=None)
    last = tmp_path / "comtip_logs"
    ckpts = sorted(last.rglob("last.ckpt"))
    assert ckpts, "fit must leave a resumable checkpoint"
    # Without validation there is no "best" to keep: last.ckpt is the only checkpoint written.
    assert [p.name for p in last.rglob("*.ckpt")] == ["last.ckpt"]
    assert first.history["best_checkpoint"] == ""
    assert next(first.network.parameters()).device.type == "cpu"
    resumed = fit(toy, tmp_path / "r", max_epochs=2, ckpt_path=str(ckpts[0]))
    assert resumed.history["global_steps"] == 2 * first.history["global_steps"]


def test_fit_rejects_bad_input_naming_it(toy, tmp_path, fit):
    bad = sd.SpatialData(
        images=dict(toy.images), shapes=dict(toy.shapes), tables={"table": toy.tables["table"].copy()}
    )
    X = bad.tables["table"].X.tolil()
    X[3, 2] = -5
    bad.tables["table"].X = X.tocsr()
    name = bad.tables["table"].obs_names[3]
    with pytest.raises(ValueError, match=name):
        fit(bad, tmp_path)
    with pytest.raises(ValueError, match="val_sections"):
        fit(toy, tmp_path, val_sections=["nope"])
    with pytest.raises(KeyError, match="no table 'other'"):
        fit(toy, tmp_path, table_key="other")


def test_save_load_roundtrip_and_corruption(toy, tmp_path, fit):
    model = fit(toy, tmp_path)
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "m")
    back = ComtipModel.load(tmp_path / "m")
    images = torch.randn(3, 3, 32, 32)
    model.network.eval()
    torch.testing.assert_close(
        back.network.encode_image(images), model.network.encode_image(images), rtol=0, atol=0
    )
    assert back.panel == model.panel and back.tile_um == model.tile_um
    np.testing.assert_array_equal(back.reference.expression, model.reference.expression)
    # A truncated weights file is reported as such.
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ComtipModel.load(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["format_version"] = 999
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 999"):
        ComtipModel.load(tmp_path / "m")


def test_tile_cache_is_used_by_fit(toy, tmp_path, fit):
    fit(toy, tmp_path, tile_cache=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / "dataset0.zarr").is_dir()


@pytest.mark.slow
def test_ddp_two_cpu_processes(toy, tmp_path, fit):
    """Real Lightning DDP (gloo, 2 CPU processes); the trained weights come back to this process."""
    init = fit(toy, tmp_path / "init", max_epochs=1, limit_train_batches=0)
    model = fit(toy, tmp_path / "ddp", max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn")
    changed = [
        k for k, v in model.network.state_dict().items() if not torch.equal(v, init.network.state_dict()[k])
    ]
    assert changed, "DDP training did not update the weights of the returned model"
    # Spawned workers send their logged metrics back with the weights.
    assert np.isfinite(model.history["metrics"]["train/loss_epoch"])


@pytest.mark.realdata
def test_fit_on_real_her2st(shared_data, tmp_path, tiny_config):
    sdata = cs.datasets.her2st(shared_data / "her2st", sections=["A1", "C2"])
    model = cs.tl.fit(
        sdata,
        config=tiny_config,
        tile_um=150,
        batch_size=32,
        max_epochs=1,
        seed=0,
        n_top_genes=50,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    assert model.history["val_sections"] == ["C2_spots"]
    assert np.isfinite(model.history["metrics"]["val/loss"])
    assert len(model.panel) == 50


def test_cpu_preset_trains_the_token_transformer_on_a_frozen_pretrained_trunk(toy, tmp_path):
    from comtip_sc.model import ComtipConfig, create_backbone

    cfg = ComtipConfig.preset("cpu", tile_px=64, token_dim=32, embed_dim=32, gene_dim=32, n_heads_gene=2)
    cfg = cfg.replace(text_encoder="char-ngram")
    model = cs.tl.fit(
        toy,
        preset="cpu",
        config=cfg,
        tile_um=100,
        batch_size=16,
        max_epochs=1,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    assert model.history["lr"] == 1e-3  # the preset's recipe
    assert np.isfinite(model.history["metrics"]["train/mfm_epoch"])
    trained = model.network.vision.backbone.state_dict()
    pretrained = create_backbone("efficientnet_lite0.imagenet", 64, pretrained=True).state_dict()
    # Frozen: weights and BatchNorm statistics are the ImageNet ones after training.
    assert all(torch.equal(trained[k], pretrained[k]) for k in pretrained)
    model.save(tmp_path / "m")
    loaded = ComtipModel.load(tmp_path / "m")
    assert loaded.network.config == model.network.config.replace(pretrained=False, checkpoint_path=None)
    assert all(torch.equal(v, loaded.network.state_dict()[k]) for k, v in model.network.state_dict().items())


def test_pathology_preset_needs_its_weights_file(toy, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_path"):
        cs.tl.fit(toy, preset="pathology", default_root_dir=str(tmp_path))


def test_epoch_means_of_the_loss_terms_weigh_every_spot_once(toy, tmp_path, fit):
    # The terms are summed on the device during the epoch and logged once at its end; the per-step
    # loss the logger writes averages back to the epoch's value (batches of 16, 16 and 4 spots).
    import pandas as pd

    model = fit(toy, tmp_path, max_epochs=2, log_every_n_steps=1, val_sections=None)
    rows = pd.read_csv(tmp_path / "comtip_logs" / "version_0" / "metrics.csv")
    steps = rows.dropna(subset=["train/loss_step"])
    assert len(steps) == model.history["global_steps"] == 6
    assert "train/mfm_step" in rows and steps["train/mfm_step"].notna().all()
    sizes = np.array([16, 16, 4])
    for epoch in (0, 1):
        per_step = steps[steps["epoch"] == epoch]["train/loss_step"].to_numpy()
        logged = rows.dropna(subset=["train/loss_epoch"])
        logged = logged[logged["epoch"] == epoch]["train/loss_epoch"].item()
        assert logged == pytest.approx(float((per_step * sizes).sum() / sizes.sum()), rel=1e-5)
    assert model.history["metrics"]["train/loss_epoch"] == pytest.approx(logged)
