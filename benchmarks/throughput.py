"""Throughput and memory of embedding, training and retrieval at scale, one run, one markdown table.

Stages (all on the package's ``cpu`` preset network: frozen ImageNet EfficientNet-Lite0 at 128 px under a
2-block token transformer, built directly with ``build_network``; char-ngram gene names, which no stage
times):

a. bare forward spots/s (the trunk alone, and the full image encoder on ready-made tensors) against
   ``cs.tl.comtip_embed`` spots/s on a toy section, same batch and tile size; plus the tile cutting alone;
   twice on the CPU, in fresh processes: as the package runs (freed activations kept in the heap for the
   next batch, ``cs.model.keep_freed_memory``) and with ``COMTIP_SC_KEEP_HEAP=0`` (glibc's defaults: every
   batch's activations faulted in again, page by page); the bare forwards run under the same setting;
b. ``cs.tl.fit`` steps/s reading pixels, a tile cache and a trunk-token cache (epochs after the first);
c. embedding a synthetic 40,000 × 40,000 px chunked zarr slide with 50,000 spots (child process, so the
   memory is that run's alone): peak memory (PSS), spots/s against the same network's forward on ready
   tensors (same batch and precision), and one process's tile cutting on the slide;
d. time and peak memory (PSS) of retrieval from a 1,000,000-spot synthetic bank for 100,000 queries (child
   process), on the device;
e. tile- and token-cache reads/s from memory and through the lazy chunk LRU: the measurement behind
   ``IN_MEMORY_MAX_BYTES``.

    python benchmarks/throughput.py --slide-preset vit-tiny   # full sizes, ~15 min on 2 CPU cores
    python benchmarks/throughput.py --quick                   # reduced sizes, a few minutes
    python benchmarks/throughput.py --device cuda             # GPU table (stages b, c, d), a few minutes

Writes ``benchmarks/results/throughput_<device>.md`` (``..._quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import comtip_sc as cs
from comtip_sc.constants import KEEP_HEAP_ENV
from comtip_sc.model import ComtipConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.cache_reads import stage_cache_reads
from benchmarks.report import _atomic_write, git_commit, machine
from benchmarks.slide import write_slide
from benchmarks.throughput_children import (
    TILE_UM,
    child_retrieval,
    child_slide,
    cpu_model,
    ready_batch,
    timed_batches,
)

RSS_TARGET_GB = 3.0
#: comtip_embed's share of the bare encoder forward to reach, per device.
RATIO_TARGET = {"cpu": 0.9, "cuda": 0.5}
#: Stage a's measurement rounds; each figure is its best round.
ROUNDS = 3


# ----------------------------------------------------------------------------------------------- stage a
def stage_embed(
    n_side: int, batch: int, workers: list[int], tag: str = "", device: str = "cpu"
) -> list[tuple[str, str, str]]:
    model = cpu_model()
    dev = torch.device(device)
    net = model.network.eval().to(dev)
    sdata = cs.datasets.toy_tissue(n_rows=n_side, n_cols=n_side, n_genes=30, seed=0)
    n = n_side * n_side
    n_batches = -(-n // batch)
    x = ready_batch(batch, model.tile_px, dev)
    timed = {
        # The forwards under the precision comtip_embed uses (bf16 autocast on a GPU, float32 on the CPU).
        "trunk": lambda: timed_batches(lambda: net.vision.trunk_tokens(x), n_batches, dev),
        "encoder": lambda: timed_batches(lambda: net.encode_image(x), n_batches, dev),
        # A fresh reader each time, as comtip_embed makes one: its chunk cache starts empty.
        "cut": lambda: model.tiles(sdata).take(range(n)),
    }
    for w in workers:
        timed[w] = lambda w=w: cs.tl.comtip_embed(
            sdata, model, batch_size=batch, num_workers=w, accelerator=device, copy=True
        )
    # Rounds interleave the measurements so that a slow spell of the machine hits all of them, and each
    # figure is its best round (the first round also warms caches and allocators).
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(ROUNDS):
        for key, fn in timed.items():
            t0 = time.perf_counter()
            seconds = fn()
            best[key] = min(best[key], seconds if key in ("trunk", "encoder") else time.perf_counter() - t0)
    trunk, encoder = (n_batches * batch / best[k] for k in ("trunk", "encoder"))
    rows = [
        (
            "a",
            f"trunk forward alone, batch {batch}, {model.tile_px} px, channels_last"
            + (f", {device}, bf16 autocast" if dev.type == "cuda" else ""),
            f"{trunk:.0f} spots/s",
        ),
        ("a", "image encoder forward (trunk + tokens + head) on ready tensors", f"{encoder:.0f} spots/s"),
        (
            "a",
            f"tile cutting alone (SpotTiles, 1 process, {TILE_UM:g} µm → {model.tile_px} px)",
            f"{n / best['cut']:.0f} spots/s",
        ),
    ]
    for w in workers:
        emb = n / best[w]
        ratio = emb / encoder
        verdict = "meets" if ratio >= RATIO_TARGET[device] else "misses"
        rows.append(
            (
                "a",
                f"`cs.tl.comtip_embed`, num_workers={w}, {n} spots",
                f"{emb:.0f} spots/s; ×{ratio:.3f} of the encoder forward, ×{emb / trunk:.2f} of the trunk "
                f"(target ≥ {RATIO_TARGET[device]}: {verdict})",
            )
        )
    if tag:
        rows = [(stage, f"{what}; process started with `{tag}`", result) for stage, what, result in rows]
    return rows


# ----------------------------------------------------------------------------------------------- stage b
#: Stage b's ways of feeding fit.
FIT_MODES = {
    "pixels": ("pixels (tiles cut from the image every step)", {"feature_cache": False}),
    "tiles": ("tile cache (zarr, 128 px tiles)", {"feature_cache": False, "tile_cache": "fit_tiles"}),
    "tokens": (
        "trunk-token cache (8 dihedral views per tile)",
        {"feature_cache": True, "tile_cache": "fit_tok"},
    ),
}


def stage_fit(
    n_side: int,
    plan: list[tuple[str, int]],
    epochs: int,
    work: Path,
    accelerator: str = "cpu",
) -> list[tuple[str, str, str]]:
    """Steps/s and samples/s of ``cs.tl.fit`` for every ``(mode, batch)`` of ``plan`` (modes: FIT_MODES)."""
    import lightning as L

    class Clock(L.Callback):
        """Wall time and steps of every epoch after the first (which pays start-up costs)."""

        seconds, steps = 0.0, 0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0, self._s0 = time.perf_counter(), trainer.global_step

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch >= 1:
                self.seconds += time.perf_counter() - self._t0
                self.steps += trainer.global_step - self._s0

    sdata = cs.datasets.toy_tissue(n_rows=n_side, n_cols=n_side, n_genes=60, seed=0)
    rows = []
    for mode, batch in plan:
        name, kw = FIT_MODES[mode]
        kw = {k: str(work / v) if k == "tile_cache" else v for k, v in kw.items()}
        clock = Clock()
        cs.tl.fit(
            sdata,
            preset="cpu",
            config=ComtipConfig.preset("cpu", text_encoder="char-ngram"),
            tile_um=TILE_UM,
            max_epochs=epochs,
            batch_size=batch,
            val_sections=None,
            seed=0,
            accelerator=accelerator,
            devices=1,
            callbacks=[clock],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            default_root_dir=str(work),
            **kw,
        )
        rate = clock.steps / clock.seconds
        rows.append(
            (
                "b",
                f"`cs.tl.fit`, {name}, batch {batch}, {n_side * n_side} spots, {accelerator}",
                f"{rate:.2f} steps/s, {rate * batch:,.0f} samples/s ({clock.steps} steps timed)",
            )
        )
    return rows


def run_child(args: list[str], threads: int, env: dict[str, str] | None = None) -> dict:
    """Run a stage in a fresh interpreter (with ``env`` added); its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_slide(args: argparse.Namespace, work: Path, n_px: int, n_spots: int, workers: int) -> list:
    """Stage c: write the slide here, embed it in a child process."""
    t0 = time.perf_counter()
    write_slide(work / "slide.zarr", n_px)
    size = sum(f.stat().st_size for f in (work / "slide.zarr").rglob("*") if f.is_file()) / 1e6
    written = time.perf_counter() - t0
    log(f"stage c: slide of {n_px} px written in {written:.0f} s; embedding {n_spots} spots")
    child = ["slide", str(work / "slide.zarr"), str(n_spots), str(args.batch or 0), str(workers)]
    r = run_child([*child, args.slide_preset, args.device], args.threads)
    ok = "meets" if r["peak_gb"] < RSS_TARGET_GB else "MISSES"
    rate = n_spots / r["seconds"]
    target = RATIO_TARGET[args.device]
    ratio = rate / r["encoder_spots_s"]
    where = f"{args.device}, bf16 autocast" if args.device == "cuda" else "cpu, float32"
    gpu = f"; GPU peak {r['gpu_peak_gb']:.2f} GB" if args.device == "cuda" else ""
    return [
        (
            "c",
            f"embed a {n_px:,} × {n_px:,} px zarr slide (1024² chunks, {size:.1f} MB on disk, written in "
            f"{written:.0f} s), {n_spots:,} spots, `{args.slide_preset}` network, batch {r['batch']}, "
            f"num_workers={workers}, {where}",
            f"peak memory {r['peak_gb']:.2f} GB (PSS, process + workers; {r['before_gb']:.2f} GB before embedding; "
            f"target < {RSS_TARGET_GB:g} GB: {ok}){gpu}; {r['seconds']:.1f} s, {rate:,.0f} spots/s",
        ),
        (
            "c",
            f"same network's image encoder forward on ready tensors, batch {r['batch']}, {where}",
            f"{r['encoder_spots_s']:,.0f} spots/s; `comtip_embed` above is ×{ratio:.3f} of it "
            f"(target ≥ {target}: {'meets' if ratio >= target else 'misses'})",
        ),
    ] + [
        (
            "c",
            f"tile cutting alone on the slide (SpotTiles, 1 process, fresh reader, 2,000 spots in {order})",
            f"{r[key]:,.0f} spots/s (×{r[key] / r['encoder_spots_s']:.3f} of the forward per process)",
        )
        for order, key in [
            ("table order", "cut_spots_s"),
            ("`SpotTiles.read_order()`, as `comtip_embed` reads them", "cut_read_order_spots_s"),
        ]
    ]


