"""Zero-shot read-out temperature on one fold of the ``cpu`` benchmark preset: training spots vs held-out patient.

``cs.tl.fit`` picks the softmax temperature of zero-shot prediction from ``READOUT_FACTORS`` × the learned
one, by PCC-ALL on the training spots. This script trains the full CoMTIP row once per seed and prints, for
every factor, that training-spot score next to the PCC-ALL the same read-out reaches on the held-out
patient, so one can see whether the choice made on training data is the one the test data would have made.
``--candidates 24,8`` also reads on other candidate grids (training queries 8 values per gene, and prediction
reads on that same grid).

    python benchmarks/zero_shot_readout.py 'her2st:A→C' 0        # ~4 min per seed on one CPU core
    python benchmarks/zero_shot_readout.py 'mob:2→1' 0,1 --candidates 24,8

Prints one ``READOUT fold seed {...}`` line per seed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from _one_fold import fold_parser, load_fold, quiet_one_thread

import comtip_sc as cs
from comtip_sc._benchmark import _score, cache_fold_tiles, fit_comtip, get_preset
from comtip_sc.model import FLAG_PRESETS
from comtip_sc.tl._datamodule import normalized_values
from comtip_sc.tl._evaluate import pearson_per_gene
from comtip_sc.tl._zero_shot import READOUT_FACTORS, _pcc_all, zero_shot_values


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument(
        "--candidates",
        default=str(get_preset("cpu").config.value_query_candidates),
        help="comma-separated grid sizes M to read on (default: the preset's value_query_candidates, "
        "what prediction uses)",
    )
    args = parser.parse_args()
    quiet_one_thread()
    preset = get_preset("cpu")
    fold = load_fold(preset, args.fold, args.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        cache_fold_tiles(fold, preset, Path(tmp), test=False)
        test_y = normalized_values(fold.test.tables["table"], fold.panel)
        for seed in (int(s) for s in args.seeds.split(",")):
            ps = dataclasses.replace(preset, seed=seed)
            model = fit_comtip(fold, ps, FLAG_PRESETS["comtip"], fold.panel, Path(tmp), Path(tmp))
            cal = model.history["zero_shot_calibration"]
            cs.tl.comtip_embed(fold.test, model, key_added="X_readout")
            img = fold.test.tables["table"].obsm["X_readout"]
            bank = model.reference
            temps = [f * cal["learned_temperature"] for f in READOUT_FACTORS]
            cs.tl.comtip_predict(
                fold.test, model, method="retrieval", use_rep="X_readout", layer_added="bench_pred"
            )
            row = {
                "learned_T": round(cal["learned_temperature"], 4),
                "factors": list(READOUT_FACTORS),
                "chosen_factor": cal["chosen_factor"],
                "test_retrieval": round(_score(fold.test, fold.panel, None)["PCC-ALL"], 4),
            }
            for m in (int(c) for c in args.candidates.split(",")):
                # Training spots = the whole bank (fit calibrates on up to 2,048 of them).
                train = [
                    round(_pcc_all(bank.expression, p), 4)
                    for p in zero_shot_values(bank.image_embeddings, model, bank.genes, temps, n_candidates=m)
                ]
                test = [
                    round(float(pearson_per_gene(test_y, p).mean()), 4)
                    for p in zero_shot_values(img, model, fold.panel, temps, n_candidates=m)
                ]
                row[f"M={m}"] = {
                    "train_pcc_all": train,
                    "test_pcc_all": test,
                    "train_best_factor": READOUT_FACTORS[train.index(max(train))],
                    "test_best_factor": READOUT_FACTORS[test.index(max(test))],
                }
            print("READOUT", args.fold, seed, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
