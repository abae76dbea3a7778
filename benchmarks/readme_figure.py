"""Make the README picture: observed vs predicted ERBB2 / KRT19 on her2st A1, trained on patient C only.

Run from the repository root: ``python benchmarks/readme_figure.py --data-root path/to/data``
(the folder holding ``her2st/``).
Writes ``docs/_static/her2st_A1_observed_vs_predicted.png`` and prints the PCC of the shown genes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import comtip_sc as cs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--method", default="head", choices=["retrieval", "zero_shot", "head"])
    parser.add_argument("--out", default="docs/_static/her2st_A1_observed_vs_predicted.png")
    args = parser.parse_args()
    sdata = cs.datasets.her2st(Path(args.data_root) / "her2st")
    sdata = cs.pp.filter_spots(sdata, min_counts=100, copy=True)
    patient = sdata.tables["table"].obs["patient"].astype(str).to_numpy()
    train, test = cs.pp.subset_sections(sdata, patient == "C"), cs.pp.subset_sections(sdata, patient == "A")
    # fit's defaults: the cpu preset (frozen ImageNet EfficientNet-Lite0 + token transformer) and its recipe.
    model = cs.tl.fit(
        train,
        tile_um=150,
        seed=0,
        val_sections=None,
        enable_progress_bar=False,
        default_root_dir="/tmp/comtip_readme_fig",
    )
    cs.tl.comtip_predict(test, model, method=args.method)
    scores = cs.tl.evaluate(test, key_added="comtip_pcc")
    table = test.tables["table"]
    genes = ["ERBB2", "KRT19"]
    for g in genes:
        print(f"{g}: PCC {table.var.loc[g, 'comtip_pcc']:.3f}")
    print(scores.loc["all"].to_dict())
    cs.pl.predicted_vs_observed(test, genes, sample="A1", save=args.out, show=False)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