def stage_retrieval(args: argparse.Namespace, n_bank: int, n_query: int) -> list:
    """Stage d, in a child process."""
    r = run_child(["retrieval", str(n_bank), str(n_query), "50", args.device], args.threads)
    gpu = f", GPU peak {r['gpu_peak_gb']:.2f} GB" if args.device == "cuda" else ""
    return [
        (
            "d",
            f"retrieval on the {args.device}, top-50 of a {n_bank:,}-spot bank ({r['dim']}-d, 250 genes, 25 per "
            f"spot) for {n_query:,} queries",
            f"{r['seconds']:.1f} s ({n_query / r['seconds']:,.0f} queries/s); peak memory (PSS) {r['peak_gb']:.2f} GB "
            f"({r['before_gb']:.2f} GB holding bank and queries){gpu}",
        )
    ]


def log(msg: str) -> None:
    print(f"[throughput {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Reduced sizes (a few minutes).")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores).")
    p.add_argument(
        "--batch", type=int, help="Embedding batch size (default: the package's, 64 CPU / 512 GPU)."
    )
    p.add_argument("--slide-px", type=int, help="Side of the synthetic slide (default 40000; quick 8000).")
    p.add_argument("--slide-spots", type=int, help="Spots on the slide (default 50000; quick 2000).")
    p.add_argument(
        "--slide-workers",
        type=int,
        help="Stage c's loader workers (default: 0 on the CPU, as comtip_embed's default; cuda: cores - 2).",
    )
    p.add_argument("--bank", type=int, help="Bank spots (default 1,000,000; quick 100,000).")
    p.add_argument("--queries", type=int, help="Query spots (default 100,000; quick 10,000).")
    p.add_argument(
        "--fit-plan",
        help="Stage b's runs as mode:batch,... with modes pixels, tiles, tokens (default: each mode at 32; "
        "cuda: tokens:32,tokens:256).",
    )
    p.add_argument(
        "--fit-side", type=int, help="Stage b's toy section is side × side spots (default 16; cuda 64)."
    )
    p.add_argument(
        "--slide-preset",
        default="cpu",
        help="Network of stage c (default: %(default)s). Memory is the data path's (tiles read from the lazy "
        "slide, batches) plus the network's; a lighter preset (vit-tiny) embeds 50,000 spots in minutes.",
    )
    p.add_argument("--stages", help="Stages to run (default: abcde; cuda: bcd).")
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="Where the networks run (default: %(default)s); cuda: embedding under bf16 autocast, fit in bf16 "
        "mixed precision, retrieval on the GPU.",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="Output folder.")
    p.add_argument("--name", help="Results file (default: throughput_<device>.md, with --quick _quick.md).")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible.")
    return args


