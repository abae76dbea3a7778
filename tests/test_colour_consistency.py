"""A model's tile colour handling is the same when it trains and when it embeds or predicts."""

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation

import comtip_sc as cs
from comtip_sc._constants import EMBED_KEY, PRED_KEY
from comtip_sc._predictions import get_predictions


def _rescanned(sdata, gain, offset):
    """``sdata`` with its image scanned darker/brighter: every pixel ``gain·x + offset`` (uint8)."""
    name = next(iter(sdata.images))
    img = sdata.images[name]
    arr = np.asarray(img["scale0"]["image"].data if "scale0" in img else img.data).astype(np.float64)
    image = Image2DModel.parse(
        np.clip(gain * arr + offset, 0, 255).astype(np.uint8),
        dims=("c", "y", "x"),
        scale_factors=[2],
        transformations=get_transformation(img, get_all=True),
    )
    return sd.SpatialData(images={name: image}, shapes=dict(sdata.shapes), tables=dict(sdata.tables))


@pytest.fixture(scope="module")
def jittered_section_model(tiny_config, tmp_path_factory):
    """Trained with per-section colour standardisation and both colour augmentations."""
    train = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0)
    model = cs.tl.fit(
        train,
        config=tiny_config,
        colour_norm="section",
        stain_jitter=0.05,
        colour_jitter=0.1,
        tile_um=100,
        max_epochs=1,
        batch_size=16,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path_factory.mktemp("jitter")),
    )
    return train, model


def test_training_tiles_embed_at_predict_time_as_in_the_bank(jittered_section_model):
    # The bank's image embeddings come from fit's tile pipeline; comtip_embed uses the predict one. Equal
    # embeddings mean the same colour standardisation and no augmentation in either.
    train, model = jittered_section_model
    assert model.history["settings"]["stain_jitter"] == 0.05 and model.colour_norm == "section"
    emb = cs.tl.comtip_embed(train, model, copy=True).tables["table"].obsm[EMBED_KEY]
    np.testing.assert_allclose(emb, model.reference.image_embeddings, atol=1e-5)


def test_a_brightness_shifted_section_predicts_like_the_original(jittered_section_model):
    _, model = jittered_section_model
    unseen = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=5, sample_id="other")
    shifted = _rescanned(unseen, 0.75, 25.0)
    outs = [cs.tl.comtip_predict(s, model, method="retrieval", copy=True) for s in (unseen, shifted)]
    # The rescan is a real change of the tiles as scanned ...
    raw = [cs.pp.extract_tiles(s, tile_um=100, tile_px=32).astype(float) for s in (unseen, shifted)]
    assert np.abs(raw[0] - raw[1]).mean() > 10
    # ... which the per-section standardisation removes before the network sees the tiles.
    a, b = (
        cs.tl.comtip_embed(s, model, copy=True).tables["table"].obsm[EMBED_KEY] for s in (unseen, shifted)
    )
    assert (a * b).sum(1).min() > 0.99
    pa, pb = (get_predictions(o.tables["table"], PRED_KEY)[model.panel].to_numpy() for o in outs)
    spread = pa.std()
    assert np.abs(pa - pb).mean() < 0.1 * spread
