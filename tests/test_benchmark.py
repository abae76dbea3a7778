"""The benchmark entry points run end to end on tiny settings (the real runs are documented in benchmarks/)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from benchmarks.__main__ import main as main_bench
from benchmarks.harness import method_names
from benchmarks.report import METRICS

from comtip_sc.cli import main
from comtip_sc.pp import subset_sections

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_benchmark_smoke_writes_every_row(tmp_path: Path) -> None:
    # Two seeds on two spawned worker processes: the path `python -m benchmarks --preset cpu --jobs 2` takes.
    args = ["--preset", "smoke", "--out", str(tmp_path), "-q", "--seeds", "0,1", "--jobs", "2"]
    assert main_bench(args) == 0
    df = pd.read_csv(tmp_path / "expression_prediction_smoke.csv")
    folds = sorted(df["fold"].unique())
    assert folds == ["toyA→toyB", "toyB→toyA"]
    for fold in folds:
        for seed in (0, 1):
            rows = df[(df["fold"] == fold) & (df["seed"] == seed)]
            assert sorted(rows["method"]) == sorted(method_names())
    assert np.isfinite(df[METRICS].to_numpy(float)).all()
    # The constant predictor scores exactly 0 by the protocol's rule for constant genes.
    assert (df.loc[df["method"] == "train mean", "PCC-ALL"] == 0).all()
    # Different seeds train different models: a per-seed spread exists for the trained rows.
    pcc = df[df["method"] == "CoMTIP · retrieval"].pivot(index="fold", columns="seed", values="PCC-ALL")
    assert not np.allclose(pcc[0], pcc[1])
    md = (tmp_path / "expression_prediction_smoke.md").read_text()
    assert "Mean over folds and seeds" in md and "torch" in md and "seeds 0, 1" in md
    assert "2 worker process(es)" in md
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must be renamed into place"


def test_subset_sections_keeps_region_links() -> None:
    import comtip_sc as cs
    from comtip_sc._sections import resolve_sections

    a = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, sample_id="s1")
    table = a.tables["table"]
    keep = np.arange(table.n_obs) % 2 == 0
    sub = subset_sections(a, keep)
    assert sub.tables["table"].n_obs == keep.sum()
    assert sub.tables["table"].uns["spatialdata_attrs"]["region"] == ["s1_spots"]
    assert [s.region for s in resolve_sections(sub)] == ["s1_spots"]


def _train_step_module():
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_step"] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_train_step_tiny_table() -> None:
    ts = _train_step_module()
    rows = ts.run(
        ts.tiny_configs(),
        [2, 4],
        [16, 64],
        gene_batch=2,
        repeats=1,
        warmup=1,
        device="cpu",
        log=lambda *_: None,
    )
    assert all(math.isfinite(r.step_s) and r.step_s > 0 for r in rows)
    assert [r.genes for r in rows if r.sweep == "genes"] == [16, 64]
    text = ts.to_markdown(rows, ["# t"])
    assert "## Genes per sentence" in text and "| 64 |" in text


def test_benchmark_rejects_bad_seeds(tmp_path: Path, capsys) -> None:
    assert main_bench(["--preset", "smoke", "--out", str(tmp_path), "--seeds", "0,x"]) != 0
    assert "--seeds must be comma-separated integers, got '0,x'" in capsys.readouterr().err


def test_summary_means_over_folds_and_seeds() -> None:
    from benchmarks.report import per_fold, summary

    rows = []
    for fold, seed, pcc in [("a", 0, 0.1), ("b", 0, 0.3), ("a", 1, 0.2), ("b", 1, 0.6)]:
        rows.append(
            {
                "dataset": "d",
                "fold": fold,
                "seed": seed,
                "method": "m",
                "n_train": 1,
                "n_test": 1,
                "n_genes": 1,
                "fit_s": 1.0,
                "predict_s": 0.0,
                **dict.fromkeys(METRICS, pcc),
            }
        )
    df = pd.DataFrame(rows)
    row = summary(df).iloc[0]
    assert row["PCC-ALL"] == pytest.approx(0.3)
    # Seed 0 averages 0.2 over folds, seed 1 0.4: their sample sd is 0.1414.
    assert row["PCC-ALL sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert (row["n_folds"], row["n_seeds"]) == (2, 2)
    folds = per_fold(df).set_index("fold")
    assert folds.loc["b", "PCC-ALL by seed"] == "0.300 / 0.600"
    assert folds.loc["b", "PCC-ALL"] == pytest.approx(0.45)


def test_benchmark_datasets_subset_and_bad_name(tmp_path: Path, capsys) -> None:
    assert main_bench(["--preset", "smoke", "--out", str(tmp_path), "--datasets", "mob"]) != 0
    assert "--datasets must name some of ['toy'], got 'mob'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_chosen_datasets_keeps_the_preset_order() -> None:
    from benchmarks.harness import get_preset
    from benchmarks.run import _chosen_datasets, fold_keys

    keys = fold_keys(get_preset("cpu"))
    assert _chosen_datasets(keys, None) == ["her2st", "mob"]
    assert _chosen_datasets(keys, "mob, her2st") == ["her2st", "mob"]
    assert _chosen_datasets(keys, "mob") == ["mob"]
    with pytest.raises(ValueError, match="got ','"):
        _chosen_datasets(keys, ",")


@pytest.mark.slow
def test_benchmark_per_fit_tasks_give_the_same_rows(tmp_path: Path) -> None:
    # --per-fit only changes how the work is cut into worker tasks, not what any row computes.
    common = ["--preset", "smoke", "-q", "--seeds", "0"]
    assert main_bench([*common, "--out", str(tmp_path / "fold")]) == 0
    assert main_bench([*common, "--out", str(tmp_path / "fit"), "--per-fit", "--jobs", "2"]) == 0
    cols = ["dataset", "fold", "seed", "method", *METRICS]
    by_fold = pd.read_csv(tmp_path / "fold" / "expression_prediction_smoke.csv")[cols]
    by_fit = pd.read_csv(tmp_path / "fit" / "expression_prediction_smoke.csv")[cols]
    assert len(by_fold) == 2 * len(method_names())
    pd.testing.assert_frame_equal(by_fold, by_fit)
    meta = json.loads((tmp_path / "fit" / "expression_prediction_smoke.json").read_text())
    assert meta["per_fit"] is True


def test_comtip_benchmark_says_where_the_harness_lives(capsys) -> None:
    # The harness is not installed with the library; the command points to the checkout instead.
    assert main(["benchmark", "--preset", "cpu"]) == 2
    assert "python -m benchmarks" in capsys.readouterr().err
