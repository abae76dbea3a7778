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
import torch
from benchmarks.__main__ import main as main_bench
from benchmarks.clustering import EMBEDDINGS
from benchmarks.colour_features import COLOUR_ROWS
from benchmarks.harness import AUTO, PARTS, method_names
from benchmarks.report import CLUSTER_METRICS, DELTA, METRICS, SIMPLE_BAR

from comtip_sc.cli import main
from comtip_sc.pp import subset_sections

ROOT = Path(__file__).parents[1]
#: The toy folds train on one section, where preset='auto' has nothing to hold out: every other part runs.
ONE_SECTION_PARTS = [p for p in PARTS if p != AUTO]


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
            assert sorted(rows["method"]) == sorted(method_names(ONE_SECTION_PARTS))
    assert np.isfinite(df[METRICS].to_numpy(float)).all()
    # The constant predictor scores exactly 0 by the protocol's rule for constant genes.
    assert (df.loc[df["method"] == "train mean", "PCC-ALL"] == 0).all()
    # Different seeds train different models: a per-seed spread exists for the trained rows.
    pcc = df[df["method"] == "CoMTIP · retrieval"].pivot(index="fold", columns="seed", values="PCC-ALL")
    assert not np.allclose(pcc[0], pcc[1])
    assert set(COLOUR_ROWS) <= set(method_names())
    # The toy tissue's simulated types stand in for region labels: every embedding scored on every fold.
    cl = pd.read_csv(tmp_path / "clustering_smoke.csv")
    for fold in folds:
        for seed in (0, 1):
            rows = cl[(cl["fold"] == fold) & (cl["seed"] == seed)]
            assert sorted(rows["embedding"]) == sorted(EMBEDDINGS)
    assert np.isfinite(cl[CLUSTER_METRICS].to_numpy(float)).all()
    assert (cl["n_classes"] > 1).all() and (cl["n_spots"] == cl["n_spots"].iloc[0]).all()
    md = (tmp_path / "expression_prediction_smoke.md").read_text()
    assert "Mean over folds and seeds" in md and "torch" in md and "seeds 0, 1" in md
    assert SIMPLE_BAR in md and DELTA in md and "## Clustering on toy toyB" in md
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


def test_row_sets_split_the_rows_and_both_keep_the_baselines(capsys) -> None:
    from benchmarks.harness import ROW_SETS, STNET, UNSEEN

    core, ablations, auto = (set(method_names(ROW_SETS[k])) for k in ("core", "ablations", "auto"))
    assert core | ablations | auto == set(method_names())
    # Every model row stands beside the trivial baselines of the same run.
    assert set(COLOUR_ROWS) | {STNET} <= core & ablations & auto
    # The auto run adds its own rows and shares nothing with core but the baselines.
    assert auto - core == {m for m in method_names() if m.startswith(AUTO)} != set()
    assert not any(m.startswith("CoMTIP") for m in core & auto)
    assert "CoMTIP + stain jitter · head, 6-NN smoothed" in core and UNSEEN in ablations
    assert not any(m.startswith("CoMTIP −") for m in core)
    assert main_bench(["--preset", "smoke", "--rows", "some"]) != 0
    assert "invalid choice: 'some'" in capsys.readouterr().err


def test_chosen_datasets_keeps_the_preset_order() -> None:
    from benchmarks.presets import get_preset
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
    assert len(by_fold) == 2 * len(method_names(ONE_SECTION_PARTS))
    pd.testing.assert_frame_equal(by_fold, by_fit)
    cl_fold, cl_fit = (pd.read_csv(tmp_path / d / "clustering_smoke.csv") for d in ("fold", "fit"))
    pd.testing.assert_frame_equal(cl_fold, cl_fit)
    meta = json.loads((tmp_path / "fit" / "expression_prediction_smoke.json").read_text())
    assert meta["per_fit"] is True


def test_comtip_benchmark_says_where_the_harness_lives(capsys) -> None:
    # The harness is not installed with the library; the command points to the checkout instead.
    assert main(["benchmark", "--preset", "cpu"]) == 2
    assert "python -m benchmarks" in capsys.readouterr().err