def run_as_child(kind: str, rest: list[str]) -> None:
    if kind == "embed":
        side, batch, tag, device = rest
        result = {"rows": stage_embed(int(side), int(batch), [0, 1], tag, device)}
    elif kind == "slide":
        result = child_slide(rest[0], *map(int, rest[1:4]), *rest[4:])
    else:
        result = child_retrieval(*map(int, rest[:3]), device=rest[3])
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        return run_as_child(args.child[0], args.child[1:])
    q, gpu = args.quick, args.device == "cuda"
    stages = args.stages or ("bcd" if gpu else "abcde")
    slide_px = args.slide_px or (8000 if q else 40000)
    slide_spots = args.slide_spots or (2000 if q else 50000)
    workers = (
        args.slide_workers
        if args.slide_workers is not None
        else (max(1, (os.cpu_count() or 2) - 2) if gpu else 0)
    )
    n_bank = args.bank or (100_000 if q else 1_000_000)
    n_query = args.queries or (10_000 if q else 100_000)
    plan_text = args.fit_plan or ("tokens:32,tokens:256" if gpu else "pixels:32,tiles:32,tokens:32")
    plan = [(m, int(b)) for m, b in (item.split(":") for item in plan_text.split(","))]
    fit_side = args.fit_side or (10 if q else 64 if gpu else 16)
    commit, started = git_commit(), time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="comtip_throughput_") as tmp:
        work = Path(tmp)
        for stage in stages:
            log(f"stage {stage} starts ({(time.perf_counter() - started) / 60:.1f} min in)")
            if stage == "a":
                # Each in a fresh process, so that the heap of one run does not carry into the other. On a GPU
                # the activations are not on the host, so the second process is left out.
                for env in ({}, {KEEP_HEAP_ENV: "0"}) if not gpu else ({},):
                    tag = f"{KEEP_HEAP_ENV}=0" if env else ""
                    child = ["embed", str(12 if q else 32), str(args.batch or 64), tag, args.device]
                    rows += map(tuple, run_child(child, args.threads, env)["rows"])
            elif stage == "b":
                rows += stage_fit(fit_side, plan, 2 if q else 4 if gpu else 3, work, args.device)
            elif stage == "c":
                rows += stage_slide(args, work, slide_px, slide_spots, workers)
            elif stage == "d":
                rows += stage_retrieval(args, n_bank, n_query)
            elif stage == "e":
                rows += stage_cache_reads(12 if q else 24, work, TILE_UM)
            # The table so far after every stage: a run stopped part-way still leaves its figures.
            write_table(rows, args, commit, time.perf_counter() - started)


def write_table(
    rows: list[tuple[str, str, str]], args: argparse.Namespace, commit: str, seconds: float
) -> None:
    m = machine()
    argv = " ".join(a for a in sys.argv[1:])
    lines = [
        f"# Throughput{' (quick sizes)' if args.quick else ''}",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores"
        + (f", {m['device']}" if args.device == "cuda" else "")
        + f", {m['platform']}; Python {m['python']}, torch "
        f"{m['torch']}, {args.threads} torch threads. Commit {commit}. Command: "
        f"`python benchmarks/throughput.py{(' ' + argv) if argv else ''}`. Wall time {seconds / 60:.1f} min.",
        "",
        "| stage | what | result |",
        "|---|---|---|",
        *[f"| {s} | {w} | {r} |" for s, w, r in rows],
        "",
    ]
    out = Path(args.out) / (args.name or f"throughput_{args.device}{'_quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, "\n".join(lines))
    print("\n".join(lines))
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
