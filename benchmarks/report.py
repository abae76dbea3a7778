"""Tables of the benchmark: per-fold rows, means over folds, and the run's header, written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from comtip_sc.io import atomic_path

from .colour_features import COLOUR_ROWS
from .targets import targets_md

METRICS = ["PCC-ALL", "PCC-HEG", "PCC-HVG", "MSE", "MAE"]
COLUMNS = [
    "dataset",
    "fold",
    "seed",
    "method",
    *METRICS,
    "n_train",
    "n_test",
    "n_genes",
    "fit_s",
    "predict_s",
]

SIMPLE_BAR = "simple bar (best colour row per dataset)"
DELTA = "Δ vs simple bar"
CLUSTER_METRICS = ["ARI", "NMI", "probe bal. acc."]
CLUSTER_COLUMNS = [
    "dataset",
    "fold",
    "seed",
    "section",
    "embedding",
    *CLUSTER_METRICS,
    "n_clusters",
    "resolution",
    "n_classes",
    "n_spots",
    "n_dims",
]

NOTES = [
    "Rows marked ≈ are the peer *families* rebuilt in this package on the same backbone, tiles, epochs and "
    "seed, not the published models or checkpoints.",
    "`CoMTIP −MFM` / `−PAAT` / `−value query`: the full model with one term switched off (the value-query "
    "term trains the zero-shot read-out; see docs/model.md). `values-only ≈BLEEP` = "
    "`FLAG_PRESETS['bleep']` (learned gene identities + values, no names, no MFM/PAAT); `names-only ≈OmiCLIP` = "
    "`FLAG_PRESETS['omiclip']` (top-k gene names, no values, no MFM/PAAT).",
    "retrieval: mean of the 50 training spots whose gene-sentence embeddings are closest to the test spot's "
    "image embedding; zero-shot: no bank, each panel gene read from its candidate-value sentence scores by "
    "the per-gene ridge `fit` fitted on the training spots; head: ridge "
    "on CoMTIP's frozen image embeddings of the training spots, its penalty chosen by spatial-block CV "
    "(5 k-means blocks per training section; `cs.tl.comtip_predict(cv_blocks=)`); hybrid: the same ridge "
    "over the embedding and the tiles' colour statistics (spot + 3× context), each block z-scored per "
    "section (`method='hybrid'`); head, TTA: the head on embeddings averaged over the 8 dihedral views of "
    "each test tile (`tta=True`).",
    "`CoMTIP + smoothed targets`: trained with `smooth_targets=5` (each training spot's sentence carries "
    "its mean over itself and its 4 nearest spots); scored, like every row, on raw expression.",
    "`CoMTIP preset='auto'` (its own run, `--rows auto`): `cs.tl.fit(preset='auto', seed=, tile_um=)` as a "
    "user calls it: five candidates, each with its own preset's recipe, trained on the training patient "
    "minus the section the self-check holds out; the best by held-out PCC-ALL is kept. Only folds whose "
    "training patient has two sections or more; `read-out the self-check ranks first` is the read-out "
    "with the best held-out score, scored on the test patient.",
    "Held-out genes: every 5th panel gene (50 of 250) is left out of a second full-CoMTIP fit; its zero-shot "
    "rows score only those genes (n_genes 50), predicted from their names by the model that never saw them, "
    "beside the same genes predicted by the main model that trained on them. Their PCC is over those 50 "
    "genes, so compare these two rows with each other, not with the 250-gene rows.",
    "`image→expr regression ≈ST-Net`: the same vision branch (trunk, freezing, token transformer) + a linear "
    "head trained with MSE on the panel (head bias initialised at the training mean).",
    "`frozen trunk + PCA + ridge ≈HEST`: the same trunk with the config's weights (pretrained where the "
    "preset has them), its pooled features → StandardScaler → PCA(≤256) → ridge, the penalty chosen by the "
    "same spatial-block CV as the head. With a randomly initialised trunk (the smoke preset) it is a "
    "random-feature probe.",
    "`colour · …`: trivial baselines. Per RGB channel the tile's mean, s.d. and 16-bin histogram (54 "
    "features), StandardScaler → ridge with the penalty chosen by the same spatial-block CV; `spot tile` is "
    "the rows' own tile, `3× context` a tile 3× wider around the same centre (same tile_px), alone; "
    "`per-section z`: every feature z-scored within each section, training and test alike; `6-NN avg`: each "
    "test prediction averaged over the spot and its 5 nearest spots of the same section.",
    f"`{SIMPLE_BAR}`: per dataset, the colour row with the highest mean PCC-ALL over that dataset's folds "
    "and seeds (named below the table); in `all`, those rows averaged over every fold. "
    f"`{DELTA}`: a row's PCC-ALL minus the bar's (blank for the held-out-gene rows, scored on other genes).",
    "`train mean`: every spot gets the training mean of each gene; its PCC is 0 by construction, its MSE/MAE "
    "are the floor to beat.",
    "MOB genes are Ensembl ids without symbols, so gene-name text embeddings carry little meaning there.",
    "colour_norm `section` (MOB): every section's tiles standardised per RGB channel onto one reference "
    "colour, for every row. Individual 2 (MOB3) was scanned much brighter than individual 1; see "
    "docs/benchmarks.md for the runs with and without it on both datasets.",
    "`PCC-ALL sd`: standard deviation over seeds of each seed's mean PCC-ALL (how far one retraining moves "
    "a row); `PCC-ALL by seed`: each seed's value on that fold.",
    "`CoMTIP + stain jitter`: the full model trained with `stain_jitter=0.1, colour_jitter=0.1` (HED and "
    "brightness/contrast/saturation jitter; with the frozen trunk, 7 jittered views per tile in the token "
    "cache). `head, 6-NN smoothed`: that head's predictions averaged over each spot's 6 nearest spots "
    "(`cs.tl.comtip_predict(smooth=6)`).",
    "fit_s: training time of the model a row uses (shared by its retrieval / zero-shot / head rows); "
    "predict_s: embedding the test tiles + predicting.",
]


def machine() -> dict[str, str]:
    """Where the numbers were measured."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }


