"""Data of the benchmark: patient splits of SpatialData objects and the protocol's gene panel."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from comtip_sc.constants import SAMPLE_KEY, TABLE_KEY
from comtip_sc.pp import normalized_values, subset_sections

if TYPE_CHECKING:
    from .presets import BenchPreset

log = logging.getLogger("benchmarks")


@dataclass
class Fold:
    """One train→test split of one dataset, with its panel."""

    dataset: str
    name: str
    train: SpatialData
    test: SpatialData
    panel: list[str]
    tile_um: float
    #: ``colour_norm`` (a ``TrainSettings`` data setting) of every row's tiles on this dataset.
    colour_norm: str | None = None
    #: Tissue-region label of every test spot (NaN where none), for the clustering table; ``None``: the
    #: test patient has no labels.
    regions: pd.Series | None = None


def choose_panel(train: AnnData, test: AnnData, n_genes: int) -> list[str]:
    """The protocol's panel: top ``n_genes`` by mean normalised expression over the training spots.

    Candidates are the genes with a non-zero count in every section of both the training and test tables.
    """
    genes = train.var_names.intersection(test.var_names, sort=False)
    present = np.ones(len(genes), bool)
    for t in (train, test):
        counts = t[:, genes].X
        for s in t.obs[SAMPLE_KEY].astype(str).unique():
            rows = (t.obs[SAMPLE_KEY].astype(str) == s).to_numpy()
            present &= np.asarray(counts[rows].sum(axis=0)).ravel() > 0
    candidates = genes[present]
    means = normalized_values(train, list(candidates)).mean(axis=0)
    return candidates[np.argsort(-means, kind="stable")[:n_genes]].tolist()


def _patient_folds(
    name: str, sdata: SpatialData, column: str, preset: BenchPreset, labels_path: Path | None = None
) -> Iterator[Fold]:
    import comtip_sc as cs

    from .clustering import HER2ST_SECTION, her2st_region_labels

    sdata = cs.pp.filter_spots(sdata, min_counts=preset.min_counts, copy=True)
    labels = sdata.tables[TABLE_KEY].obs[column].astype(str).to_numpy()
    groups = sorted(set(labels))
    if len(groups) != 2:
        raise ValueError(f"{name}: expected two {column} groups, found {groups}.")
    for a, b in (groups, groups[::-1]):
        train, test = subset_sections(sdata, labels == a), subset_sections(sdata, labels == b)
        panel = choose_panel(train.tables[TABLE_KEY], test.tables[TABLE_KEY], preset.n_genes)
        colour = preset.colour_norm.get(name)
        table = test.tables[TABLE_KEY]
        regions = None
        if labels_path is not None and HER2ST_SECTION in set(table.obs[SAMPLE_KEY].astype(str)):
            regions = her2st_region_labels(labels_path, table)
        yield Fold(name, f"{a}→{b}", train, test, panel, preset.tile_um[name], colour, regions)


def load_folds(preset: BenchPreset, data_root: str | os.PathLike, only: str | None = None) -> Iterator[Fold]:
    """The folds of a preset: two toy sections for ``smoke``, her2st and MOB patients otherwise.

    ``only`` (``"her2st"`` or ``"mob"``) reads just that dataset.
    """
    import comtip_sc as cs

    from .clustering import HER2ST_LABELS

    if preset.name == "smoke":
        a = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=60, seed=0, sample_id="toyA")
        b = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=60, seed=1, sample_id="toyB")
        for (tr, trn), (te, ten) in (((a, "toyA"), (b, "toyB")), ((b, "toyB"), (a, "toyA"))):
            tr = cs.pp.filter_spots(tr, min_counts=preset.min_counts, copy=True)
            te = cs.pp.filter_spots(te, min_counts=preset.min_counts, copy=True)
            panel = choose_panel(tr.tables[TABLE_KEY], te.tables[TABLE_KEY], preset.n_genes)
            colour = preset.colour_norm.get("toy")
            # The toy tissue's ground-truth type under each spot stands in for region labels.
            regions = te.tables[TABLE_KEY].obs["tissue_type"].astype(str)
            yield Fold("toy", f"{trn}→{ten}", tr, te, panel, preset.tile_um["toy"], colour, regions)
        return
    root = Path(data_root)
    for sub in ("her2st", "stutility_mob"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"{root / sub} not found; pass --data-root with her2st/ and stutility_mob/."
            )
    if only in (None, "her2st"):
        log.info("Loading her2st from %s ...", root / "her2st")
        labels = root / "her2st" / HER2ST_LABELS
        yield from _patient_folds(
            "her2st",
            cs.datasets.her2st(root / "her2st"),
            "patient",
            preset,
            labels if labels.is_file() else None,
        )
    if only in (None, "mob"):
        log.info("Loading MOB from %s ...", root / "stutility_mob")
        yield from _patient_folds("mob", cs.datasets.mob(root / "stutility_mob"), "individual", preset)
