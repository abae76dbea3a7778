"""``python -m benchmarks``: expression prediction from H&E on held-out patients, every row in one run.

python -m benchmarks --preset smoke --out /tmp/bench        # toy tissue, seconds
python -m benchmarks --preset cpu --jobs 2 --data-root path/to/data   # her2st + MOB on a laptop CPU
python -m benchmarks --preset gpu --data-root path/to/data
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_DATA = 2


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Expression-prediction benchmark: CoMTIP beside its peer families and trivial baselines.",
    )
    p.add_argument(
        "--preset",
        default="smoke",
        choices=["smoke", "cpu", "gpu"],
        help="smoke: toy tissue, a few steps; cpu: real data on CPU; gpu: ViT-B/32 at 224 px.",
    )
    p.add_argument(
        "--data-root",
        default="../shared/data",
        help="Folder with her2st/ and stutility_mob/ (default: %(default)s).",
    )
    p.add_argument(
        "--out",
        default="benchmarks/results",
        help="Folder for the markdown table and CSV (default: %(default)s).",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds; every row is trained once per seed (default: the preset's, cpu: 0,1,2).",
    )
    p.add_argument(
        "--datasets",
        default=None,
        help="Comma-separated datasets to run (her2st, mob; default: both). A subset writes "
        "expression_prediction_<preset>_<datasets>.*, so two runs can split a long preset.",
    )
    p.add_argument(
        "--rows",
        default="all",
        choices=["all", "core", "ablations", "auto"],
        help="Which fits to run: all; core (CoMTIP, + context, + stain jitter, + smoothed targets, the "
        "baselines and clustering: what the quality targets are read from); ablations (−MFM, −PAAT, −value "
        "query, the peer families, held-out genes, beside the same baselines); auto (preset='auto' beside "
        "the baselines, on the folds whose training patient has two sections or more). A subset writes "
        "expression_prediction_<preset>_<rows>.*.",
    )
    p.add_argument(
        "--per-fit",
        action="store_true",
        help="One worker task per fit (each CoMTIP variant, the baselines) instead of per fold: more tasks "
        "for --jobs on a many-core GPU machine, at the cost of each task loading its fold and cutting tiles.",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Worker processes, each training one fold at one seed at a time on the preset's torch threads "
        "(default: %(default)s; 2 on a 2-core machine halves the wall time).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Log debugging details.")
    p.add_argument("-q", "--quiet", action="store_true", help="Log only warnings and errors.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default: this process's arguments); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Third-party libraries stay at WARNING; the benchmark's and the package's own loggers follow -v/-q.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("benchmarks", "comtip_sc"):
        logging.getLogger(name).setLevel(level)
    from .run import run_benchmark

    try:
        return run_benchmark(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"python -m benchmarks: error: {err}", file=sys.stderr)
        return EXIT_DATA


if __name__ == "__main__":
    sys.exit(main())
