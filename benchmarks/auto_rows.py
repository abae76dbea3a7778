"""The ``preset='auto'`` rows: ``cs.tl.fit(preset="auto")`` as a user calls it, scored on the held-out patient.

Each candidate of ``cs.tl.AUTO_CANDIDATES`` trains with its own preset's recipe on the training patient minus
the sections ``fit``'s self-check holds out, and the candidate whose best read-out scores highest on those
sections is kept. Only the seed and the dataset's tile size come from the benchmark, so the rows measure what
``preset="auto"`` gives a user; the read-out the self-check ranks first gets a row of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from comtip_sc.constants import TABLE_KEY

from .folds import Fold
from .harness import AUTO, AUTO_PICK, AUTO_READOUTS, READOUT_NAMES, _score
from .presets import BenchPreset

log = logging.getLogger("benchmarks")


def run_auto(fold: Fold, preset: BenchPreset, work: Path, emit: Callable[..., None]) -> None:
    """Fit ``preset="auto"`` on ``fold.train`` and ``emit(method, metrics, fit_s, predict_s)`` each read-out.

    The fold's training patient needs two sections or more (``fit`` refuses ``preset="auto"`` with one, as
    it would for a user); :func:`~benchmarks.harness.run_fold` leaves the others out.
    """
    import comtip_sc as cs

    t = time.perf_counter()
    model = cs.tl.fit(
        fold.train,
        preset="auto",
        genes=fold.panel,
        tile_um=fold.tile_um,
        seed=preset.seed,
        # Shared by the fold's seeds: tiles and trunk tokens are cut and computed by the first seed's task.
        tile_cache=str(work / "auto_tiles"),
        default_root_dir=str(work / f"seed{preset.seed}" / "auto"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fit_s = time.perf_counter() - t
    chosen = model.history["auto"]
    log.info("%s %s: preset='auto' kept %r.", fold.dataset, fold.name, chosen["chosen"])
    t = time.perf_counter()
    # The held-out patient's tiles, cut as the chosen candidate expects (tile_px, context, colour handling).
    cs.tl.comtip_embed(fold.test, model, key_added="X_bench")
    emb_s = time.perf_counter() - t
    scores: dict[str, dict] = {}
    for method in AUTO_READOUTS:
        t = time.perf_counter()
        cs.tl.comtip_predict(
            fold.test, model, method=method, genes=fold.panel, use_rep="X_bench", key_added="bench_pred"
        )
        scores[method] = _score(fold.test, fold.panel, None)
        emit(f"{AUTO} · {READOUT_NAMES[method]}", scores[method], fit_s, time.perf_counter() - t + emb_s)
    del fold.test.tables[TABLE_KEY].obsm["X_bench"]
    validation = model.validation_["pcc_all"]
    # The read-outs' rows of the self-check table (its other rows are the simple bar's).
    pick = validation[validation.index.isin(AUTO_READOUTS)].idxmax()
    log.info("%s %s: the self-check ranks %s first.", fold.dataset, fold.name, pick)
    emit(f"{AUTO} · {AUTO_PICK}", scores[pick], fit_s, 0.0)