def test_colour_stats_counts_and_histograms() -> None:
    from benchmarks.colour_features import N_FEATURES, colour_stats

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(5, 12, 10, 3), dtype=np.uint8)
    x = colour_stats(tiles)
    assert x.shape == (5, 54) == (5, N_FEATURES)
    flat = tiles.reshape(5, -1, 3).astype(float) / 255
    np.testing.assert_allclose(x[:, :3], flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(x[:, 3:6], flat.std(1), rtol=1e-4)
    hist = x[:, 6:].reshape(5, 3, 16)
    np.testing.assert_allclose(hist.sum(-1), 1.0, rtol=1e-6)
    # Tile 2's green histogram, counted by hand.
    expected = np.histogram(tiles[2, ..., 1], bins=16, range=(0, 256))[0] / 120
    np.testing.assert_allclose(hist[2, 1], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        colour_stats(tiles.astype(np.float32))


def test_neighbour_average_never_mixes_sections() -> None:
    from benchmarks.colour_features import neighbour_average

    rng = np.random.default_rng(1)
    # Two sections on the very same coordinates: only the section keeps neighbours apart.
    xy = rng.uniform(0, 10, (20, 2))
    centres = np.vstack([xy, xy])
    sections = ["a"] * 20 + ["b"] * 20
    pred = np.vstack([rng.normal(0, 1, (20, 3)), rng.normal(100, 1, (20, 3))])
    out = neighbour_average(pred, centres, sections, k=6)
    assert np.abs(out[:20]).max() < 10 and np.abs(out[20:] - 100).max() < 10
    # Each spot's value is the mean of its own 6 nearest spots of its section.
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :6]
    np.testing.assert_allclose(out[:20], pred[:20][nearest].mean(1), rtol=1e-6)
    np.testing.assert_allclose(neighbour_average(pred, centres, sections, k=1), pred)


def test_zscore_per_section_standardises_each_section() -> None:
    from benchmarks.colour_features import zscore_per_section

    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(0, 1, (30, 4)), rng.normal(50, 9, (10, 4))])
    x[:, 3] = 7.0  # a constant feature
    z = zscore_per_section(x, ["a"] * 30 + ["b"] * 10)
    for rows in (slice(0, 30), slice(30, 40)):
        np.testing.assert_allclose(z[rows, :3].mean(0), 0, atol=1e-9)
        np.testing.assert_allclose(z[rows, :3].std(0), 1, rtol=1e-9)
    assert (z[:, 3] == 0).all()


def test_colour_predictions_give_every_row() -> None:
    from benchmarks.colour_features import colour_predictions

    rng = np.random.default_rng(3)
    feats = {c: (rng.normal(size=(60, 54)), rng.normal(size=(20, 54))) for c in (False, True)}
    y = feats[False][0][:, :4] @ rng.normal(size=(4, 5))
    out = dict(
        colour_predictions(feats, y, ["s"] * 60, np.arange(60) % 5, ["t"] * 20, rng.uniform(size=(20, 2)))
    )
    assert list(out) == COLOUR_ROWS and len(set(COLOUR_ROWS)) == 8
    assert all(p.shape == (20, 5) and np.isfinite(p).all() for p in out.values())
    # The plain spot-tile ridge recovers a linear signal on its own test features.
    truth = feats[False][1][:, :4] @ np.linalg.lstsq(feats[False][0][:, :4], y, rcond=None)[0]
    assert np.corrcoef(out["colour · spot tile"].ravel(), truth.ravel())[0, 1] > 0.9


