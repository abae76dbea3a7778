"""Paired differences between two rows of a benchmark CSV: same dataset, fold and seed.

    python benchmarks/paired.py benchmarks/results/expression_prediction_cpu_core.csv
    python benchmarks/paired.py RESULTS.csv --a "CoMTIP · retrieval" --b "image→expr regression ≈ST-Net"

Prints, per dataset and fold, the mean PCC-ALL difference ``a − b`` and in how many seeds ``a`` is ahead.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", help="a benchmark CSV (with a seed column)")
    parser.add_argument("--a", default="CoMTIP · head (ridge on its image emb.)")
    parser.add_argument("--b", default="image→expr regression ≈ST-Net")
    parser.add_argument("--metric", default="PCC-ALL")
    args = parser.parse_args()
    value = {}
    for row in csv.DictReader(open(args.csv, encoding="utf-8")):
        value[row["dataset"], row["fold"], row["seed"], row["method"]] = float(row[args.metric])
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (dataset, fold, seed, method), v in value.items():
        if method == args.a and (dataset, fold, seed, args.b) in value:
            diffs[dataset, fold].append(v - value[dataset, fold, seed, args.b])
    if not diffs:
        raise SystemExit(f"No (fold, seed) has both {args.a!r} and {args.b!r}.")
    print(f"{args.metric}: {args.a}  −  {args.b}")
    for dataset in sorted({d for d, _ in diffs}):
        every = [x for (d, _), xs in diffs.items() if d == dataset for x in xs]
        print(f"{dataset:8s} all   {np.mean(every):+.4f}  ahead in {sum(x > 0 for x in every)}/{len(every)}")
        for (d, fold), xs in sorted(diffs.items()):
            if d == dataset:
                print(f"{'':8s} {fold:5s} {np.mean(xs):+.4f}  ahead in {sum(x > 0 for x in xs)}/{len(xs)}")


if __name__ == "__main__":
    main()
