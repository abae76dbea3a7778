import argparse

import anndata as ad
import numpy as np
import pytest

from comtip_sc._predictions import get_predictions
from comtip_sc.cli import EXIT_DATA, EXIT_OK, EXIT_USAGE, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["fit", "embed", "predict", "demo"])
def test_every_option_is_documented(command, capsys):
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (
            f"{command} {action.option_strings or action.dest} has no help"
        )
    assert main([command, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out, f"{flag} missing from `comtip {command} --help`"


def test_exit_codes(tmp_path, capsys):
    assert main(["no-such-command"]) == EXIT_USAGE
    assert main(["fit", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "m")]) == EXIT_DATA
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert main(["fit", "toy", "--out", str(tmp_path / "m")]) == EXIT_DATA
    assert "--overwrite" in capsys.readouterr().err


def test_fit_embed_predict_from_the_shell(tmp_path, capsys):
    model = tmp_path / "model"
    code = main(
        [
            "fit",
            "toy",
            "--out",
            str(model),
            "--preset",
            "vit-tiny",
            "--tile-px",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--n-top-genes",
            "40",
            "--seed",
            "0",
            "--colour-norm",
            "section",
            "--section-balance",
            "0.5",
            "--log-dir",
            str(tmp_path),
            "-q",
        ]
    )
    assert code == EXIT_OK and (model / "model.safetensors").is_file()
    from comtip_sc.model import ComtipModel

    loaded = ComtipModel.load(model)
    assert loaded.colour_norm == "section" and loaded.history["section_balance"] == 0.5
    out = tmp_path / "pred.h5ad"
    assert (
        main(["predict", "toy", "--model", str(model), "--out", str(out), "--method", "retrieval", "-q"])
        == EXIT_OK
    )
    table = ad.read_h5ad(out)
    pred = get_predictions(table, "comtip_pred")
    assert pred.shape == (table.n_obs, 40) and set(pred.columns) <= set(table.var_names)
    assert np.isfinite(pred.to_numpy()).all()
    zs = tmp_path / "zs.h5ad"
    cmd = ["predict", "toy", "--model", str(model), "--out", str(zs), "--method", "zero_shot"]
    assert main([*cmd, "--temperature", "0.5", "-q"]) == EXIT_OK
    assert ad.read_h5ad(zs).uns["comtip"]["predict"]["comtip_pred"]["temperature"] == 0.5
    old = tmp_path / "old.h5ad"
    with pytest.warns(FutureWarning, match="--key-added"):
        assert main([*cmd[:5], str(old), "--method", "zero_shot", "--layer-added", "mine", "-q"]) == EXIT_OK
    assert "mine" in ad.read_h5ad(old).layers
    emb = tmp_path / "emb.h5ad"
    assert main(["embed", "toy", "--model", str(model), "--out", str(emb), "-q"]) == EXIT_OK
    np.testing.assert_allclose(np.linalg.norm(ad.read_h5ad(emb).obsm["X_comtip"], axis=1), 1.0, rtol=1e-5)
    assert main(["predict", "toy", "--model", str(model), "--out", str(tmp_path / "x.csv")]) == EXIT_DATA
    # Backbone arguments reach timm: a 1-block ViT has one transformer block in the saved model.
    small = tmp_path / "small"
    args = ["fit", "toy", "--out", str(small), "--preset", "vit-tiny", "--tile-px", "32", "--epochs", "1"]
    args += ["--batch-size", "64"]
    args += [
        "--backbone-kwargs",
        '{"depth": 1}',
        "--spot-diameter-um",
        "55",
        "--log-dir",
        str(tmp_path),
        "-q",
    ]
    assert main(args) == EXIT_OK
    from comtip_sc.model import ComtipModel

    assert len(ComtipModel.load(small).network.vision.backbone.blocks) == 1