def test_simple_bar_row_and_margins() -> None:
    from benchmarks.report import summary, with_simple_bar

    rows = []
    for dataset, scores in {
        "d1": {"colour · spot tile": 0.2, "colour · 3× context": 0.3, "model": 0.25},
        "d2": {"colour · spot tile": 0.5, "colour · 3× context": 0.1, "model": 0.7},
    }.items():
        for method, pcc in scores.items():
            rows.append(
                {
                    "dataset": dataset,
                    "fold": "f",
                    "seed": 0,
                    "method": method,
                    "n_genes": 10,
                    **dict.fromkeys(METRICS, pcc),
                }
            )
    rows.append({**rows[-1], "method": "held-out genes", "n_genes": 2})
    df = pd.DataFrame(rows)
    table, best = with_simple_bar(summary(df), df)
    assert best == {"d1": "colour · 3× context", "d2": "colour · spot tile"}
    bar = table[table["method"] == SIMPLE_BAR].set_index("dataset")["PCC-ALL"]
    assert bar.to_dict() == pytest.approx({"d1": 0.3, "d2": 0.5, "all": 0.4})
    delta = table.set_index(["dataset", "method"])[DELTA]
    assert delta[("d1", "model")] == pytest.approx(-0.05)
    assert delta[("d2", "model")] == pytest.approx(0.2)
    assert delta[("all", "model")] == pytest.approx(0.475 - 0.4)
    assert np.isnan(delta[("d2", "held-out genes")])


