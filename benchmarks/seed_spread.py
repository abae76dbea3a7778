"""Seed spread of the ``cpu`` benchmark preset on one fold: full CoMTIP (retrieval / zero-shot / head), the
ST-Net-like regressor and the random-init ViT + PCA + ridge probe, each retrained per seed.

    python benchmarks/seed_spread.py 'her2st:A→C' 0,1,2    # ~6 min per seed on one CPU core
    python benchmarks/seed_spread.py 'mob:1→2' 0,1,2
    python benchmarks/seed_spread.py 'mob:1→2' 0,1 --set init_temperature=0.2 --no-baselines

Prints one ``SEED fold seed [settings] {...}`` line of PCC-ALL per seed.
``--set field=value`` (repeatable; value parsed as JSON, else kept as a string) changes the CoMTIP config of
the preset for this run only, to measure one setting over seeds; ``--no-baselines`` skips the ST-Net-like and
ridge rows; ``--epochs N`` and ``--tile-um UM`` override the preset's training length and tile size (every
row); ``--train-sections N`` trains every row on the first N training sections only (same panel);
``--train-genes N`` trains CoMTIP and the regressor on the top N genes by the panel's own rule (a superset of
the 250-gene panel), while every row is still scored, and both ridges fitted, on the panel.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from _one_fold import fold_parser, load_fold, quiet_one_thread

import comtip_sc as cs
from comtip_sc._benchmark import _score, cache_fold_tiles, fit_comtip, fit_stnet, get_preset, train_folds
from comtip_sc._benchmark_baselines import frozen_features, ridge_on_features
from comtip_sc._benchmark_data import choose_panel
from comtip_sc._constants import SAMPLE_KEY
from comtip_sc.model import FLAG_PRESETS
from comtip_sc.pp import subset_sections
from comtip_sc.tl._datamodule import normalized_values


def _override(text: str) -> tuple[str, object]:
    field, _, value = text.partition("=")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--tile-um", type=float, default=None, help="override the fold's tile size (µm)")
    parser.add_argument(
        "--train-sections",
        type=int,
        default=None,
        help="train on the first N training sections only (sorted by name); the panel stays the fold's",
    )
    parser.add_argument(
        "--train-genes",
        type=int,
        default=None,
        help="train CoMTIP and the regressor on the top N genes (panel rule); score on the panel",
    )
    args = parser.parse_args()
    quiet_one_thread()
    p = get_preset("cpu")
    p = dataclasses.replace(p, config=p.config.replace(**dict(_override(s) for s in args.set)))
    if args.epochs is not None:
        p = dataclasses.replace(p, epochs=args.epochs)
    if args.tile_um is not None:
        p = dataclasses.replace(p, tile_um=dict.fromkeys(p.tile_um, args.tile_um))
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [*args.set, f"epochs={p.epochs}", f"tile_um={p.tile_um}"]
    fold = load_fold(p, args.fold, args.data_root)
    if args.train_sections is not None:
        samples = fold.train.tables["table"].obs[SAMPLE_KEY].astype(str).to_numpy()
        names = sorted(set(samples))[: args.train_sections]
        fold = dataclasses.replace(fold, train=subset_sections(fold.train, np.isin(samples, names)))
        settings.append(f"train_sections={names} ({int(np.isin(samples, names).sum())} spots)")
    genes = fold.panel
    if args.train_genes is not None:
        genes = choose_panel(fold.train.tables["table"], fold.test.tables["table"], args.train_genes)
        if genes[: len(fold.panel)] != fold.panel:
            raise SystemExit(
                f"--train-genes {args.train_genes}: the top {args.train_genes} genes of these training sections "
                f"do not contain the fold's {len(fold.panel)}-gene panel; use at least {len(fold.panel)} and "
                "all training sections"
            )
        settings.append(f"train_genes={len(genes)}")
    with tempfile.TemporaryDirectory() as tmp:
        train, test = cache_fold_tiles(fold, p, Path(tmp))
        # Library size is taken over all genes, so the panel's values are the first columns of the wider set's.
        y_train = normalized_values(fold.train.tables["table"], genes)
        y = y_train[:, : len(fold.panel)]
        folds = train_folds(fold)
        for seed in seeds:
            ps = dataclasses.replace(p, seed=seed)
            row = {}
            model = fit_comtip(fold, ps, FLAG_PRESETS["comtip"], genes, Path(tmp), Path(tmp))
            row["T"] = round(1.0 / float(model.network.logit_scale()), 4)
            cs.tl.comtip_embed(fold.test, model, key_added="X_seed")
            for method in ("retrieval", "zero_shot", "head"):
                cs.tl.comtip_predict(
                    fold.test,
                    model,
                    method=method,
                    genes=fold.panel,
                    use_rep="X_seed",
                    layer_added="bench_pred",
                )
                row[method] = round(_score(fold.test, fold.panel, None)["PCC-ALL"], 3)
            if args.no_baselines:
                print("SEED", args.fold, seed, settings, row, flush=True)
                continue
            pred = fit_stnet(ps, train, y_train, test, Path(tmp))[:, : len(fold.panel)]
            row["st_net_like"] = round(_score(fold.test, fold.panel, pred)["PCC-ALL"], 3)
            train_x, test_x = frozen_features(p.config, [train, test], seed=seed)
            pred = ridge_on_features(train_x, y, test_x, folds)
            row["random_vit_ridge"] = round(_score(fold.test, fold.panel, pred)["PCC-ALL"], 3)
            print("SEED", args.fold, seed, settings, row, flush=True)


if __name__ == "__main__":
    main()
