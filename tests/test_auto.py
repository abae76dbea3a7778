"""fit(preset="auto") and smoothed training targets (TrainSettings.smooth_targets)."""

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from sklearn.neighbors import NearestNeighbors

import comtip_sc as cs
from comtip_sc._tables import normalized_values
from comtip_sc.cli import build_parser
from comtip_sc.tl import _auto
from comtip_sc.train import SpotDataModule, TrainSettings, register_all

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLES = ("a", "b")
#: One quick, quiet epoch on the toy tissue.
QUICK = {
    "tile_um": 100,
    "max_epochs": 1,
    "batch_size": 16,
    "seed": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def _two_sections(jitter: float = 0.0) -> sd.SpatialData:
    """Two toy sections in one SpatialData; ``jitter`` (µm) moves each spot off the grid so that no spot has
    two neighbours at the same distance."""
    parts = []
    for i, s in enumerate(SAMPLES):
        part = cs.datasets.toy_tissue(n_rows=7, n_cols=7, n_genes=30, seed=i, sample_id=s)
        if jitter:
            spots = part.shapes[f"{s}_spots"]
            shift = np.random.default_rng(i).uniform(-jitter, jitter, (len(spots), 2))
            moved = gpd.points_from_xy(spots.geometry.x + shift[:, 0], spots.geometry.y + shift[:, 1])
            part.shapes[f"{s}_spots"] = sd.models.ShapesModel.parse(
                gpd.GeoDataFrame({"radius": spots["radius"]}, geometry=moved, index=spots.index),
                transformations=sd.transformations.get_transformation(spots, get_all=True),
            )
        parts.append(part)
    sdata = sd.concatenate(parts, concatenate_tables=True)
    # concatenate keeps one table's uns only: put every section's spot diameter back.
    sdata.tables["table"].uns["comtip"] = {
        key: {s: p.tables["table"].uns["comtip"][key][s] for s, p in zip(SAMPLES, parts, strict=True)}
        for key in ("spot_diameter_um", "um_per_px")
    }
    return sdata


@pytest.fixture(scope="module")
def tissue():
    return _two_sections()


def _knn_mean(values: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    _, idx = NearestNeighbors(n_neighbors=k).fit(centres).kneighbors(centres)
    return values[idx].mean(axis=1)


def test_smoothed_targets_are_the_knn_mean_and_only_in_training_sentences():
    sdata = _two_sections(jitter=20.0)
    data = register_all(
        [sdata],
        "auto",
        smooth_targets=4,
        table_key="table",
        layer=None,
        genes=None,
        n_top_genes=20,
        tile_um=100,
        tile_px=32,
        colour_norm=None,
        context_scale=None,
        tile_cache=None,
        spot_diameter_um=None,
    )
    (reg,) = data.registered
    raw = normalized_values(sdata.tables["table"], reg.panel)
    np.testing.assert_array_equal(reg.values, raw)  # the bank and the gene statistics read these
    assert data.held_out == [1]
    dm = SpotDataModule(data.sections, val_sections=data.held_out)
    train_values = np.stack([item[1] for item in dm.train_dataset])
    rows = np.asarray(data.sections[0].indices)
    expected = _knn_mean(raw[rows], reg.centres[rows], 4)
    np.testing.assert_allclose(train_values, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(train_values, raw[rows])
    held_rows = np.asarray(data.sections[1].indices)
    val_values = np.stack([item[1] for item in dm.val_dataloader().dataset])
    np.testing.assert_array_equal(val_values, raw[held_rows])


def test_fit_with_smoothed_targets_keeps_raw_expression_in_the_bank(tissue, tiny_config, tmp_path):
    model = cs.tl.fit(
        tissue, config=tiny_config, smooth_targets=3, check=False, default_root_dir=str(tmp_path), **QUICK
    )
    assert model.history["settings"]["smooth_targets"] == 3
    table = tissue.tables["table"]
    raw = normalized_values(table, model.panel)
    rows = table.obs_names.get_indexer(model.reference.obs_names)
    np.testing.assert_allclose(model.reference.values.toarray(), raw[rows], rtol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2.5, True])
def test_smooth_targets_must_be_an_int_of_at_least_two(k):
    with pytest.raises(ValueError, match="smooth_targets"):
        TrainSettings(smooth_targets=k)


@pytest.fixture(scope="module")
def tiny_candidates(tiny_config):
    net = tiny_config.to_dict()
    return (
        ("tiny", "vit-tiny", net),
        ("tiny, colour_norm=section", "vit-tiny", {**net, "colour_norm": "section"}),
        # Identical to the second: fitted once.
        ("tiny, colour_norm=section again", "vit-tiny", {**net, "colour_norm": "section"}),
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def auto_run(tissue, tiny_candidates, tmp_path_factory):
    """fit(preset="auto") over the tiny candidates, and what it logged."""
    records, logger = _Records(), logging.getLogger("comtip_sc")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_auto, "AUTO_CANDIDATES", tiny_candidates)
            root = str(tmp_path_factory.mktemp("auto"))
            model = cs.tl.fit(tissue, preset="auto", default_root_dir=root, **QUICK)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return model, "\n".join(records.messages)


@pytest.fixture(scope="module")
def auto_model(auto_run):
    return auto_run[0]


def test_auto_returns_the_best_scoring_candidate_and_records_every_one(auto_model, tiny_candidates):
    record = auto_model.history["auto"]
    table = pd.DataFrame(record["table"]).set_index("candidate")
    assert list(table.index) == [name for name, _, _ in tiny_candidates]
    fitted = table.loc[["tiny", "tiny, colour_norm=section"]]
    for col in ("retrieval", "head", "zero_shot", "hybrid", "simple bar", "score"):
        assert np.isfinite(fitted[col].astype(float)).all(), col
    # The score is the best read-out; the bar is recorded beside it but never chosen.
    readouts = fitted[["retrieval", "head", "zero_shot", "hybrid"]].astype(float)
    np.testing.assert_allclose(fitted["score"].astype(float), readouts.max(axis=1))
    assert table.loc["tiny, colour_norm=section again", "same_as"] == "tiny, colour_norm=section"
    scores = fitted["score"].astype(float)
    assert record["chosen"] == scores.index[int(np.argmax(scores.to_numpy()))]
    # The returned model is the chosen one: its own self-check gives the chosen score.
    assert _auto.candidate_score(auto_model.validation_) == pytest.approx(scores[record["chosen"]])
    expected_norm = None if record["chosen"] == "tiny" else "section"
    assert auto_model.colour_norm == expected_norm
    assert auto_model.history["val_sections"] == ["b_spots"]


def test_auto_is_saved_with_the_model(auto_model, tmp_path):
    auto_model.save(tmp_path / "m")
    loaded = cs.model.ComtipModel.load(tmp_path / "m")
    assert loaded.history["auto"]["chosen"] == auto_model.history["auto"]["chosen"]


def test_auto_logs_the_candidates_table(auto_run):
    model, text = auto_run
    assert "preset='auto', PCC-ALL on the held-out sections" in text
    assert f"Kept {model.history['auto']['chosen']!r}" in text
    assert "is the same as 'tiny, colour_norm=section' here; not fitted again" in text


def test_auto_needs_held_out_sections_and_no_config(tissue, tiny_config):
    one = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=20)
    with pytest.raises(ValueError, match="at least two sections"):
        cs.tl.fit(one, preset="auto", max_epochs=1)
    with pytest.raises(ValueError, match="val_sections=None"):
        cs.tl.fit(tissue, preset="auto", val_sections=None)
    with pytest.raises(ValueError, match="config="):
        cs.tl.fit(tissue, preset="auto", config=tiny_config)
    with pytest.raises(ValueError, match="check=True"):
        cs.tl.fit(tissue, preset="auto", check=False)


def test_command_line_accepts_auto_and_smoothed_targets():
    args = build_parser().parse_args(
        ["fit", "toy", "--out", "m", "--preset", "auto", "--smooth-targets", "6"]
    )
    assert (args.preset, args.smooth_targets) == ("auto", 6)
