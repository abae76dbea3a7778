"""Profile one CoMTIP fit of a benchmark preset on one fold: where does a training step's time go?

Runs ``cs.tl.fit`` exactly as ``comtip benchmark`` does (same preset, fold, tile cache, flags) for a few
epochs under :mod:`cProfile` and prints the functions with the most own time, plus seconds per optimiser
step. On a GPU the CUDA kernels are asynchronous: time shows up where the host waits for them
(``.item()``, ``.cpu()``, synchronising copies), so read the table as "where the host spends its time".

    python benchmarks/profile_fit.py --preset gpu --fold 'her2st:A→C' --epochs 2 --data-root ../shared/data

Prints ``PROFILE {...}`` with the fit's wall time and steps, then the cProfile table.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import tempfile
import time
from pathlib import Path

from _one_fold import load_fold, quiet_one_thread

from comtip_sc._benchmark import cache_fold_tiles, fit_comtip, get_preset
from comtip_sc.model import FLAG_PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--fold", default="her2st:A→C")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    quiet_one_thread()
    preset = dataclasses.replace(get_preset(args.preset), epochs=args.epochs)
    fold = load_fold(preset, args.fold, args.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache_fold_tiles(fold, preset, work, test=False)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        model = fit_comtip(fold, preset, FLAG_PRESETS["comtip"], fold.panel, work, work / "L")
        prof.disable()
        wall = time.perf_counter() - t
    n_train = fold.train.tables["table"].n_obs
    steps = args.epochs * -(-n_train // preset.batch_size)
    print(
        "PROFILE",
        json.dumps(
            {
                "preset": preset.name,
                "fold": args.fold,
                "fit_s": round(wall, 1),
                "steps": steps,
                "s_per_step_incl_bank": round(wall / steps, 3),
                "history_keys": sorted(model.history),
            },
            ensure_ascii=False,
        ),
    )
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