def test_her2st_region_labels_by_array_position(tmp_path: Path) -> None:
    import anndata as ad
    from benchmarks.clustering import her2st_region_labels

    obs = pd.DataFrame(
        {
            "sample": ["A1", "A1", "A1", "A1", "C2"],
            "array_row": [21, 14, 5, 8, 21],
            "array_col": [9, 9, 3, 4, 9],
        },
        index=[f"s{i}" for i in range(5)],
    )
    table = ad.AnnData(np.zeros((5, 1), np.float32), obs=obs)
    path = tmp_path / "lbl.tsv"
    pd.DataFrame(
        {
            "x": [9.02, 9.018, 4.1],
            "y": [20.994, 13.999, 7.9],
            "label": ["invasive cancer", "adipose tissue", "undetermined"],
        }
    ).to_csv(path, sep="\t", index=False)
    labels = her2st_region_labels(path, table)
    assert labels.tolist()[:2] == ["invasive cancer", "adipose tissue"]
    # No label file row, an `undetermined` spot, another section: no label.
    assert labels.iloc[2:].isna().all()
    pd.DataFrame({"x": [1.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(KeyError, match="label"):
        her2st_region_labels(path, table)


def test_her2st_a1_region_labels_on_the_real_table(shared_data: Path) -> None:
    from benchmarks.clustering import HER2ST_LABELS, her2st_region_labels

    import comtip_sc as cs

    table = cs.datasets.her2st(shared_data / "her2st", sections=["A1"]).tables["table"]
    labels = her2st_region_labels(shared_data / "her2st" / HER2ST_LABELS, table)
    raw = pd.read_csv(shared_data / "her2st" / HER2ST_LABELS, sep="\t")
    # Every spot of A1 finds its row in the file; only the undetermined ones stay unlabelled.
    assert labels.notna().sum() == table.n_obs - (raw["label"] == "undetermined").sum()
    assert set(labels.dropna()) == set(raw["label"]) - {"undetermined"}


def test_leiden_resolution_matches_the_class_count() -> None:
    from benchmarks.clustering import cluster_scores

    rng = np.random.default_rng(4)
    centres = rng.uniform(0, 10, (90, 2))
    labels = np.repeat(["a", "b", "c"], 30)
    x = np.vstack([rng.normal(m, 0.2, (30, 5)) for m in (0, 4, 8)])
    scores = cluster_scores(x, labels, centres)
    assert scores["n_clusters"] == 3 and scores["ARI"] == pytest.approx(1.0)
    assert scores["probe bal. acc."] == pytest.approx(1.0)
    noise = cluster_scores(rng.normal(size=(90, 5)), labels, centres)
    assert noise["ARI"] < 0.2 and noise["NMI"] < 0.3


def _throughput_module():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_slide_and_retrieval_at_tiny_sizes(tmp_path: Path) -> None:
    import zarr
    from benchmarks.slide import slide_sdata, write_slide

    tp = _throughput_module()
    write_slide(tmp_path / "slide.zarr", 2100)  # 3 × 3 chunks, the last row and column partial
    arr = zarr.open_array(str(tmp_path / "slide.zarr"), mode="r")
    assert arr.shape == (3, 2100, 2100) and arr.chunks == (3, 1024, 1024)
    # Chunks repeat a few textures (so the slide compresses): chunk (0, 2) repeats chunk (0, 0), chunk (1, 0)
    # holds another texture.
    np.testing.assert_array_equal(arr[:, :64, :52], arr[:, :64, 2048:])
    assert not np.array_equal(arr[:, :64, :64], arr[:, 1024:1088, :64])
    sdata = slide_sdata(tmp_path / "slide.zarr", 30)
    from comtip_sc.pp import SpotTiles

    tiles = SpotTiles(sdata, tile_um=150, tile_px=32, spot_diameter_um=55.0)
    assert len(tiles) == 30 and tiles.take([0, 29]).shape == (2, 32, 32, 3)
    assert tiles.take().std() > 0  # textures, not a blank slide
    r = tp.child_retrieval(3000, 200, 5)
    assert r["seconds"] > 0 and r["peak_gb"] >= r["before_gb"] > 0


def test_targets_read_from_the_run_tables() -> None:
    from benchmarks.targets import MARGIN, target_rows, targets_md

    table = pd.DataFrame(
        {
            "dataset": ["d"] * 4 + ["all"],
            "method": [
                SIMPLE_BAR,
                "CoMTIP · head",
                "CoMTIP · zero-shot",
                "colour · spot tile",
                "CoMTIP · head",
            ],
            "PCC-ALL": [0.2, 0.2 + MARGIN + 0.001, 0.19, 0.2, 0.9],
            DELTA: [np.nan, MARGIN + 0.001, -0.01, 0.0, 0.7],
        }
    )
    clusters = pd.DataFrame(
        {"dataset": "d", "section": "S", "embedding": EMBEDDINGS, "probe bal. acc.": [0.4, 0.41, 0.3, 0.9]}
    )
    rows = target_rows(table, clusters)
    # The "all" block is no dataset; the bar itself and the colour rows are never read as CoMTIP.
    assert rows["row"].tolist() == ["CoMTIP · head", "CoMTIP · zero-shot", EMBEDDINGS[0]]
    assert rows["met"].tolist() == [True, False, False]
    assert rows["to reach"].tolist() == pytest.approx([0.2 + MARGIN, 0.2, 0.41])
    md = "\n".join(targets_md(table, clusters))
    assert "no (short by 0.010)" in md and "| yes |" in md
    # A partial run without colour rows has no bar: no targets yet, and no error.
    assert targets_md(table.drop(columns=[DELTA]).iloc[1:2]) == []


def test_throughput_embed_stage_rows() -> None:
    tp = _throughput_module()
    rows = tp.stage_embed(2, 4, [0], tag="X=1")
    assert [r[0] for r in rows] == ["a"] * 4
    assert all(r[1].endswith("process started with `X=1`") for r in rows)
    assert "of the encoder forward" in rows[-1][2] and "spots/s" in rows[0][2]


def test_step_profile_counts_the_operators_of_one_step() -> None:
    from benchmarks.step_profile import profile_markdown, profile_step

    ts = _train_step_module()
    cfg = ts.tiny_configs()["tiny"]
    prof = profile_step(cfg, ts._batch(2, 16, cfg.tile_px, torch.device("cpu")), warmup=1)
    # A transformer step runs hundreds of kernels forward and more backward; the optimizer touches every tensor.
    assert 50 < prof.forward_ops < prof.backward_ops
    assert prof.optimizer_ops > 0 and prof.kernels is None  # CUDA rows only on a GPU
    text = "\n".join(profile_markdown(prof, "tiny", 2, 16, 0.1))
    assert f"| {prof.forward_ops} / {prof.backward_ops} / {prof.optimizer_ops} |" in text
