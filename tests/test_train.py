"""The training floor: settings, held-out sections, safe weight reads, and a fit that leaves no files behind."""

import os

import pytest
import torch

import comtip_sc as cs
from comtip_sc.model import ComtipConfig, read_weights
from comtip_sc.train import TrainSettings, held_out_sections, resolve_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NotAWeight:
    """Any class: unpickling it could run code, so the safe reader must refuse it."""


def test_fit_keywords_route_to_settings_network_and_trainer():
    cfg, st, rest = resolve_settings(
        "cpu", None, None, {"max_epochs": 3, "lr": None, "tile_px": 64, "enable_progress_bar": False}
    )
    assert st == TrainSettings(max_epochs=3)  # lr=None keeps the preset's
    assert cfg == ComtipConfig(tile_px=64)
    assert rest == {"enable_progress_bar": False}
    cfg, st, _ = resolve_settings("vit-tiny", None, TrainSettings(batch_size=8), {})
    assert (cfg.backbone, st.batch_size, st.max_epochs) == ("vit_tiny_patch16_224", 8, 12)
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=1)


def test_presets_are_complete_and_the_default_config_is_cpu():
    assert ComtipConfig() == ComtipConfig.preset("cpu")
    assert TrainSettings() == TrainSettings.preset("cpu")
    vit = ComtipConfig.preset("vit-tiny")
    assert (vit.pretrained, vit.freeze_backbone, vit.token_depth) == (False, "none", 0)
    # A stored dict without the trunk fields means what it meant in 0.1: a ViT-B/32 trained whole.
    assert ComtipConfig.from_dict({"mfm": False}).backbone == "vit_base_patch32_224"


def test_auto_holds_out_the_smallest_patient_else_the_last_section():
    names = ["A1", "C2", "C3", "C4"]
    assert held_out_sections(names, ["A", "C", "C", "C"], [300, 200, 200, 200], "auto") == [0]
    assert held_out_sections(names, ["A", "A", "C", "C"], [10, 10, 50, 50], "auto") == [0, 1]
    assert held_out_sections(names, [None] * 4, [1] * 4, "auto") == [3]
    assert held_out_sections(["only"], [None], [5], "auto") == []
    assert held_out_sections(names, ["A"] * 4, [1] * 4, "auto") == [3]  # one patient: by section
    assert held_out_sections(names, [None] * 4, [1] * 4, ["C3"]) == [2]
    with pytest.raises(ValueError, match="C9"):
        held_out_sections(names, [None] * 4, [1] * 4, "C9")


def test_weights_are_read_without_unpickling_objects(tmp_path):
    good = tmp_path / "trunk.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, good)
    assert torch.equal(read_weights(good, key="state_dict")["w"], torch.ones(3))
    bad = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "payload": NotAWeight()}, bad)
    with pytest.raises(ValueError, match=r"evil\.pth"):
        read_weights(bad)
    with pytest.raises(KeyError, match="nothing"):
        read_weights(good, key="nothing")
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "missing.bin")


def test_fit_writes_nothing_into_the_working_directory(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sdata = [
        cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=20, seed=s, sample_id=f"s{s}") for s in (1, 2)
    ]
    before = set(os.listdir(tmp_path))
    model = cs.tl.fit(
        sdata, config=tiny_config, tile_um=100, max_epochs=1, batch_size=8, enable_progress_bar=False
    )
    assert set(os.listdir(tmp_path)) == before
    # Two datasets of one section each: the last is held out, the best epoch's checkpoint was read back and then removed.
    assert model.history["val_sections"] and model.history["best_checkpoint"] == ""
    assert model.history["settings"]["batch_size"] == 8
    # The self-check scored every read-out and the simple bar on the held-out section, and travels with the model.
    check = model.validation_
    assert list(check.index[:4]) == ["retrieval", "head", "zero_shot", "hybrid"]
    assert check.index[4].startswith("simple bar (") and check["n_spots"].iloc[0] == 25
    assert check["pcc_all"].between(-1, 1).all() and check.loc[check.index[4], "vs_bar"] == 0
    assert "self-check: best" in repr(model)
    model.save(tmp_path / "m")
    assert cs.model.ComtipModel.load(tmp_path / "m").validation_.equals(check)
