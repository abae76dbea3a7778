"""Wall time of `cs.tl.fit(preset="auto")` against one plain fit of the `cpu` preset, on the toy tissue.

    python benchmarks/auto_cost.py                    # two toy sections of 10 x 10 spots, presets' epochs
    python benchmarks/auto_cost.py --rows 12 --epochs 3 --threads 2

Both runs use the same two sections (the second held out), seed, batch size and epochs (``--epochs``; by
default each preset's own recipe), and both end with the self-check; neither is given a tile cache (the
auto run shares one temporary cache among its candidates). Writes
``benchmarks/results/auto_cost_<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import comtip_sc as cs
from comtip_sc.io import atomic_path
from comtip_sc.tl import AUTO_CANDIDATES, format_auto


def run(rows: int, epochs: int | None, batch_size: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fit with the cpu preset, then with preset="auto"; return wall and CPU times and auto's table."""
    sections = [
        cs.datasets.toy_tissue(n_rows=rows, n_cols=rows, n_genes=60, seed=i, sample_id=s)
        for i, s in enumerate(("a", "b"))
    ]
    times: dict[str, Any] = {"spots": 2 * rows * rows}
    table = None
    for preset in ("cpu", "auto"):
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            model = cs.tl.fit(
                sections,
                preset=preset,
                max_epochs=epochs,
                batch_size=batch_size,
                seed=0,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
            )
            times[preset] = time.perf_counter() - start
            times[f"{preset}_cpu"] = time.process_time() - cpu
        if preset == "auto":
            table = pd.DataFrame(model.history["auto"]["table"])
            times["chosen"] = model.history["auto"]["chosen"]
    return times, table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10, help="two toy sections of rows x rows spots")
    parser.add_argument("--epochs", type=int, default=None, help="every fit's max_epochs (default: preset's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r, table = run(args.rows, args.epochs, args.batch_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    epochs = "each preset's own epochs" if args.epochs is None else f"{args.epochs} epochs"
    command = f"python benchmarks/auto_cost.py --rows {args.rows} --batch-size {args.batch_size} "
    command += f"--threads {args.threads}" + ("" if args.epochs is None else f" --epochs {args.epochs}")
    lines = [
        f'# Cost of `preset="auto"` against a plain fit ({device})',
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; load average at the end {os.getloadavg()[0]:.1f}; "
        f"commit {commit or '?'}",
        f"- toy tissue, two sections of {args.rows} x {args.rows} spots ({int(r['spots'])} spots, the second "
        f"held out), batch {args.batch_size}, {epochs}, seed 0, self-check included",
        f"- command: `{command}`",
        "",
        "| fit | wall time (s) | CPU time of the process (s) |",
        "|---|---:|---:|",
        f'| `preset="cpu"` | {r["cpu"]:.1f} | {r["cpu_cpu"]:.1f} |',
        f'| `preset="auto"` ({len(AUTO_CANDIDATES)} candidates) | {r["auto"]:.1f} | {r["auto_cpu"]:.1f} |',
        "",
        f'`preset="auto"` cost **{r["auto_cpu"] / r["cpu_cpu"]:.1f}×** a plain fit in CPU time '
        f"({r['auto'] / r['cpu']:.1f}× in wall time, which other work on the machine also moves); it kept "
        f"{r['chosen']!r}.",
        "",
        "```text",
        format_auto(table),
        "```",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    path = Path(args.out) / f"auto_cost_{device}.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
