"""Shared set-up of the one-fold benchmark scripts (``seed_spread.py``, ``zero_shot_readout.py``)."""

from __future__ import annotations

import argparse
import logging
import warnings

import torch

from comtip_sc._benchmark import BenchPreset
from comtip_sc._benchmark_data import Fold, load_folds


def fold_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the arguments every one-fold script takes: fold, seeds, ``--data-root``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fold", help="dataset:fold, e.g. 'her2st:A→C' or 'mob:1→2'")
    parser.add_argument("seeds", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--data-root", default="../shared/data")
    return parser


def quiet_one_thread() -> None:
    """One torch thread (two scripts can share a 2-core machine) and no per-trainer Lightning chatter."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "comtip_sc"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_fold(preset: BenchPreset, name: str, data_root: str) -> Fold:
    """The fold called ``name`` (``'dataset:fold'``) of ``preset``; only its dataset is read."""
    dataset = name.split(":")[0]
    for fold in load_folds(preset, data_root, only=dataset):
        if f"{fold.dataset}:{fold.name}" == name:
            return fold
    raise SystemExit(f"No fold {name!r} in the {preset.name} preset (e.g. 'her2st:A→C', 'mob:1→2').")
