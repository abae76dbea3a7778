"""The ridge head's penalty on one fold of the ``cpu`` benchmark preset: which alpha each rule picks, and
what every alpha scores on the held-out patient.

``cs.tl.comtip_predict(method="head")`` fits ridge on the training spots' image embeddings with alpha chosen
over ``RIDGE_ALPHAS`` (0.01 to 1.5e6) by spatial-block CV (``cv_blocks=5``). This script trains the full CoMTIP row once
per seed, then prints the held-out PCC-ALL of ridge at every alpha of ``logspace(-3, 3, 13)`` and the alpha
that each training-only rule picks:

- ``blocks``: the package's rule (5 k-means blocks per section, fold f leaves out block f of every section,
  R² averaged over genes); ``blocks3``: the same with 3 blocks;
- ``loo``: leave-one-spot-out CV on the package's grid (``cv_blocks=None``, the rule before session 6);
- ``loo_wide``: LOO on the wider grid;
- ``one_se``: the largest alpha whose LOO error is within one standard error of the best (errors per spot,
  averaged over genes);
- ``loso``: leave-one-section-out CV by mean per-gene Pearson (only when the fold trains on ≥ 2 sections).

    python benchmarks/head_penalty.py 'mob:2→1' 0,1      # ~1.5 min per seed on one CPU core

``--save DIR`` also writes each seed's training embeddings, values, sections, spot centres and the test
embeddings and values to ``DIR/<fold>_<seed>.npz``, to try other rules without retraining.

Prints one ``PENALTY fold seed {...}`` line per seed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from _one_fold import fold_parser, load_fold, quiet_one_thread
from sklearn.linear_model import Ridge, RidgeCV

import comtip_sc as cs
from comtip_sc._benchmark import cache_fold_tiles, fit_comtip, get_preset
from comtip_sc.model import FLAG_PRESETS
from comtip_sc.tl._datamodule import normalized_values
from comtip_sc.tl._evaluate import pearson_per_gene
from comtip_sc.tl._ridge import ridge_cv, spatial_folds

GRID = np.logspace(-3, 3, 13)


def picks(x: np.ndarray, y: np.ndarray, sections: np.ndarray, centres: np.ndarray) -> dict[str, float]:
    """The alpha each training-only rule chooses (see the module docstring)."""
    out = {
        "blocks": float(ridge_cv(x, y, spatial_folds(centres, sections)).alpha_),
        "blocks3": float(ridge_cv(x, y, spatial_folds(centres, sections, 3)).alpha_),
        "loo": float(ridge_cv(x, y).alpha_),
    }
    loo = RidgeCV(alphas=GRID, store_cv_results=True).fit(x, y)
    err = loo.cv_results_.mean(1)  # (spots, alphas): LOO squared error averaged over genes
    mean, se = err.mean(0), err.std(0, ddof=1) / np.sqrt(len(err))
    best = int(np.argmin(mean))
    out["loo_wide"] = float(GRID[best])
    out["one_se"] = float(GRID[np.flatnonzero(mean <= mean[best] + se[best]).max()])
    if len(np.unique(sections)) > 1:
        score = [
            np.mean(
                [
                    pearson_per_gene(y[s], Ridge(alpha=a).fit(x[~s], y[~s]).predict(x[s])).mean()
                    for s in (sections == name for name in np.unique(sections))
                ]
            )
            for a in GRID
        ]
        out["loso"] = float(GRID[int(np.argmax(score))])
    return out


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument("--save", help="folder to write each seed's embeddings and values to (.npz)")
    args = parser.parse_args()
    quiet_one_thread()
    preset = get_preset("cpu")
    fold = load_fold(preset, args.fold, args.data_root)
    train = fold.train.tables["table"]
    test_y = normalized_values(fold.test.tables["table"], fold.panel)
    with tempfile.TemporaryDirectory() as tmp:
        cache_fold_tiles(fold, preset, Path(tmp), test=False)
        for seed in (int(s) for s in args.seeds.split(",")):
            ps = dataclasses.replace(preset, seed=seed)
            model = fit_comtip(fold, ps, FLAG_PRESETS["comtip"], fold.panel, Path(tmp), Path(tmp))
            bank = model.reference
            if bank.obs_names != train.obs_names.tolist():
                raise RuntimeError("The bank's spots are not the training table's, in order.")
            cs.tl.comtip_embed(fold.test, model, key_added="X_penalty")
            img = fold.test.tables["table"].obsm["X_penalty"]
            x, y = bank.image_embeddings, bank.expression
            test = {
                f"{a:g}": round(
                    float(pearson_per_gene(test_y, Ridge(alpha=a).fit(x, y).predict(img)).mean()), 4
                )
                for a in GRID
            }
            chosen = picks(x, y, np.asarray(bank.sections), bank.centres)
            row = {"picks": {k: f"{v:g}" for k, v in chosen.items()}, "test_pcc_by_alpha": test}
            row["test_pcc_of_pick"] = {
                k: round(float(pearson_per_gene(test_y, Ridge(alpha=v).fit(x, y).predict(img)).mean()), 4)
                for k, v in chosen.items()
            }
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                np.savez(
                    Path(args.save) / f"{args.fold.replace(':', '_')}_{seed}.npz",
                    x=x,
                    y=y,
                    img=img,
                    test_y=test_y,
                    sections=np.asarray(bank.sections),
                    centres=bank.centres,
                )
            print("PENALTY", args.fold, seed, json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
