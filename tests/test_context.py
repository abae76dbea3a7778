"""Spatial context: a wider tile around each spot, read by the trunk and joined in the token transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import comtip_sc as cs
from comtip_sc._predictions import get_predictions
from comtip_sc.model._trunk import create_backbone
from comtip_sc.model._vision import VisionBranch
from comtip_sc.train import TrainSettings, resolve_settings
from comtip_sc.train._datamodule import SentenceCollate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_context_tiles_stack_the_spot_and_a_wider_field() -> None:
    sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20, seed=0)
    spot = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=32)
    wide = cs.pp.SpotTiles(sdata, tile_um=300, tile_px=32)
    both = cs.pp.ContextTiles(spot, wide)
    assert both[4].shape == (32, 32, 6) and len(both) == 9
    np.testing.assert_array_equal(both[4][..., :3], spot[4])
    np.testing.assert_array_equal(both[4][..., 3:], wide[4])
    np.testing.assert_array_equal(both.take([1, 2])[..., 3:], wide.take([1, 2]))
    # The context tile shows the spot's field shrunk to its centre third (same centre, 3x the field).
    centre = wide[4][11:21, 11:21].astype(float).mean((0, 1))
    assert np.abs(centre - spot[4].astype(float).mean((0, 1))).max() < 25
    with pytest.raises(ValueError, match="same spots"):
        cs.pp.ContextTiles(
            spot, cs.pp.SpotTiles(cs.pp.subset_sections(sdata, np.arange(9) < 5), tile_um=300, tile_px=32)
        )


def test_context_tokens_join_the_spot_tokens_and_matter() -> None:
    torch.manual_seed(0)
    vb = VisionBranch(
        create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32, freeze="all", context=True
    ).eval()
    assert (vb.tile_tokens, vb.num_patches) == (4, 8)
    x = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        tokens = vb.trunk_tokens(x)
        spot_only = vb.trunk_tokens(torch.cat([x[:, :3], x[:, :3]], dim=1))
        g, z = vb.forward_full(x)
        g2, _ = vb.forward_full(torch.cat([x[:, :3], torch.randn(2, 3, 64, 64)], dim=1))
    assert tokens.shape == (2, 8, 512) and z.shape == (2, 8, 32)
    torch.testing.assert_close(tokens[:, :4], spot_only[:, :4])  # the spot's tokens come first, unchanged
    assert not torch.allclose(g, g2)  # another neighbourhood, another embedding
    with pytest.raises(ValueError, match="token transformer"):
        VisionBranch(create_backbone("resnet10t", 64), tile_px=64, context=True)


def test_context_jitter_draws_once_per_spot() -> None:
    tile = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    items = [(np.concatenate([tile, tile], axis=-1), np.zeros(1, np.float32), np.zeros(1, np.int64), 0)] * 4
    collate = SentenceCollate((0.5,) * 3, (0.25,) * 3, augment=True, stain_jitter=0.2, colour_jitter=0.2)
    torch.manual_seed(0)
    image = collate(items)["image"]
    assert image.shape == (4, 6, 16, 16)
    torch.testing.assert_close(image[:, :3], image[:, 3:])  # both tiles of a spot: the same colour draw
    assert not torch.allclose(image[0], image[1])  # spots: different draws


def test_fit_embed_predict_with_a_context_tile(tmp_path, frozen_cnn_config, fit_quiet) -> None:
    sdata = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=20, seed=0)
    cfg = frozen_cnn_config()
    model = fit_quiet(sdata, cfg, context_scale=3.0, max_epochs=1, tile_cache=str(tmp_path / "cache"))
    assert model.config.context_tile and model.context_scale == 3.0 and not cfg.context_tile
    cache = tmp_path / "cache"
    assert (cache / "dataset0.zarr").is_dir() and (cache / "dataset0_300um.zarr").is_dir()
    tokens = cs.pp.CachedTokens(cache / "dataset0_300um_tokens.zarr")
    assert tokens.key["context_um"] == 300.0 and tokens[0].shape == (8, 8, 512)
    # Saved and loaded, the model cuts the same two tiles per spot and embeds like its bank.
    model.save(tmp_path / "model")
    loaded = cs.model.ComtipModel.load(tmp_path / "model")
    assert loaded.context_scale == 3.0 and loaded.config.context_tile and "3× context" in repr(loaded)
    cs.tl.comtip_embed(sdata, loaded, accelerator="cpu")
    np.testing.assert_allclose(
        sdata.tables["table"].obsm["X_comtip"], model.reference.image_embeddings, atol=5e-3
    )
    cs.tl.comtip_predict(sdata, loaded, method="head", accelerator="cpu")
    assert np.isfinite(get_predictions(sdata.tables["table"], "comtip_pred").to_numpy()).all()


def test_context_scale_is_validated(frozen_cnn_config) -> None:
    with pytest.raises(ValueError, match="context_scale"):
        TrainSettings(context_scale=0.5)
    with pytest.raises(ValueError, match="context_scale"):
        resolve_settings("cpu", frozen_cnn_config(token_depth=0, mfm=False), None, {"context_scale": 3.0})
    with pytest.raises(ValueError, match="context_scale"):
        resolve_settings("cpu", frozen_cnn_config(context_tile=True), None, {})
    cfg, settings, _ = resolve_settings("cpu", frozen_cnn_config(), None, {"context_scale": 3.0})
    assert cfg.context_tile and settings.context_scale == 3.0
