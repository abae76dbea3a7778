"""Throughput and memory of embedding, training and retrieval at scale, one run, one markdown table.

Stages (all on the package's ``cpu`` preset network: frozen ImageNet EfficientNet-Lite0 at 128 px under a
2-block token transformer, built directly with ``build_network``; char-ngram gene names, which no stage
times):

a. bare forward spots/s (the trunk alone, and the full image encoder on ready-made tensors) against
   ``cs.tl.comtip_embed`` spots/s on a toy section, same batch and tile size; plus the tile cutting alone;
   twice, in fresh processes without and with ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's switch for transparent
   huge pages on large CPU tensors, which spares the page faults of every batch's activations);
b. ``cs.tl.fit`` steps/s reading pixels, a tile cache and a trunk-token cache (epochs after the first);
c. peak memory (PSS) while embedding a synthetic 40,000 × 40,000 px chunked zarr slide with 50,000 spots (child
   process, so the number is that run's alone);
d. time and peak memory (PSS) of retrieval from a 1,000,000-spot synthetic bank for 100,000 queries (child process);
e. tile- and token-cache reads/s from memory and through the lazy chunk LRU: the measurement behind
   ``IN_MEMORY_MAX_BYTES``.

    python benchmarks/throughput.py --slide-preset vit-tiny   # full sizes, ~15 min on 2 CPU cores
    python benchmarks/throughput.py --quick                   # reduced sizes, a few minutes
    python benchmarks/throughput.py --device cuda             # the networks on a GPU (fit in bf16)

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

import numpy as np
import torch

import comtip_sc as cs
from comtip_sc.model import ComtipConfig, ComtipModel, build_network

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.cache_reads import stage_cache_reads
from benchmarks.memory import PeakRSS
from benchmarks.report import _atomic_write, git_commit, machine
from benchmarks.slide import slide_sdata, write_slide

TILE_UM = 150.0
RSS_TARGET_GB = 3.0
RATIO_TARGET = 0.9
#: Stage a's measurement rounds; each figure is its best round.
ROUNDS = 3
#: PyTorch's switch for transparent huge pages on large CPU tensors (read once, at its first CPU allocation).
THP = "THP_MEM_ALLOC_ENABLE"


def cpu_model(tile_um: float = TILE_UM, preset: str = "cpu") -> ComtipModel:
    """A preset's network (the ``cpu`` preset: pretrained trunk) wrapped as a model, without training."""
    cfg = ComtipConfig.preset(preset, text_encoder="char-ngram")
    genes = [f"g{i}" for i in range(50)]
    return ComtipModel(build_network(cfg, genes), panel=genes, tile_um=tile_um, tile_px=cfg.tile_px)


