"""The benchmark's runner: the tasks of a run on worker processes, tables rewritten as they finish.

A task is one fold at one seed, or one fit of it with ``--per-fit``; what a fold computes is
:func:`benchmarks.harness.run_fold`. The tasks of one fold share a work folder: tiles and trunk-token caches
are cut and computed by the first seed's tasks (which all finish before any later seed starts) and read by
the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import torch

from comtip_sc.model import resolve_text_encoder

from .clustering import EMBEDDINGS
from .folds import load_folds
from .harness import ROW_SETS, log, method_names, run_fold
from .presets import BenchPreset, get_preset
from .report import git_commit, write_results


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None and not torch.cuda.is_available():
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _quiet_lightning(verbose: bool) -> Iterator[None]:
    # Lightning logs its device banner and warnings once per trainer: ~20 trainers per run would drown the
    # per-row progress lines.
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "comtip_sc.train", "comtip_sc.tl")
    before = {n: logging.getLogger(n).level for n in names}
    if not verbose:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, lvl in before.items():
            logging.getLogger(n).setLevel(lvl)


def fold_keys(preset: BenchPreset) -> list[tuple[str, int]]:
    """``(dataset, fold index)`` of every fold of a run, the largest training sets first.

    With several workers the long folds start first, so the workers finish close together.
    """
    if preset.name == "smoke":
        return [("toy", 0), ("toy", 1)]
    # her2st C→A trains on five sections, MOB 1→2 on two, MOB 2→1 and her2st A→C on one each.
    return [("her2st", 1), ("mob", 0), ("mob", 1), ("her2st", 0)]


def _chosen_datasets(keys: list[tuple[str, int]], arg: str | None) -> list[str]:
    """The datasets ``--datasets`` names (all of the preset's when ``None``), in the preset's order."""
    available = list(dict.fromkeys(d for d, _ in keys))
    if not arg:
        return available
    asked = [d.strip() for d in str(arg).split(",") if d.strip()]
    unknown = [d for d in asked if d not in available]
    if unknown or not asked:
        raise ValueError(f"--datasets must name some of {available}, got {arg!r}.")
    return [d for d in available if d in asked]


def _fold_job(
    preset: BenchPreset,
    data_root: str,
    key: tuple[str, int],
    seed: int,
    work: str,
    log_level: int,
    verbose: bool,
    parts: list[str],
) -> list[dict]:
    """One fold at one seed, the fits in ``parts``, in a worker process or in this one; returns its rows."""
    import warnings

    for name in ("comtip_sc", "benchmarks"):  # a spawned worker starts with default levels
        logging.getLogger(name).setLevel(log_level)
    if not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    preset = dataclasses.replace(preset, seed=seed)
    dataset, index = key
    fold = next(f for i, f in enumerate(load_folds(preset, data_root, only=dataset)) if i == index)
    rows: list[dict] = []
    n_methods = len(method_names(parts))
    where = "" if len(parts) > 1 else f" ({parts[0]})"

    def on_row(row: dict) -> None:
        rows.append({**row, "seed": seed})
        if row.get("table") == "clustering":
            log.info(
                "[%s %s seed %d] clustering %s, %-40s ARI %.3f  NMI %.3f  probe bal. acc. %.3f",
                fold.dataset,
                fold.name,
                seed,
                row["section"],
                row["embedding"],
                row["ARI"],
                row["NMI"],
                row["probe bal. acc."],
            )
            return
        log.info(
            "[%s %s seed %d, %s] %-45s PCC-ALL %.3f  HEG %.3f  HVG %.3f  MSE %.3f  (fit %.0f s)",
            fold.dataset,
            fold.name,
            seed,
            f"{sum('method' in r for r in rows)}/{n_methods}" if len(parts) > 1 else parts[0],
            row["method"],
            row["PCC-ALL"],
            row["PCC-HEG"],
            row["PCC-HVG"],
            row["MSE"],
            row["fit_s"],
        )

    t = time.perf_counter()
    with _torch_threads(preset.threads), _quiet_lightning(verbose), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist.*")
        warnings.filterwarnings("ignore", message=".*treespec.*")
        run_fold(fold, preset, Path(work), on_row, parts)
    log.info(
        "%s %s seed %d%s done in %.0f s.",
        fold.dataset,
        fold.name,
        seed,
        where,
        time.perf_counter() - t,
    )
    return rows


def _ordered(rows: list[dict]) -> list[dict]:
    """Rows in table order (dataset, fold, seed, method) whatever order the workers finished in."""
    order = {m: i for i, m in enumerate([*method_names(), *EMBEDDINGS])}
    return sorted(
        rows,
        key=lambda r: (
            r["dataset"],
            r["fold"],
            r["seed"],
            order.get(r.get("method", r.get("embedding")), 99),
        ),
    )


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark for ``args.preset`` on ``args.data_root``; write tables under ``args.out``.

    ``args.seeds`` (comma-separated, default: the preset's) and ``args.jobs`` (worker processes; each
    trains one fold at one seed at a time, on the preset's torch threads) are optional.

    Returns
    -------
    Exit code 0 on success (errors raise; the CLI maps them to its exit codes).

    """
    preset = get_preset(args.preset)
    seeds_arg = getattr(args, "seeds", None)
    if seeds_arg:
        try:
            seeds = tuple(int(x) for x in str(seeds_arg).split(","))
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {seeds_arg!r}.") from None
        preset = dataclasses.replace(preset, seeds=seeds)
    jobs = max(1, int(getattr(args, "jobs", 1) or 1))
    per_fit = bool(getattr(args, "per_fit", False))
    keys = fold_keys(preset)
    datasets = _chosen_datasets(keys, getattr(args, "datasets", None))
    rows_arg = str(getattr(args, "rows", None) or "all")
    if rows_arg not in ROW_SETS:
        raise ValueError(f"--rows must be one of {sorted(ROW_SETS)}, got {rows_arg!r}.")
    chosen = ROW_SETS[rows_arg]
    name = "_".join([preset.name, *([] if rows_arg == "all" else [rows_arg])])
    name = name if len(datasets) == len({d for d, _ in keys}) else "_".join([name, *datasets])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta = {
        "preset": preset.name,
        # Read now: other commits may land while a long run goes on, and the run keeps the code it imported.
        "git_commit": git_commit(),
        "config": preset.config.to_dict(),
        "text_encoder": resolve_text_encoder(preset.config.text_encoder),
        "tile_um": preset.tile_um,
        "colour_norm": preset.colour_norm,
        "epochs": preset.epochs,
        "batch_size": preset.batch_size,
        "lr": preset.lr,
        "weight_decay": preset.weight_decay,
        "seeds": list(preset.seeds),
        "datasets": datasets,
        "n_genes": preset.n_genes,
        "min_counts": preset.min_counts,
        "threads": preset.threads if not torch.cuda.is_available() else None,
        "jobs": jobs,
        "per_fit": per_fit,
        "rows": rows_arg,
        "datasets_subset": len(datasets) < len({d for d, _ in keys}),
    }
    # Seed-major waves: the first seed's tasks cut each fold's tiles and token caches in its shared work folder
    # before a later seed's tasks read them; within a wave the largest folds go first (see fold_keys).
    waves = [
        [
            (key, seed, part)
            for key in keys
            if key[0] in datasets
            for part in ([[p] for p in chosen] if per_fit else [chosen])
        ]
        for seed in preset.seeds
    ]
    waves = [waves[0], [t for w in waves[1:] for t in w]] if len(waves) > 1 else waves
    start = time.perf_counter()
    level = logging.getLogger("comtip_sc").getEffectiveLevel()
    verbose = bool(getattr(args, "verbose", False))
    with tempfile.TemporaryDirectory(prefix="comtip_bench_") as tmp:

        def job_args(task: tuple) -> tuple:
            (dataset, index), seed, parts = task
            work = str(Path(tmp) / f"{dataset}{index}")
            return (preset, str(args.data_root), (dataset, index), seed, work, level, verbose, parts)

        def done(finished: list[dict]) -> None:
            rows.extend(finished)
            write_results(_ordered(rows), meta, out, name, time.perf_counter() - start, final=False)

        if jobs == 1:
            for task in (t for w in waves for t in w):
                done(_fold_job(*job_args(task)))
        else:
            # spawn, not fork: the parent may hold torch/OpenMP threads, which a forked child inherits broken.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                for wave in waves:
                    futures = [pool.submit(_fold_job, *job_args(task)) for task in wave]
                    for fut in as_completed(futures):
                        done(fut.result())
    paths = write_results(_ordered(rows), meta, out, name, time.perf_counter() - start, final=True)
    log.info(
        "Benchmark %s finished in %.0f s: %s", preset.name, time.perf_counter() - start, ", ".join(paths)
    )
    print(f"Wrote {', '.join(paths)}")
    return 0
