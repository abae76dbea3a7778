"""Time one CoMTIP training step (forward + backward + AdamW step) on synthetic batches.

Three sweeps, each a median of ``--repeats`` steps after ``--warmup`` untimed steps, in one process so
that the ratios compare like with like:

1. the package's ``vit-tiny`` preset (ViT-Ti/16 at 112 px) at several batch sizes, 250 genes;
2. the paper's setting, ViT-B/32 at 224 px (``vit_base_patch32_224``, pretrained=False), same batch sizes;
3. the ``vit-tiny`` preset at a fixed batch size while the genes per sentence grow (250 → 20k): the Gene-Text
   Encoder is meant to be linear in the gene count, so time per step should grow at most linearly;

then one step of the ``vit-tiny`` row at batch 32 (8 with ``--quick``) is profiled (``step_profile.py``: operator calls, host reads
of tensor values and, on a GPU, kernel launches, synchronisations and the share of the step the GPU is busy).

Full CoMTIP objective (InfoNCE + MFM + PAAT). Gene names use the dependency-free char-ngram backend: the
text model only runs once per gene outside the loop, so the backend does not change step time. With
``--device cuda`` the steps run on the GPU (fp32, plus a bf16-autocast column) with larger batches. Writes
``benchmarks/results/train_step_<device>.md``.

    python benchmarks/train_step.py                  # ~10 min on 2 CPU cores
    python benchmarks/train_step.py --quick          # ~1 min
    python benchmarks/train_step.py --device cuda    # ~2 min on one H100/H200
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.step_profile import profile_markdown, profile_step
from comtip_sc.io import atomic_path
from comtip_sc.model import ComtipConfig, build_network


@dataclass
class Row:
    sweep: str
    setting: str
    batch: int
    genes: int
    step_s: float
    bf16_step_s: float | None = None


def _batch(b: int, g: int, tile_px: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, tile_px, tile_px, generator=gen).to(device),
        "gene_idx": torch.arange(g).repeat(b, 1).to(device),
        "values": (torch.rand(b, g, generator=gen) * 4).to(device),
        "mask": torch.ones(b, g, dtype=torch.bool).to(device),
    }


def time_step(
    cfg: ComtipConfig,
    batch: int,
    genes: int,
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    bf16: bool = False,
) -> float:
    """Median seconds of one optimiser step of the full CoMTIP loss for ``batch`` spots × ``genes`` genes."""
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build_network(cfg, [f"GENE{i}" for i in range(genes)]).to(dev).train()
    # Panel statistics as fit sets them (values below are uniform on [0, 4]), so the value-query term runs.
    net.set_gene_max([4.0] * genes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    data = _batch(batch, genes, cfg.tile_px, dev)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    for i in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with ctx:
            loss = net(data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(
    configs: dict[str, ComtipConfig],
    batch_sizes: Sequence[int],
    gene_counts: Sequence[int],
    *,
    gene_batch: int,
    repeats: int,
    warmup: int,
    device: str = "cpu",
    log=print,
) -> list[Row]:
    """Run the batch-size sweeps (every config, 250 genes) and the gene-count sweep (the first config).

    On ``device="cuda"`` each row is timed in fp32 and again under bf16 autocast.
    """
    first = next(iter(configs))
    plan = [("batch", name, b, 250) for name in configs for b in batch_sizes]
    plan += [("genes", first, gene_batch, g) for g in gene_counts]
    rows = []
    for sweep, name, b, g in plan:
        t = time_step(configs[name], b, g, repeats=repeats, warmup=warmup, device=device)
        row = Row(sweep, name, b, g, t)
        if device == "cuda":
            row.bf16_step_s = time_step(
                configs[name], b, g, repeats=repeats, warmup=warmup, device=device, bf16=True
            )
        log(f"  {name:<32} batch {b:>3}  genes {g:>6}: {t:.3f} s/step")
        rows.append(row)
    return rows


def to_markdown(rows: list[Row], header: list[str]) -> str:
    """Markdown tables with per-sample times and ratios taken from this same run."""
    cuda = any(r.bf16_step_s is not None for r in rows)
    extra = " bf16 samples/s | fp32 samples/s |" if cuda else ""
    out = [*header, "", "## Batch size", ""]
    first_b = min(r.batch for r in rows if r.sweep == "batch")
    out += [f"| setting | batch | genes | s/step | ms/sample | ms/sample ratio to batch {first_b} |" + extra]
    out += ["|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else "")]

    def cell(r: Row) -> str:
        return f" {r.batch / r.bf16_step_s:.0f} | {r.batch / r.step_s:.0f} |" if cuda else ""

    for r in (r for r in rows if r.sweep == "batch"):
        ref = next(x for x in rows if x.sweep == "batch" and x.setting == r.setting)
        out.append(
            f"| {r.setting} | {r.batch} | {r.genes} | {r.step_s:.3f} | {1e3 * r.step_s / r.batch:.1f} | "
            f"{(r.step_s / r.batch) / (ref.step_s / ref.batch):.2f} |{cell(r)}"
        )
    gene_rows = [r for r in rows if r.sweep == "genes"]
    if gene_rows:
        ref = gene_rows[0]
        out += ["", f"## Genes per sentence ({ref.setting}, batch {ref.batch})", ""]
        out += [
            f"| genes | s/step | ms/sample | time ratio to {ref.genes} genes | gene-count ratio |" + extra
        ]
        out += ["|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else "")]
        for r in gene_rows:
            out.append(
                f"| {r.genes} | {r.step_s:.3f} | {1e3 * r.step_s / r.batch:.1f} | {r.step_s / ref.step_s:.2f} | "
                f"{r.genes / ref.genes:.0f} |{cell(r)}"
            )
    return "\n".join(out) + "\n"


def tiny_configs() -> dict[str, ComtipConfig]:
    """A seconds-fast setting for tests."""
    kw = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)
    return {
        "tiny": ComtipConfig(
            backbone="vit_tiny_patch16_224",
            pretrained=False,
            freeze_backbone="none",
            token_depth=0,
            token_dim=None,
            tile_px=32,
            embed_dim=16,
            gene_dim=16,
            n_heads_gene=2,
            text_encoder="char-ngram",
            backbone_kwargs=kw,
        )
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="~1 minute: fewer batch sizes, genes up to 5k, 2 repeats."
    )
    p.add_argument("--repeats", type=int, help="Timed steps per row (median; default 3, quick 2).")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice).")
    p.add_argument("--out", default="benchmarks/results", help="Folder for train_step_<device>.md.")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="Where steps run (cuda: fp32 and bf16 columns).",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible.")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = ComtipConfig.preset("vit-tiny", text_encoder="char-ngram")
    vitb = ComtipConfig.preset("gpu", backbone="vit_base_patch32_224", text_encoder="char-ngram")
    configs = {"vit-tiny preset (ViT-Ti/16, 112 px)": cpu, "ViT-B/32, 224 px": vitb}
    if args.quick:
        batch_sizes, genes, gene_batch, repeats = [8], [250, 1000, 5000], 4, args.repeats or 2
    elif args.device == "cuda":
        batch_sizes, genes, gene_batch, repeats = (
            [32, 64, 128, 256],
            [250, 1000, 5000, 20000],
            32,
            args.repeats or 5,
        )
    else:
        batch_sizes, genes, gene_batch, repeats = [8, 16, 32], [250, 1000, 5000, 20000], 8, args.repeats or 3
    start = time.perf_counter()
    print(
        f"Timing {len(configs) * len(batch_sizes) + len(genes)} settings ({repeats} repeats after 2 warm-ups)..."
    )
    rows = run(
        configs, batch_sizes, genes, gene_batch=gene_batch, repeats=repeats, warmup=2, device=args.device
    )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    command = " ".join(["python benchmarks/train_step.py", *(argv if argv is not None else sys.argv[1:])])
    header = [
        f"# Training-step time ({'quick' if args.quick else 'full'} run)",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device for s/step: {args.device} (fp32); CUDA: {device}",
        f"- one step = forward + backward + AdamW step of the full CoMTIP loss (InfoNCE + MFM + PAAT + value "
        f"query); median of {repeats} steps after 2 warm-ups; synthetic images and values; char-ngram gene names",
        f"- total time of this run: {time.perf_counter() - start:.0f} s; command: `{command}`",
    ]
    # Why the batch-32 row of the first setting takes what it takes (the row the speed targets read).
    first, b_ref = next(iter(configs)), 32 if 32 in batch_sizes else max(batch_sizes)
    ref = next(r for r in rows if r.sweep == "batch" and r.setting == first and r.batch == b_ref)
    cfg = configs[first]
    prof = profile_step(cfg, _batch(ref.batch, ref.genes, cfg.tile_px, torch.device(args.device)))
    section = profile_markdown(prof, first, ref.batch, ref.genes, ref.step_s)
    text = to_markdown(rows, header) + "\n".join(section) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A quick run never overwrites the full table.
    target = out / f"train_step_{args.device}{'_quick' if args.quick else ''}.md"
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