def git_commit() -> str:
    """Short HEAD commit of the source tree, marked when it has uncommitted changes (call it at start)."""
    try:
        here = Path(__file__).parent
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return f"{rev}{' (+ uncommitted changes)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _atomic_write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _md_table(df: pd.DataFrame, floats: dict[str, str]) -> str:
    cols = list(df.columns)
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if c in floats else "---" for c in cols) + "|",
    ]
    for _, r in df.iterrows():
        cells = [
            (format(r[c], floats[c]) if pd.notna(r[c]) else "") if c in floats else str(r[c]) for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric over the folds and seeds of each dataset, then over all folds (``dataset="all"``).

    ``PCC-ALL sd`` is the standard deviation over seeds of each seed's mean PCC-ALL (empty with one seed):
    how much of a difference between two rows one retraining can move. The ``"all"`` block is only added
    when there are several datasets.
    """
    blocks = []
    datasets = list(dict.fromkeys(df["dataset"]))
    for dataset in datasets + (["all"] if len(datasets) > 1 else []):
        part = df if dataset == "all" else df[df["dataset"] == dataset]
        agg = part.groupby("method", sort=False).agg(
            **{m: (m, "mean") for m in METRICS}, n_folds=("fold", "nunique"), n_seeds=("seed", "nunique")
        )
        by_seed = part.groupby(["method", "seed"], sort=False)["PCC-ALL"].mean()
        agg["PCC-ALL sd"] = by_seed.groupby(level="method", sort=False).std(ddof=1)
        blocks.append(agg.reset_index().assign(dataset=dataset))
    out = pd.concat(blocks, ignore_index=True)
    return out[["dataset", "method", "PCC-ALL", "PCC-ALL sd", *METRICS[1:], "n_folds", "n_seeds"]]


def _seed_sd(part: pd.DataFrame) -> float:
    return part.groupby("seed")["PCC-ALL"].mean().std(ddof=1)


def with_simple_bar(summ: pd.DataFrame, df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """:func:`summary` with a :data:`SIMPLE_BAR` row first in each block and a :data:`DELTA` column.

    The bar of a dataset is its colour row with the highest mean PCC-ALL; the bar of ``"all"`` averages
    those rows over every fold and seed. Rows scored on fewer genes than the bar get no delta.

    Returns
    -------
    The table, and ``{dataset: the colour row that is its bar}``.

    """
    colour = summ[summ["method"].isin(COLOUR_ROWS) & (summ["dataset"] != "all")]
    if colour.empty:
        return summ, {}
    best = {d: g.loc[g["PCC-ALL"].idxmax(), "method"] for d, g in colour.groupby("dataset", sort=False)}
    picked = pd.concat([df[(df["dataset"] == d) & (df["method"] == m)] for d, m in best.items()])
    blocks = []
    for dataset, block in summ.groupby("dataset", sort=False):
        part = picked if dataset == "all" else picked[picked["dataset"] == dataset]
        if part.empty:
            blocks.append(block)
            continue
        bar = {
            "dataset": dataset,
            "method": SIMPLE_BAR,
            **{m: part[m].mean() for m in METRICS},
            "PCC-ALL sd": _seed_sd(part),
            "n_folds": part["fold"].nunique(),
            "n_seeds": part["seed"].nunique(),
        }
        rows = df if dataset == "all" else df[df["dataset"] == dataset]
        fewer = set(rows.loc[rows["n_genes"] < part["n_genes"].max(), "method"])
        delta = (block["PCC-ALL"] - bar["PCC-ALL"]).where(~block["method"].isin(fewer))
        blocks += [pd.DataFrame([bar]), block.assign(**{DELTA: delta})]
    out = pd.concat(blocks, ignore_index=True)
    cols = list(summ.columns)
    return out[[*cols[:3], DELTA, *cols[3:]]], best


def clustering_summary(cl: pd.DataFrame) -> pd.DataFrame:
    """Clustering scores per dataset, fold, section and embedding, averaged over seeds."""
    keys = ["dataset", "fold", "section", "embedding"]
    return (
        cl.groupby(keys, sort=False)
        .agg(
            **{m: (m, "mean") for m in CLUSTER_METRICS},
            n_clusters=("n_clusters", "mean"),
            resolution=("resolution", "mean"),
            **{c: (c, "first") for c in ("n_classes", "n_spots", "n_dims")},
            n_seeds=("seed", "nunique"),
        )
        .reset_index()
    )


def _clustering_md(cl: pd.DataFrame) -> list[str]:
    """Markdown sections of the clustering table, one per fold with labelled test spots."""
    parts = []
    summ = clustering_summary(cl)
    floats = dict.fromkeys(CLUSTER_METRICS, ".3f") | {"n_clusters": ".1f", "resolution": ".2f"}
    for (dataset, fold, section), block in summ.groupby(["dataset", "fold", "section"], sort=False):
        held = str(fold).split("→")[-1]
        without = f"patient {held}" if dataset == "her2st" else held
        parts += [f"## Clustering on {dataset} {section} (trained without {without})", ""]
        parts += [_md_table(block.drop(columns=["dataset", "fold", "section"]), floats), ""]
    if parts:
        parts += [
            "Leiden (igraph, 2 iterations) on each embedding's 15-NN graph, at the resolution of "
            "(0.05 … 2.0) whose cluster count is closest to the number of label classes; ARI / NMI "
            "against the region labels (her2st: the pathologist's, `undetermined` spots left out; toy: "
            "the simulated tissue type). Probe: logistic regression (balanced class weights) on the "
            "standardised embedding, balanced accuracy over 5 spatial k-means blocks of the section. "
            "Colour and trunk features are standardised before the graph; the expression PCA (50 "
            "components of 1e4 + log1p counts of the held-out section itself) is an upper reference.",
            "",
        ]
    return parts


def per_fold(df: pd.DataFrame) -> pd.DataFrame:
    """Every fold's rows, averaged over seeds, with each seed's PCC-ALL listed beside the mean."""
    keys = ["dataset", "fold", "method"]
    agg = df.groupby(keys, sort=False).agg(
        **{m: (m, "mean") for m in METRICS},
        **{c: (c, "first") for c in ("n_train", "n_test", "n_genes")},
        fit_s=("fit_s", "mean"),
        predict_s=("predict_s", "mean"),
    )
    agg.insert(
        1,
        "PCC-ALL by seed",
        df.groupby(keys, sort=False).apply(
            lambda g: " / ".join(f"{v:.3f}" for v in g.sort_values("seed")["PCC-ALL"]), include_groups=False
        ),
    )
    return agg.reset_index()


def write_results(
    rows: list[dict], meta: dict, out: Path, preset: str, wall_s: float, *, final: bool
) -> list[str]:
    """Write ``expression_prediction_<preset>.{csv,md,json}`` under ``out`` (each via tmp + ``os.replace``).

    Rows with ``table="clustering"`` go to the clustering section of the markdown, the JSON's
    ``clustering`` entry and ``clustering_<preset>.csv``; the others are expression rows.

    ``preset`` names the files: the preset's name, with the datasets appended when a run covers only some.
    """
    cl = pd.DataFrame([r for r in rows if r.get("table") == "clustering"], columns=CLUSTER_COLUMNS)
    df = pd.DataFrame([r for r in rows if r.get("table") != "clustering"])
    if df.empty:
        df = pd.DataFrame(columns=COLUMNS)
    df = df[[c for c in COLUMNS if c in df.columns]]
    for c in ("n_train", "n_test", "n_genes"):
        if c in df:
            df[c] = df[c].astype(int)
    stem = out / f"expression_prediction_{preset}"
    info = {
        **meta,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "status": "complete" if final else "partial (run still going)",
        "total_wall_s": round(wall_s, 1),
        "clustering": clustering_summary(cl).to_dict(orient="records") if len(cl) else [],
    }
    cfg = meta["config"]
    backbone = cfg["backbone"] + (f" {cfg['backbone_kwargs']}" if cfg["backbone_kwargs"] else "")
    m = info["machine"]
    header = [
        f"# Expression prediction benchmark — preset `{meta.get('preset', preset)}`"
        + (f", rows `{meta['rows']}`" if meta.get("rows", "all") != "all" else "")
        + (f", datasets {', '.join(meta['datasets'])}" if meta.get("datasets_subset") else ""),
        "",
        f"- status: **{info['status']}**; total wall time **{wall_s / 60:.1f} min** ({wall_s:.0f} s)",
        f"- machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, torch threads "
        f"{meta['threads'] if meta['threads'] is not None else torch.get_num_threads()}, python {m['python']}, "
        f"torch {m['torch']}, device {m['device']}",
        f"- code: commit {meta['git_commit']} (read when the run started), finished {info['finished']}",
        f"- backbone: `{backbone}`, pretrained={cfg['pretrained']}; tile_px {cfg['tile_px']}; tile_um "
        + ", ".join(f"{k} {v:g} µm" for k, v in meta["tile_um"].items())
        + "; colour_norm (every row) "
        + ", ".join(f"{k} {meta.get('colour_norm', {}).get(k)}" for k in meta["tile_um"]),
        f"- CoMTIP: embed_dim {cfg['embed_dim']}, gene_dim {cfg['gene_dim']}, mask_ratio {cfg['mask_ratio']}, "
        f"λ_mfm {cfg['lambda_mfm']}, λ_paat {cfg['lambda_paat']}, λ_value_query {cfg.get('lambda_value_query')}, "
        f"text encoder {meta['text_encoder']}",
        f"- training (every row): {meta['epochs']} epochs, batch {meta['batch_size']}, AdamW lr {meta['lr']} "
        f"(wd {meta['weight_decay']}, 5% warm-up + cosine), seeds {', '.join(map(str, meta['seeds']))} "
        "(every row trained once per seed), no validation/early stopping; "
        f"{meta.get('jobs', 1)} worker process(es)",
        f"- protocol: leave-one-patient-out; spots with ≥{meta['min_counts']} UMI; 1e4 + log1p; panel = top "
        f"{meta['n_genes']} genes by mean over training spots among genes detected in every section; "
        "PCC-ALL = mean per-gene Pearson over the panel (constant → 0), PCC-HEG/HVG over the 50 genes with the "
        "highest mean/variance in the test patient; MSE/MAE over spots × genes (log1p scale)",
        "",
        "Notes:",
        "",
        *[f"- {n}" for n in NOTES],
    ]
    floats = {c: ".3f" for c in METRICS} | {"fit_s": ".0f", "predict_s": ".0f"}
    parts = [*header, "", "## Mean over folds and seeds", ""]
    if len(df):
        table, best = with_simple_bar(summary(df), df)
        extra = {"PCC-ALL sd": ".3f", DELTA: "+.3f", "n_folds": "d", "n_seeds": "d"}
        parts.append(_md_table(table, floats | extra))
        if best:
            parts += ["", "Simple bar: " + "; ".join(f"{d} = `{m}`" for d, m in best.items()) + "."]
        parts += ["", *targets_md(table, clustering_summary(cl) if len(cl) else None, per_fold(df))]
    parts += ["", *_clustering_md(cl)] if len(cl) else []
    parts += ["", "## Every fold (mean over seeds)", ""]
    if len(df):
        parts.append(_md_table(per_fold(df), floats))
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(stem.with_suffix(".md"), "\n".join(parts) + "\n")
    _atomic_write(stem.with_suffix(".csv"), df.to_csv(index=False, float_format="%.6g"))
    _atomic_write(stem.with_suffix(".json"), json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    paths = [str(stem.with_suffix(s)) for s in (".md", ".csv", ".json")]
    if len(cl):
        path = out / f"clustering_{preset}.csv"
        _atomic_write(path, cl.to_csv(index=False, float_format="%.6g"))
        paths.append(str(path))
    return paths