# ----------------------------------------------------------------------------------------------- stage a
@torch.no_grad()
def stage_embed(
    n_side: int, batch: int, workers: list[int], tag: str = "", device: str = "cpu"
) -> list[tuple[str, str, str]]:
    model = cpu_model()
    dev = torch.device(device)
    net = model.network.eval().to(dev)
    sdata = cs.datasets.toy_tissue(n_rows=n_side, n_cols=n_side, n_genes=30, seed=0)
    n = n_side * n_side
    n_batches = -(-n // batch)
    # The loader's collate permutes uint8 NHWC tiles, so the network sees channels_last memory; a plain
    # NCHW tensor runs the CPU trunk ~1.5x slower and would flatter the ratio below.
    x = torch.randn(batch, model.tile_px, model.tile_px, 3).permute(0, 3, 1, 2).to(dev)

    def forward(fn):
        def run() -> None:
            for _ in range(n_batches):
                fn()
            if dev.type == "cuda":  # kernels run asynchronously: the clock stops when they are done
                torch.cuda.synchronize()

        return run

    timed = {
        "trunk": forward(lambda: net.vision.trunk_tokens(x)),
        "encoder": forward(lambda: net.encode_image(x)),
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
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    trunk, encoder = (n_batches * batch / best[k] for k in ("trunk", "encoder"))
    rows = [
        (
            "a",
            f"trunk forward alone, batch {batch}, {model.tile_px} px, channels_last"
            + (f", {device}, fp32" if dev.type == "cuda" else ""),
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
        verdict = "meets" if ratio >= RATIO_TARGET else "misses"
        rows.append(
            (
                "a",
                f"`cs.tl.comtip_embed`, num_workers={w}, {n} spots",
                f"{emb:.0f} spots/s; ×{ratio:.3f} of the encoder forward, ×{emb / trunk:.2f} of the trunk "
                f"(target ≥ {RATIO_TARGET}: {verdict})",
            )
        )
    if tag:
        rows = [(stage, f"{what}; process started with `{tag}`", result) for stage, what, result in rows]
    return rows


# ----------------------------------------------------------------------------------------------- stage b
def stage_fit(
    n_side: int, batch: int, epochs: int, work: Path, accelerator: str = "cpu"
) -> list[tuple[str, str, str]]:
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
    modes = {
        "pixels (tiles cut from the image every step)": {"feature_cache": False},
        "tile cache (zarr, 128 px tiles)": {"feature_cache": False, "tile_cache": str(work / "fit_tiles")},
        "trunk-token cache (8 dihedral views per tile)": {
            "feature_cache": True,
            "tile_cache": str(work / "fit_tok"),
        },
    }
    rows = []
    for name, kw in modes.items():
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
        rows.append(
            ("b", f"`cs.tl.fit`, {name}, batch {batch}", f"{clock.steps / clock.seconds:.2f} steps/s")
        )
    return rows


# ----------------------------------------------------------------------------------------------- stage c
def child_slide(
    path: str, n_spots: int, batch: int, workers: int, preset: str = "cpu", accelerator: str = "cpu"
) -> dict:
    sdata = slide_sdata(Path(path), n_spots)
    model = cpu_model(preset=preset)
    with PeakRSS() as rss:
        before = rss.peak
        t0 = time.perf_counter()
        cs.tl.comtip_embed(
            sdata,
            model,
            batch_size=batch,
            num_workers=workers,
            accelerator=accelerator,
            spot_diameter_um=55.0,
        )
        seconds = time.perf_counter() - t0
    emb = sdata.tables["table"].obsm["X_comtip"]
    assert emb.shape == (n_spots, model.config.embed_dim) and np.isfinite(emb).all()
    return {"seconds": seconds, "peak_gb": rss.peak / 1e9, "before_gb": before / 1e9}


# ----------------------------------------------------------------------------------------------- stage d
def child_retrieval(n_bank: int, n_query: int, k: int, n_genes: int = 250, per_spot: int = 25) -> dict:
    import scipy.sparse as sp

    from comtip_sc.model import ReferenceBank, retrieve

    rng = np.random.default_rng(0)
    dim = ComtipConfig.preset("cpu").embed_dim

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cols = (np.arange(n_bank)[:, None] * 7 + np.arange(per_spot)[None] * (n_genes // per_spot)) % n_genes
    cols.sort(axis=1)
    values = sp.csr_matrix(
        (
            rng.random(n_bank * per_spot, dtype=np.float32) + 0.1,
            cols.ravel(),
            np.arange(0, n_bank * per_spot + 1, per_spot),
        ),
        shape=(n_bank, n_genes),
    )
    bank = ReferenceBank(unit(n_bank), values, [f"g{i}" for i in range(n_genes)])
    del values, cols
    queries = unit(n_query)
    with PeakRSS() as rss:
        before = rss.peak
        t0 = time.perf_counter()
        out = retrieve(queries, bank, k)
        seconds = time.perf_counter() - t0
    assert out.shape == (n_query, n_genes) and np.isfinite(out).all()
    return {"seconds": seconds, "peak_gb": rss.peak / 1e9, "before_gb": before / 1e9, "dim": dim}


def run_child(args: list[str], threads: int, env: dict[str, str] | None = None) -> dict:
    """Run a stage in a fresh interpreter (with ``env`` added); its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Reduced sizes (a few minutes).")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores).")
    p.add_argument("--batch", type=int, default=64, help="Embedding batch size (default: %(default)s).")
    p.add_argument("--slide-px", type=int, help="Side of the synthetic slide (default 40000; quick 8000).")
    p.add_argument("--slide-spots", type=int, help="Spots on the slide (default 50000; quick 2000).")
    p.add_argument("--bank", type=int, help="Bank spots (default 1,000,000; quick 100,000).")
    p.add_argument("--queries", type=int, help="Query spots (default 100,000; quick 10,000).")
    p.add_argument(
        "--slide-preset",
        default="cpu",
        help="Network of stage c (default: %(default)s). Memory is the data path's (tiles read from the lazy "
        "slide, batches) plus the network's; a lighter preset (vit-tiny) embeds 50,000 spots in minutes.",
    )
    p.add_argument("--stages", default="abcde", help="Stages to run (default: %(default)s).")
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="Where the networks run (default: %(default)s); cuda: fp32 embedding, fit in bf16 mixed "
        "precision, 0 and 4 loader workers.",
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="Output folder.")
    p.add_argument("--name", help="Results file (default: throughput_<device>.md, with --quick _quick.md).")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible.")
    torch.set_num_threads(args.threads)
    if args.child:
        kind, *rest = args.child
        if kind == "embed":
            side, batch, tag, device = rest
            workers = [0, 4] if device == "cuda" else [0, 1]
            result = {"rows": stage_embed(int(side), int(batch), workers, tag, device)}
        elif kind == "slide":
            result = child_slide(rest[0], *map(int, rest[1:4]), *rest[4:])
        else:
            result = child_retrieval(*map(int, rest))
        print(json.dumps(result))
        return
    q = args.quick
    slide_px = args.slide_px or (8000 if q else 40000)
    slide_spots = args.slide_spots or (2000 if q else 50000)
    n_bank = args.bank or (100_000 if q else 1_000_000)
    n_query = args.queries or (10_000 if q else 100_000)
    commit, started = git_commit(), time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="comtip_throughput_") as tmp:
        work = Path(tmp)
        if "a" in args.stages:
            side = str(12 if q else 32)
            # Each in a fresh process: torch reads the switch once. On a GPU only the loader allocates on the
            # CPU, so the second process is left out.
            for env in ({}, {THP: "1"}) if args.device == "cpu" else ({},):
                tag = f"{THP}=1" if env else ""
                child = ["embed", side, str(args.batch), tag, args.device]
                rows += map(tuple, run_child(child, args.threads, env)["rows"])
        if "b" in args.stages:
            rows += stage_fit(10 if q else 16, 32, 2 if q else 3, work, args.device)
        if "c" in args.stages:
            t0 = time.perf_counter()
            write_slide(work / "slide.zarr", slide_px)
            size = sum(f.stat().st_size for f in (work / "slide.zarr").rglob("*") if f.is_file()) / 1e6
            written = time.perf_counter() - t0
            r = run_child(
                [
                    "slide",
                    str(work / "slide.zarr"),
                    str(slide_spots),
                    str(args.batch),
                    "1",
                    args.slide_preset,
                    args.device,
                ],
                args.threads,
            )
            ok = "meets" if r["peak_gb"] < RSS_TARGET_GB else "MISSES"
            rows.append(
                (
                    "c",
                    f"embed a {slide_px:,} × {slide_px:,} px zarr slide (1024² chunks, {size:.1f} MB on disk, "
                    f"written in {written:.0f} s), {slide_spots:,} spots, `{args.slide_preset}` network, "
                    "num_workers=1",
                    f"peak memory {r['peak_gb']:.2f} GB (PSS, process + worker; {r['before_gb']:.2f} GB before embedding; "
                    f"target < {RSS_TARGET_GB:g} GB: {ok}); {r['seconds']:.0f} s, {slide_spots / r['seconds']:.0f} spots/s",
                )
            )
        if "d" in args.stages:
            r = run_child(["retrieval", str(n_bank), str(n_query), "50"], args.threads)
            rows.append(
                (
                    "d",
                    f"retrieval, top-50 of a {n_bank:,}-spot bank ({r['dim']}-d, 250 genes, 25 per spot) "
                    f"for {n_query:,} queries",
                    f"{r['seconds']:.0f} s ({n_query / r['seconds']:,.0f} queries/s); peak memory (PSS) {r['peak_gb']:.2f} GB "
                    f"({r['before_gb']:.2f} GB holding bank and queries)",
                )
            )
        if "e" in args.stages:
            rows += stage_cache_reads(12 if q else 24, work, TILE_UM)
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
