"""The benchmark's folds: expression prediction from H&E, CoMTIP beside its peer families, in one run.

Protocol: leave-one-patient-out (her2st: patient A ↔ C; MOB: individual 1 ↔ 2), spots with
≥ 100 UMI, 1e4 + log1p, panel = top-250 genes by mean over the *training* spots among genes detected in
every section, metrics from :func:`comtip_sc.tl.evaluate` on the held-out patient. Every row of a run
uses the same backbone, tiles, epochs, batch size, learning rate and seed; nothing is tuned on test data.
Results go to ``<out>/expression_prediction_<preset>.{md,csv,json}``, rewritten atomically after each fold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from spatialdata import SpatialData

from comtip_sc.constants import TABLE_KEY
from comtip_sc.model import FLAG_PRESETS, ComtipModel
from comtip_sc.pp import cache_tiles, normalized_values, resolve_sections, spot_layout
from comtip_sc.tl import spatial_folds
from comtip_sc.train import default_precision

from .baselines import fit_regression, frozen_features, ridge_on_features, train_mean
from .clustering import EMBEDDINGS, expression_pcs, score_embeddings
from .colour_features import (
    COLOUR_ROWS,
    CONTEXT_SCALE,
    colour_predictions,
    fold_colour_stats,
    zscore_per_section,
)
from .folds import Fold
from .presets import BenchPreset

log = logging.getLogger("benchmarks")

#: The stain-augmentation ablation's strengths (``TrainSettings.stain_jitter`` / ``colour_jitter``).
STAIN_JITTER = {"stain_jitter": 0.1, "colour_jitter": 0.1}
#: The CoMTIP variants trained per fold: (row label, ablation flags). Each gives a retrieval row, and a zero-shot
#: row when its sentences carry values.
VARIANTS: list[tuple[str, dict[str, bool]]] = [
    ("CoMTIP", FLAG_PRESETS["comtip"]),
    ("CoMTIP −MFM", {**FLAG_PRESETS["comtip"], "mfm": False}),
    ("CoMTIP −PAAT", {**FLAG_PRESETS["comtip"], "paat": False}),
    ("CoMTIP −value query", {**FLAG_PRESETS["comtip"], "value_query": False}),
    ("values-only ≈BLEEP", FLAG_PRESETS["bleep"]),
    ("names-only ≈OmiCLIP", FLAG_PRESETS["omiclip"]),
    ("CoMTIP + 3× context", FLAG_PRESETS["comtip"]),
    ("CoMTIP + stain jitter", FLAG_PRESETS["comtip"]),
    ("CoMTIP + smoothed targets", FLAG_PRESETS["comtip"]),
]
#: Training and data settings (:class:`comtip_sc.train.TrainSettings` fields) of the variants that change how
#: they train. Smoothed targets: each training spot's sentence carries its mean over itself and its 4 nearest
#: spots (the ring of a square legacy-ST grid); every score is on raw expression.
SMOOTH_TARGETS = 5
TRAIN_OPTIONS: dict[str, dict] = {
    "CoMTIP + 3× context": {"context_scale": CONTEXT_SCALE},
    "CoMTIP + stain jitter": STAIN_JITTER,
    "CoMTIP + smoothed targets": {"smooth_targets": SMOOTH_TARGETS},
}
#: The variants that also get a ridge-head row on their image embedding, and that row smoothed.
HEAD_VARIANTS = ("CoMTIP", "CoMTIP + 3× context", "CoMTIP + stain jitter", "CoMTIP + smoothed targets")
HEAD = "head (ridge on its image emb.)"
#: The hybrid read-out (ridge over the embedding and the tiles' colour statistics), for these variants.
HYBRID_VARIANTS = ("CoMTIP", "CoMTIP + 3× context")
HYBRID = "hybrid (emb. + colour)"
#: Test-time augmentation (embedding = mean over the 8 dihedral views) of the head, for the plain model.
TTA = "head, TTA (8 dihedral views)"
#: ``cs.tl.fit(preset="auto")``: its candidates fitted on the training patient minus held-out sections, the
#: one the self-check scores best kept. It needs two training sections, so it runs on the folds that have them.
AUTO = "CoMTIP preset='auto'"
AUTO_READOUTS = ("retrieval", "zero_shot", "head", "hybrid")
AUTO_PICK = "read-out the self-check ranks first"
#: The smoothing ablation: the head's predictions averaged over each spot's SMOOTH nearest spots.
SMOOTH = 6
SMOOTHED = f"head, {SMOOTH}-NN smoothed"
#: Every N_HELD-th panel gene is held out of a second CoMTIP fit to measure zero-shot on genes never trained on.
HELD_EVERY = 5
SEEN = "CoMTIP · zero-shot, held-out genes, model trained with them"
UNSEEN = "CoMTIP · zero-shot, held-out genes, model trained without them"
STNET = "image→expr regression ≈ST-Net"
RIDGE = "frozen trunk + PCA + ridge ≈HEST"
MEAN = "train mean"


#: The independent pieces of one fold, the tasks of ``--per-fit``: one per CoMTIP fit, then the baselines.
PARTS: list[str] = [*(label for label, _ in VARIANTS), UNSEEN, AUTO, "baselines"]
#: ``--rows``: which parts a run trains. ``core`` holds what the quality targets are read from (CoMTIP,
#: context, stain jitter, smoothed targets, baselines and clustering); ``ablations`` the method ablations and
#: peer families beside the same baselines; ``auto`` ``preset="auto"`` beside them.
CORE_PARTS = [
    "CoMTIP",
    "CoMTIP + 3× context",
    "CoMTIP + stain jitter",
    "CoMTIP + smoothed targets",
    "baselines",
]
ROW_SETS: dict[str, list[str]] = {
    "all": PARTS,
    "core": CORE_PARTS,
    "ablations": [p for p in PARTS if (p not in CORE_PARTS and p != AUTO) or p == "baselines"],
    # preset='auto' fits five candidates per fold and seed: a run of its own, beside the same baselines.
    "auto": [AUTO, "baselines"],
}


def method_names(parts: Sequence[str] | None = None) -> list[str]:
    """Every method row of one fold that ``parts`` (default: all of :data:`PARTS`) write, in table order."""
    parts = PARTS if parts is None else parts
    names = []
    for label, flags in VARIANTS:
        if label not in parts:
            continue
        names += [f"{label} · retrieval"] + ([f"{label} · zero-shot"] if flags["use_values"] else [])
        names += [f"{label} · {HEAD}", f"{label} · {SMOOTHED}"] if label in HEAD_VARIANTS else []
        names += [f"{label} · {HYBRID}"] if label in HYBRID_VARIANTS else []
        names += [SEEN, f"{label} · {TTA}"] if label == "CoMTIP" else []
    names += [UNSEEN] if UNSEEN in parts else []
    if AUTO in parts:
        names += [f"{AUTO} · {READOUT_NAMES[m]}" for m in AUTO_READOUTS] + [f"{AUTO} · {AUTO_PICK}"]
    return [*names, STNET, RIDGE, *COLOUR_ROWS, MEAN] if "baselines" in parts else names


#: Row names of the read-outs (``cs.tl.comtip_predict``'s ``method``).
READOUT_NAMES = {"retrieval": "retrieval", "zero_shot": "zero-shot", "head": HEAD, "hybrid": HYBRID}


def held_out_genes(panel: list[str]) -> list[str]:
    """The genes held out of the unseen-gene fit: every ``HELD_EVERY``-th gene of the panel (by mean rank).

    Examples
    --------
    >>> held_out_genes([f"g{i}" for i in range(12)])
    ['g2', 'g7']

    """
    return panel[2::HELD_EVERY]


# -- one fold -------------------------------------------------------------------------------------------
def _score(
    test: SpatialData,
    panel: list[str],
    pred: np.ndarray | None,
    layer: str = "bench_pred",
    keep: bool = False,
) -> dict:
    """``cs.tl.evaluate`` on the test table; ``pred`` (panel order) is written first unless it is there.

    Given predictions go to ``obsm[layer]`` (spots × genes), the layout ``evaluate`` also reads; the
    predictions (there and in ``comtip_predict``'s ``layers[layer]``) are deleted afterwards unless ``keep``.
    """
    import comtip_sc as cs

    table = test.tables[TABLE_KEY]
    if pred is not None:
        table.obsm[layer] = pd.DataFrame(pred, index=table.obs_names, columns=panel)
    row = cs.tl.evaluate(test, pred_key=layer, genes=panel).loc["all"].to_dict()
    if not keep:
        table.obsm.pop(layer, None)
        table.layers.pop(layer, None)
    return row


def cache_fold_tiles(fold: Fold, preset: BenchPreset, work: Path, *, test: bool = True) -> tuple:
    """Cut (or reuse) the fold's tiles under ``work``: ``(train, test)`` tile readers.

    The training tiles go where :func:`fit_comtip` with the same ``work`` reads them
    (``work/train/dataset0.zarr``), the test tiles to ``work/test.zarr`` (``None`` with ``test=False``).
    """
    train = cache_tiles(fold.train, work / "train" / "dataset0.zarr", **_tile_kw(fold, preset))
    return train, (cache_tiles(fold.test, work / "test.zarr", **_tile_kw(fold, preset)) if test else None)


def _tile_kw(fold: Fold, preset: BenchPreset, context_scale: float | None = None) -> dict:
    """How the fold's tiles are cut: the spot tile, or with ``context_scale`` its context tile."""
    return {
        "tile_um": fold.tile_um * (context_scale or 1.0),
        "tile_px": preset.config.tile_px,
        "colour_norm": fold.colour_norm,
    }


def layout(sdata: SpatialData) -> tuple[np.ndarray, np.ndarray]:
    """Section name and pixel centre of every spot of ``sdata``'s table, in table order."""
    names, centres = spot_layout(resolve_sections(sdata), sdata.tables[TABLE_KEY].n_obs)
    return np.asarray(names), centres


def train_folds(fold: Fold) -> np.ndarray:
    """Spatial CV folds of the fold's training spots, in table order.

    They are the CoMTIP head's folds (its bank keeps the table's order within each section), so both ridge
    rows choose their penalty alike.
    """
    names, centres = spot_layout(resolve_sections(fold.train), fold.train.tables[TABLE_KEY].n_obs)
    return spatial_folds(centres, names)


def fit_comtip(
    fold: Fold,
    preset: BenchPreset,
    flags: dict[str, bool],
    genes: list[str],
    work: Path,
    root: Path,
    **options,
) -> ComtipModel:
    """Train one CoMTIP row's model with the preset's settings (and ``options``) on ``fold.train``.

    The training tiles come from the cache at ``work/train/dataset0.zarr`` (built once per fold);
    Lightning writes under ``root``.
    """
    import comtip_sc as cs

    return cs.tl.fit(
        fold.train,
        genes=genes,
        config=preset.config.replace(**flags),
        colour_norm=fold.colour_norm,
        tile_um=fold.tile_um,
        max_epochs=preset.epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        weight_decay=preset.weight_decay,
        seed=preset.seed,
        val_sections=None,
        tile_cache=str(work / "train"),
        default_root_dir=str(root),
        logger=False,
        # Nothing resumes a benchmark fit; a ViT-B/32 checkpoint with its AdamW state costs ~1 s an epoch.
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def fit_stnet(
    preset: BenchPreset, train_tiles, train_y: np.ndarray, test_tiles, root: Path, work: Path
) -> np.ndarray:
    """The ST-Net-like row: the preset's vision branch + a linear head trained with MSE; test predictions.

    Its trunk tokens come from the cache CoMTIP's fits use (``work/train/dataset0_tokens.zarr``).
    """
    return fit_regression(
        preset.config,
        train_tiles,
        train_y,
        test_tiles,
        max_epochs=preset.epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        weight_decay=preset.weight_decay,
        seed=preset.seed,
        precision=default_precision("auto"),
        default_root_dir=str(root),
        token_cache=str(work / "train" / "dataset0_tokens.zarr"),
    )


def run_fold(fold: Fold, preset: BenchPreset, work: Path, on_row, parts: Sequence[str] | None = None) -> None:
    """Train every method on ``fold.train``, score it on ``fold.test``; ``on_row(dict)`` per finished row.

    ``parts`` (names from :data:`PARTS`) restricts the run to those fits; ``None`` runs them all. When the
    fold's test spots carry region labels, the clustering rows (``table="clustering"``) come from the
    ``CoMTIP`` part (its image embedding) and the ``baselines`` part (colour, trunk, expression PCA).
    """
    import comtip_sc as cs

    cfg, panel, seed = preset.config, fold.panel, preset.seed
    if parts is not None and AUTO in parts and len(resolve_sections(fold.train)) < 2:
        # preset='auto' needs sections to hold out. In its own run (--rows auto) the baselines would only
        # move the bar away from the folds the auto rows are on, so that run skips the fold.
        log.info("%s %s: one training section, so no preset='auto' rows.", fold.dataset, fold.name)
        parts = [p for p in parts if p != AUTO]
        if parts == ROW_SETS["auto"][1:]:
            return
    t0 = time.perf_counter()
    # Cut once here for every row (fit() reuses the training cache).
    train_tiles, test_tiles = cache_fold_tiles(fold, preset, work)
    train_y = normalized_values(fold.train.tables[TABLE_KEY], panel)
    n_train, n_test = len(train_tiles), len(test_tiles)
    log.info(
        "%s %s: %d train / %d test spots, %d genes; tiles cut in %.0f s.",
        fold.dataset,
        fold.name,
        n_train,
        n_test,
        len(panel),
        time.perf_counter() - t0,
    )
    base = {"dataset": fold.dataset, "fold": fold.name, "n_train": n_train, "n_test": n_test}

    def emit(method: str, metrics: dict, fit_s: float, pred_s: float, n_genes: int = len(panel)) -> None:
        on_row(
            {
                **base,
                "method": method,
                **metrics,
                "n_genes": n_genes,
                "fit_s": round(fit_s, 1),
                "predict_s": round(pred_s, 1),
            }
        )

    held = held_out_genes(panel)
    held_set = set(held)
    fits = [(label, flags, panel) for label, flags in VARIANTS]
    fits.append((UNSEEN, FLAG_PRESETS["comtip"], [g for g in panel if g not in held_set]))
    for k, (label, flags, genes) in enumerate(fits):
        if parts is not None and label not in parts:
            continue
        t = time.perf_counter()
        root = work / f"seed{seed}" / f"lightning{k}"
        model = fit_comtip(fold, preset, flags, genes, work, root, **TRAIN_OPTIONS.get(label, {}))
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        net = model.network
        if torch.cuda.is_available():
            net = net.cuda()
        test_reader = test_tiles
        if model.context_scale is not None:
            wide = cache_tiles(
                fold.test, work / "test_context.zarr", **_tile_kw(fold, preset, model.context_scale)
            )
            test_reader = cs.pp.ContextTiles(test_tiles, wide)
        # The test image embeddings, computed once from the test tile cache, feed every predictor below.
        fold.test.tables[TABLE_KEY].obsm["X_bench"] = model.encode_images(test_reader, batch_size=64)
        emb_s = time.perf_counter() - t
        if label == UNSEEN:
            t = time.perf_counter()
            cs.tl.comtip_predict(
                fold.test, model, method="zero_shot", genes=held, use_rep="X_bench", key_added="bench_pred"
            )
            emit(UNSEEN, _score(fold.test, held, None), fit_s, time.perf_counter() - t + emb_s, len(held))
        for m in ["retrieval", "zero_shot", "head"] if label != UNSEEN else []:
            if (m == "head" and label not in HEAD_VARIANTS) or (m == "zero_shot" and not flags["use_values"]):
                continue
            t = time.perf_counter()
            cs.tl.comtip_predict(
                fold.test, model, method=m, genes=panel, use_rep="X_bench", key_added="bench_pred"
            )
            pred_s = time.perf_counter() - t + emb_s
            row_name = {"retrieval": "retrieval", "zero_shot": "zero-shot"}.get(m, HEAD)
            if label == "CoMTIP" and m == "zero_shot":
                # Score before the next call replaces the layer: the same genes as UNSEEN, seen in training.
                seen = _score(fold.test, held, None, keep=True)
            emit(f"{label} · {row_name}", _score(fold.test, panel, None), fit_s, pred_s)
            if m == "head":
                t = time.perf_counter()
                cs.tl.comtip_predict(
                    fold.test,
                    model,
                    method=m,
                    genes=panel,
                    use_rep="X_bench",
                    key_added="bench_pred",
                    smooth=SMOOTH,
                )
                pred_s += time.perf_counter() - t
                emit(f"{label} · {SMOOTHED}", _score(fold.test, panel, None), fit_s, pred_s)
            if label == "CoMTIP" and m == "head":
                emit(SEEN, seen, fit_s, pred_s, len(held))
        if label in HYBRID_VARIANTS:
            t = time.perf_counter()
            cs.tl.comtip_predict(
                fold.test, model, method="hybrid", genes=panel, use_rep="X_bench", key_added="bench_pred"
            )
            emit(
                f"{label} · {HYBRID}", _score(fold.test, panel, None), fit_s, time.perf_counter() - t + emb_s
            )
        if label == "CoMTIP":
            t = time.perf_counter()
            cs.tl.comtip_predict(
                fold.test, model, method="head", genes=panel, tta=True, key_added="bench_pred"
            )
            emit(f"{label} · {TTA}", _score(fold.test, panel, None), fit_s, time.perf_counter() - t)
        del fold.test.tables[TABLE_KEY].obsm["X_bench"]
        if label == "CoMTIP" and fold.regions is not None:
            cs.tl.comtip_embed(fold.test, model, key_added="X_comtip")
            x = fold.test.tables[TABLE_KEY].obsm.pop("X_comtip")
            for row in score_embeddings(fold.test, fold.regions, {EMBEDDINGS[0]: x}, seed):
                on_row({**base, **row, "table": "clustering"})

    if parts is not None and AUTO in parts:
        from .auto_rows import run_auto  # here: auto_rows imports this module's names

        run_auto(fold, preset, work, emit)
    if parts is not None and "baselines" not in parts:
        return
    t = time.perf_counter()
    pred = fit_stnet(preset, train_tiles, train_y, test_tiles, work / f"seed{seed}" / "lightning", work)
    emit(STNET, _score(fold.test, panel, pred), time.perf_counter() - t, 0.0)

    t = time.perf_counter()
    cv_folds = train_folds(fold)
    train_x, test_x = frozen_features(cfg, [train_tiles, test_tiles], seed=seed)
    emit(
        RIDGE,
        _score(fold.test, panel, ridge_on_features(train_x, train_y, test_x, cv_folds)),
        time.perf_counter() - t,
        0.0,
    )
    t = time.perf_counter()
    colour = fold_colour_stats(fold.train, fold.test, train_tiles, test_tiles, fold.colour_norm)
    test_sections, test_centres = layout(fold.test)
    feat_s = time.perf_counter() - t
    t = time.perf_counter()
    for name, pred in colour_predictions(
        colour, train_y, layout(fold.train)[0], cv_folds, test_sections, test_centres
    ):
        # fit_s: the shared features plus this row's ridge (its averaged twin: the averaging).
        emit(name, _score(fold.test, panel, pred), feat_s + time.perf_counter() - t, 0.0)
        t = time.perf_counter()
    emit(MEAN, _score(fold.test, panel, train_mean(train_y, n_test)), 0.0, 0.0)
    if fold.regions is not None:
        embeddings = {
            # Standardised: mixed units (colour statistics, raw activations) before a euclidean graph.
            EMBEDDINGS[1]: zscore_per_section(colour[False][1], test_sections),
            EMBEDDINGS[2]: zscore_per_section(test_x, test_sections),
            EMBEDDINGS[3]: expression_pcs(fold.test.tables[TABLE_KEY]),
        }
        for row in score_embeddings(fold.test, fold.regions, embeddings, seed):
            on_row({**base, **row, "table": "clustering"})
