"""The command line answers at once and checks its arguments before any heavy work."""

import inspect
import subprocess
import sys

import pytest

from comtip_sc._constants import EMBED_BATCH_CPU, EMBED_BATCH_GPU, N_TOP_GENES, TRAIN_BATCH_SIZE
from comtip_sc._presets import preset_training
from comtip_sc.cli import EXIT_DATA, EXIT_OK, build_parser, main

#: Modules the parser must not import: loading them takes seconds and a gigabyte.
HEAVY = ("torch", "timm", "lightning", "scanpy", "spatialdata", "anndata", "squidpy")


@pytest.mark.parametrize("argv", [[], ["fit"], ["embed"], ["predict"], ["demo"], ["benchmark"]])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from comtip_sc.cli import main\n"
        f"rc = main({[*argv, '--help']!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert rc == 0 and not heavy, (rc, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: comtip" in done.stdout


def _options(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.dest: a for a in sub._actions}


def test_help_states_the_api_defaults():
    import comtip_sc as cs

    fit = _options("fit")
    assert f"cpu {preset_training('cpu')['max_epochs']}" in fit["epochs"].help
    assert "cpu 12" in fit["epochs"].help  # the cpu preset's real epochs
    assert str(N_TOP_GENES) in fit["n_top_genes"].help and str(TRAIN_BATCH_SIZE) in fit["batch_size"].help
    assert inspect.signature(cs.tl.fit).parameters["n_top_genes"].default == N_TOP_GENES
    assert cs.train.TrainSettings().batch_size == TRAIN_BATCH_SIZE
    assert cs.train.TrainSettings.preset("cpu").max_epochs == preset_training("cpu")["max_epochs"]
    import torch

    from comtip_sc.model._inference import embed_batch_size

    assert embed_batch_size(torch.device("cpu")) == EMBED_BATCH_CPU
    for command in ("embed", "predict"):
        opts = _options(command)
        assert f"default: {EMBED_BATCH_CPU} on the CPU, {EMBED_BATCH_GPU} on a GPU" in opts["batch_size"].help
    for command in ("fit", "embed", "predict", "demo"):
        # Left unset, these options are not passed: the API's own defaults apply.
        opts = _options(command)
        assert all(opts[o].default is None for o in ("batch_size", "num_workers", "accelerator"))


def test_every_command_takes_overwrite():
    for command in ("fit", "embed", "predict", "demo"):
        assert "overwrite" in _options(command)


def test_bad_paths_are_refused_before_loading_anything(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    # Wrong extension, missing input, missing model: refused in the parser's process without torch.
    code = (
        "import sys\n"
        "from comtip_sc.cli import main\n"
        f"m, t = {str(model)!r}, {str(tmp_path)!r}\n"
        "assert main(['predict', 'toy', '--model', m, '--out', t + '/p.csv']) == 3\n"
        "assert main(['embed', t + '/missing.zarr', '--model', m, '--out', t + '/e.h5ad']) == 3\n"
        "assert main(['embed', 'toy', '--model', t + '/nomodel', '--out', t + '/e.h5ad']) == 3\n"
        "assert main(['fit', 'toy', '--out', m]) == 3\n"
        "assert main(['demo', '--out', m]) == 3\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "--out must end in .h5ad" in err and "missing.zarr does not exist" in err
    assert "nomodel is not a saved comtip_sc model" in err and err.count("--overwrite") == 2


def test_existing_result_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "pred.h5ad"
    out.write_text("old")
    argv = ["predict", "toy", "--model", str(tmp_path), "--out", str(out)]
    assert main(argv) == EXIT_DATA
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "old"


def test_benchmark_help_exits_zero(capsys):
    assert main(["benchmark", "--help"]) == EXIT_OK
    assert "python -m benchmarks" in capsys.readouterr().out
