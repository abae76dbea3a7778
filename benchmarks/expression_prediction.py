"""Expression-prediction benchmark: CoMTIP beside its peer families, leave-one-patient-out.

The same code as ``comtip benchmark`` (see benchmarks/README.md):

    python benchmarks/expression_prediction.py --preset cpu --data-root ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import logging
import sys

from comtip_sc._benchmark import run_benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        default="smoke",
        choices=["smoke", "cpu", "gpu"],
        help="smoke: toy tissue, seconds; cpu: her2st + MOB on CPU (< 1 h on 2 cores); gpu: ViT-B/32 at 224 px.",
    )
    p.add_argument("--data-root", default="../shared/data", help="Folder with her2st/ and stutility_mob/.")
    p.add_argument("--out", default="benchmarks/results", help="Folder for the .md/.csv/.json results.")
    p.add_argument("-v", "--verbose", action="store_true", help="Log debugging details (Lightning included).")
    p.add_argument("-q", "--quiet", action="store_true", help="Log only warnings and errors.")
    args = p.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("comtip_sc").setLevel(level)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
