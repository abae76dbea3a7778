"""Epoch time of `cs.tl.fit` with a frozen trunk: reading cached trunk tokens against running the trunk.

    python benchmarks/feature_cache.py                     # cpu preset, toy tissue of 16 x 16 spots
    python benchmarks/feature_cache.py --rows 24 --epochs 3 --threads 2

Both runs use the same preset, data, tile cache (pixels are read from zarr, not cut from the slide),
batch size and seed; they differ only in ``feature_cache``. The epoch time is the wall time of the
last training epoch (the first pays for warm-up); the token cache's one-off build time is reported
apart. Writes ``benchmarks/results/feature_cache_<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

import comtip_sc as cs
from comtip_sc.io import atomic_path


class EpochTimer(L.Callback):
    """Wall time of each training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._start)


def run(rows: int, epochs: int, batch_size: int, preset: str) -> dict[str, float]:
    """Fit twice (pixels, cached tokens) and return the epoch and cache-build times in seconds."""
    sdata = cs.datasets.toy_tissue(n_rows=rows, n_cols=rows, n_genes=60, seed=0)
    out: dict[str, float] = {"spots": rows * rows}
    with tempfile.TemporaryDirectory() as tmp:
        for label, cache in (("pixels", False), ("tokens", True)):
            timer = EpochTimer()
            start = time.perf_counter()
            cs.tl.fit(
                sdata,
                preset=preset,
                max_epochs=epochs,
                batch_size=batch_size,
                seed=0,
                feature_cache=cache,
                tile_cache=str(Path(tmp) / "tiles"),
                callbacks=[timer],
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                default_root_dir=tmp,
            )
            out[f"{label}_fit_s"] = time.perf_counter() - start
            out[f"{label}_epoch_s"] = timer.times[-1]
            out[f"{label}_training_s"] = sum(timer.times)
    # What the token run spent outside its epochs beyond the pixel run is mostly the cache build.
    out["cache_build_s"] = (out["tokens_fit_s"] - out["tokens_training_s"]) - (
        out["pixels_fit_s"] - out["pixels_training_s"]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16, help="toy tissue of rows x rows spots")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    r = run(args.rows, args.epochs, args.batch_size, args.preset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    lines = [
        f"# Training epochs with and without the trunk-token cache ({device})",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; load average at the end {load:.1f}; code: commit {commit or '?'}",
        f"- preset `{args.preset}`, toy tissue {int(r['spots'])} spots, batch {args.batch_size}, "
        f"{args.epochs} epochs, seed 0; total wall time {time.perf_counter() - start:.0f} s",
        f"- command: `python benchmarks/feature_cache.py --rows {args.rows} --epochs {args.epochs} "
        f"--batch-size {args.batch_size} --threads {args.threads}`",
        "",
        "| training reads | last epoch (s) | all epochs (s) | whole fit (s) |",
        "|---|---:|---:|---:|",
        f"| pixels (frozen trunk runs every step) | {r['pixels_epoch_s']:.2f} | {r['pixels_training_s']:.2f} "
        f"| {r['pixels_fit_s']:.1f} |",
        f"| cached trunk tokens | {r['tokens_epoch_s']:.2f} | {r['tokens_training_s']:.2f} | {r['tokens_fit_s']:.1f} |",
        "",
        f"Epoch speed-up with the cache: **{r['pixels_epoch_s'] / r['tokens_epoch_s']:.1f}×**. Building the cache "
        f"(8 dihedral views of every tile through the trunk, once) took about {r['cache_build_s']:.1f} s "
        f"≈ {r['cache_build_s'] / r['pixels_epoch_s']:.1f} pixel epochs.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    path = Path(args.out) / f"feature_cache_{device}.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
