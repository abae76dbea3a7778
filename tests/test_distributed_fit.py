"""``comtip fit`` on two CPU processes (gloo DDP), launched the way a cluster launches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import comtip_sc as cs
from comtip_sc.model import ComtipModel

TINY = [
    "--preset",
    "vit-tiny",
    "--tile-px",
    "32",
    "--backbone-kwargs",
    json.dumps(dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)),
]


def _env() -> dict[str, str]:
    src = str(Path(cs.__file__).parents[1])  # the processes import this very comtip_sc
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_two_process_fit_of_two_datasets_writes_one_model(tmp_path, launcher):
    # Two datasets measuring different genes, given to one `comtip fit`.
    a = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0, sample_id="a")
    b = cs.datasets.toy_tissue(n_rows=6, n_cols=5, n_genes=24, seed=1, sample_id="b")
    a.write(tmp_path / "a.zarr")
    b.write(tmp_path / "b.zarr")
    out = tmp_path / "model"
    fit = ["fit", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--out", str(out)]
    fit += [*TINY, "--epochs", "1", "--batch-size", "8", "--n-top-genes", "20", "--seed", "0"]
    fit += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--log-dir", str(tmp_path), "-q"]
    if launcher == "lightning":  # Lightning starts the second process itself
        cmd = [sys.executable, "-m", "comtip_sc.cli", *fit]
    else:  # torchrun starts both (as SLURM's srun would, through Lightning's environment plugins)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        cmd += ["-m", "comtip_sc.cli", *fit]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("Saved ComtipModel") == 1  # the model was written once, by one process
    written = [p.parent for p in tmp_path.rglob("model.safetensors")]
    assert written == [out]
    model = ComtipModel.load(out)
    assert model.history["processes"] == 2
    # The bank holds every spot of both datasets and the union of their panels.
    assert len(model.reference.obs_names) == a.tables["table"].n_obs + b.tables["table"].n_obs
    assert len(model.history["sections"]) == 2
    # Each process encoded a share of the bank; gathered in order, with the best weights, it equals what
    # the saved network embeds for the same spots.
    for sdata in (a, b):
        cs.tl.comtip_embed(sdata, model, key_added="X_check")
    embedded = np.concatenate([s.tables["table"].obsm["X_check"] for s in (a, b)])
    np.testing.assert_allclose(model.reference.image_embeddings, embedded, atol=1e-5)
