"""The ``comtip`` command line: ``fit``, ``embed``, ``predict`` and ``demo`` for shells and clusters.

Exit codes: 0 success, 1 unexpected failure, 2 bad command line, 3 bad input data or files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from ._cli_io import load_data, write_result
from .model._config import PRESET_NAMES

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3

log = logging.getLogger("comtip_sc.cli")

#: What ``comtip benchmark`` prints: the benchmark is a harness of the source repository, not of the library.
BENCHMARK_HOWTO = (
    "The expression-prediction benchmark is not installed with the package: it runs from a source checkout,\n"
    "    git clone <comtip_sc repository> && cd comtip_sc && pip install -e .\n"
    "    python -m benchmarks --preset cpu --jobs 2 --data-root <folder with her2st/ and stutility_mob/>\n"
    "(see benchmarks/README.md there)."
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--table-key", default="table", help="Table of the SpatialData to use (default: %(default)s)."
    )
    p.add_argument("--batch-size", type=int, default=32, help="Spots per batch (default: %(default)s).")
    p.add_argument(
        "--num-workers", type=int, default=0, help="Data-loader workers cutting tiles (default: %(default)s)."
    )
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: %(default)s).")
    p.add_argument(
        "--spot-diameter-um",
        type=float,
        help="Spot diameter in µm for data that does not record it (spatialdata_io.visium output: 55).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Log debugging details.")
    p.add_argument("-q", "--quiet", action="store_true", help="Log only warnings and errors.")


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        default={},
        help="JSON object of extra timm.create_model arguments, e.g. '{\"init_values\": 1e-5}' for UNI.",
    )
    p.add_argument(
        "--preset",
        default="cpu",
        choices=list(PRESET_NAMES),
        help="cpu: frozen ImageNet EfficientNet-Lite0 at 128 px + token transformer; gpu (= paper): CLIP "
        "ViT-B/32 at 224 px, fine-tuned; pathology: frozen UNI from --checkpoint-path + token transformer; "
        "vit-tiny: ViT-Ti/16 at 112 px from scratch (default: %(default)s).",
    )
    p.add_argument(
        "--backbone",
        help="Any timm model, a named trunk (uni, uni2-h, virchow, virchow2, h-optimus-0, clip-vit-b32, "
        "efficientnet_lite0.imagenet) or hf-hub:owner/name from the local cache, overriding the preset's.",
    )
    p.add_argument(
        "--checkpoint-path", help="Local weights file for the backbone (e.g. UNI's pytorch_model.bin)."
    )
    p.add_argument(
        "--freeze-backbone",
        help="none, all, or K: train only the last K blocks/stages of the trunk (default: the preset's).",
    )
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=1.0,
        help="Learning-rate multiplier of the trunk (default: %(default)s).",
    )
    p.add_argument(
        "--layer-decay",
        type=float,
        help="Layer-wise learning-rate decay of the trunk, e.g. 0.75 (default: off).",
    )
    p.add_argument(
        "--tile-um", type=float, default=150.0, help="Physical tile side in µm (default: %(default)s)."
    )
    p.add_argument("--tile-px", type=int, help="Tile side in pixels (default: the preset's).")
    p.add_argument("--epochs", type=int, help="Maximum epochs (default: the preset's, 20).")
    p.add_argument(
        "--lr", type=float, help="Learning rate (default: the preset's: 1e-3 cpu/pathology, 1e-4 gpu)."
    )
    p.add_argument("--genes", help="Gene panel: a comma-separated list or a file with one gene per line.")
    p.add_argument(
        "--n-top-genes",
        type=int,
        default=250,
        help="Panel size when --genes is not given (default: %(default)s).",
    )
    p.add_argument("--no-mfm", action="store_true", help="Switch off Masked Feature Modeling.")
    p.add_argument("--no-paat", action="store_true", help="Switch off Pair-aware Adversarial Training.")
    p.add_argument(
        "--colour-norm",
        choices=["none", "section"],
        default="none",
        help="section: standardise each section's tile colour (scans of different brightness or stain), "
        "in training and in every prediction with the model (default: %(default)s).",
    )
    p.add_argument(
        "--devices",
        default="auto",
        help="Devices per node: a number, a list like 0,1 or auto (default: %(default)s).",
    )
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default: %(default)s).")
    p.add_argument(
        "--num-nodes", type=int, default=1, help="Nodes for multi-node DDP (default: %(default)s)."
    )
    p.add_argument(
        "--precision", help="Lightning precision, e.g. bf16-mixed (default: bf16 on capable GPUs, else 32)."
    )
    p.add_argument("--seed", type=int, help="Seed for a reproducible run.")
    p.add_argument("--tile-cache", help="Folder for a zarr tile cache reused across epochs and runs.")
    p.add_argument(
        "--section-balance",
        type=float,
        metavar="ALPHA",
        help="Draw each training section with probability proportional to n_spots**ALPHA (0: sections "
        "equally, 1: spots equally); default: plain shuffling.",
    )
    p.add_argument("--resume", help="Lightning checkpoint (.ckpt) to resume training from.")
    p.add_argument(
        "--log-dir", default=".", help="Folder for Lightning logs and checkpoints (default: %(default)s)."
    )


def _genes_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if Path(value).is_file():
        return [g.strip() for g in Path(value).read_text().splitlines() if g.strip()]
    return [g.strip() for g in value.split(",") if g.strip()]


def _devices_arg(value: str):
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",")]
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``comtip`` (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="comtip",
        description="CoMTIP: joint embedding of H&E tiles and spatial gene expression.",
        epilog="DATA is a SpatialData .zarr, a her2st or stutility_mob folder, or 'toy'. "
        "Exit codes: 0 ok, 1 failure, 2 bad command line, 3 bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="Train a model and save it to a folder.")
    p.add_argument(
        "data",
        nargs="+",
        help="Training data: one or several SpatialData .zarr, her2st/stutility_mob folders, or 'toy' "
        "(several datasets may measure different genes).",
    )
    p.add_argument("--out", required=True, help="Folder to save the trained model to.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing model folder.")
    _add_fit_options(p)
    _add_common(p)

    for name, helptext in [
        ("embed", "Write image embeddings (obsm['X_comtip'])."),
        ("predict", "Predict expression from images (obsm['comtip_pred'], spots x genes)."),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "data", help="Data to process (SpatialData .zarr, her2st/stutility_mob folder, or 'toy')."
        )
        p.add_argument("--model", required=True, help="Folder of a model saved by 'comtip fit'.")
        p.add_argument(
            "--out", required=True, help="Result: .h5ad (the table) or .zarr (the whole SpatialData)."
        )
        p.add_argument(
            "--key-added",
            default="X_comtip" if name == "embed" else "comtip_pred",
            help="obsm key of the result (default: %(default)s).",
        )
        if name == "predict":
            p.add_argument(
                "--method",
                default="retrieval",
                choices=["retrieval", "zero_shot", "head"],
                help="Prediction method (default: %(default)s).",
            )
            p.add_argument(
                "--genes", help="Genes to predict: comma-separated or a file (default: the model's panel)."
            )
            p.add_argument(
                "--k", type=int, default=50, help="Neighbours for retrieval (default: %(default)s)."
            )
            p.add_argument(
                "--temperature",
                type=float,
                default=None,
                help="Softmax temperature of zero_shot (default: the one fit chose on the training spots).",
            )
            p.add_argument(
                "--layer-added", help="Deprecated alias of --key-added (predictions are no longer a layer)."
            )
        _add_common(p)

    p = sub.add_parser("demo", help="fit -> embed -> predict on the toy tissue (or on DATA) and report.")
    p.add_argument(
        "data", nargs="?", default="toy", help="'toy' (default) or a her2st/stutility_mob folder or .zarr."
    )
    p.add_argument(
        "--out", default="comtip_demo_out", help="Folder for the model and results (default: %(default)s)."
    )
    p.add_argument("--epochs", type=int, default=4, help="Training epochs (default: %(default)s).")
    p.add_argument("--seed", type=int, default=0, help="Seed (default: %(default)s).")
    _add_common(p)

    p = sub.add_parser(
        "benchmark",
        help="Where the expression-prediction benchmark lives (it runs from a source checkout).",
    )
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Third-party libraries stay at WARNING (spatialdata's readers log every element at INFO);
    # our own loggers and Lightning's rank-zero messages (devices, precision) follow --verbose/--quiet.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in ("comtip_sc", "lightning.pytorch"):
        logging.getLogger(name).setLevel(level)


def _cmd_fit(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    import comtip_sc as cs
    from comtip_sc.model import ComtipConfig

    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it.")
    datasets = [load_data(d) for d in args.data]
    cfg = ComtipConfig.preset(
        args.preset,
        mfm=not args.no_mfm,
        paat=not args.no_paat,
        backbone_kwargs=args.backbone_kwargs,
        colour_norm=None if args.colour_norm == "none" else args.colour_norm,
    )
    model = cs.tl.fit(
        datasets[0] if len(datasets) == 1 else datasets,
        table_key=args.table_key,
        genes=_genes_arg(args.genes),
        n_top_genes=args.n_top_genes,
        preset=args.preset,
        config=cfg,
        freeze_backbone=args.freeze_backbone,
        backbone_lr_mult=args.backbone_lr_mult,
        layer_decay=args.layer_decay,
        backbone=args.backbone,
        checkpoint_path=args.checkpoint_path,
        tile_um=args.tile_um,
        tile_px=args.tile_px,
        spot_diameter_um=args.spot_diameter_um,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        accelerator=args.accelerator,
        devices=_devices_arg(args.devices),
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
        num_workers=args.num_workers,
        seed=args.seed,
        tile_cache=args.tile_cache,
        section_balance=args.section_balance,
        ckpt_path=args.resume,
        default_root_dir=args.log_dir,
        enable_progress_bar=not args.quiet,
    )
    # Under DDP every process returns the same model; the first one alone writes it.
    if rank_zero_only.rank == 0:
        model.save(args.out, overwrite=args.overwrite)
        print(f"Saved {model!r} to {args.out}")
    return EXIT_OK


def _cmd_embed_predict(args: argparse.Namespace) -> int:
    import comtip_sc as cs
    from comtip_sc.model import ComtipModel

    model = ComtipModel.load(args.model)
    sdata = load_data(args.data)
    if args.command == "embed":
        cs.tl.comtip_embed(
            sdata,
            model,
            table_key=args.table_key,
            key_added=args.key_added,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            accelerator=args.accelerator,
            spot_diameter_um=args.spot_diameter_um,
        )
        what = f"obsm[{args.key_added!r}]"
    else:
        if args.layer_added is not None:
            warnings.warn(
                "--layer-added is deprecated and will be removed; use --key-added.",
                FutureWarning,
                stacklevel=1,
            )
            args.key_added = args.layer_added
        cs.tl.comtip_predict(
            sdata,
            model,
            method=args.method,
            genes=_genes_arg(args.genes),
            k=args.k,
            temperature=args.temperature,
            table_key=args.table_key,
            key_added=args.key_added,
            batch_size=args.batch_size,
            accelerator=args.accelerator,
            spot_diameter_um=args.spot_diameter_um,
        )
        what = f"obsm[{args.key_added!r}]"
    out = write_result(sdata, args.out, args.table_key)
    print(f"Wrote {what} of {sdata.tables[args.table_key].n_obs} spots to {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``comtip`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"]:
        print(BENCHMARK_HOWTO, file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    _setup_logging(args)
    start = time.time()
    try:
        if args.command == "fit":
            code = _cmd_fit(args)
        elif args.command in ("embed", "predict"):
            code = _cmd_embed_predict(args)
        elif args.command == "demo":
            from ._demo import run_demo

            code = run_demo(args)
        else:  # pragma: no cover - "benchmark" returns before parsing
            raise AssertionError(args.command)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        print(f"comtip {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"comtip {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAIL
    log.info("comtip %s finished in %.1f s.", args.command, time.time() - start)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
