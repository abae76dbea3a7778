"""Section registration: what ``cs.tl.fit`` trains on (panels, values, per-section datasets, token caches)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import GROUP_KEYS, PANEL_KEY, SAMPLE_KEY
from .._sections import resolve_sections, spot_layout
from .._tables import check_counts, check_genes, get_table, normalized_values
from ..pp._context import with_context
from ..pp._feature_cache import cache_trunk_tokens
from ..pp._genes import select_genes
from ..pp._smooth import smooth_over_neighbours
from ..pp._tile_cache import cache_tiles
from ..pp._tiles import SpotTiles
from ._datamodule import SpotSentences, subset

# Registration is part of fit: its messages go to fit's logger.
log = logging.getLogger("comtip_sc.train")


@dataclass
class Registered:
    """One training table after registration: its panel, values and per-section datasets."""

    name: str
    panel: list[str]
    values: np.ndarray
    sections: list[tuple[str, SpotSentences]]
    obs_names: np.ndarray
    centres: np.ndarray
    groups: list[str | None]


def register(
    sdata: SpatialData,
    *,
    idx: int,
    table_key: str,
    layer: str | None,
    genes: Sequence[str] | None,
    n_top_genes: int,
    tile_um: float,
    tile_px: int,
    colour_norm: str | None,
    context_scale: float | None,
    tile_cache: str | None,
    vocab: dict[str, int],
    spot_diameter_um: float | None,
) -> Registered:
    table = get_table(sdata, table_key)
    if table.n_obs < 2 or table.n_vars == 0:
        raise ValueError(
            f"Table {table_key!r} of dataset {idx} has {table.n_obs} spot(s) and {table.n_vars} gene(s); "
            "training contrasts spots with each other and needs at least 2 spots and 1 gene."
        )
    check_genes(table, what=f"Table {table_key!r} of dataset {idx}")
    if layer is None:
        check_counts(table, what=f"Table {table_key!r} of dataset {idx}", integer=True)
    else:
        check_counts(table, layer=layer, what=f"Table {table_key!r} of dataset {idx}")
    if genes is not None:
        panel = [g for g in genes if g in table.var_names]
        if not panel:
            raise ValueError(
                f"None of the requested genes ({list(genes)[:5]}...) is in table {table_key!r} of dataset "
                f"{idx} (its genes look like {table.var_names[:3].tolist()})."
            )
        if len(panel) < len(genes):
            lacking = [g for g in genes if g not in table.var_names]
            log.warning(
                "Table %r of dataset %d lacks %d of the requested genes (%s); training on the other %d.",
                table_key,
                idx,
                len(lacking),
                lacking[:10],
                len(panel),
            )
    elif PANEL_KEY in table.var:
        panel = table.var_names[table.var[PANEL_KEY].to_numpy(bool)].tolist()
    else:
        # Select on a light copy (counts only) so that the user's table gains nothing.
        light = AnnData(
            table.X, obs=table.obs[[SAMPLE_KEY]] if SAMPLE_KEY in table.obs else None, var=table.var[[]]
        )
        groupby = SAMPLE_KEY if SAMPLE_KEY in light.obs else None
        select_genes(light, n_top_genes=n_top_genes, method="mean", groupby=groupby)
        panel = light.uns["comtip"]["panel"]
    for g in panel:
        vocab.setdefault(g, len(vocab))
    values = normalized_values(table, panel, layer=layer)
    tile_kw = {
        "tile_px": tile_px,
        "colour_norm": colour_norm,
        "table_key": table_key,
        "spot_diameter_um": spot_diameter_um,
    }

    spot_um = tile_um

    def make_tiles(tile_um: float, **kw: Any):
        if tile_cache is None:
            return SpotTiles(sdata, tile_um=tile_um, **kw)
        # The spot tiles keep their name (caches of earlier runs stay valid); a context tile adds its size.
        name = f"dataset{idx}" if tile_um == spot_um else f"dataset{idx}_{tile_um:g}um"
        return cache_tiles(sdata, f"{tile_cache}/{name}.zarr", tile_um=tile_um, **kw)

    tiles = with_context(make_tiles, tile_um, context_scale, **tile_kw)
    full = SpotSentences(tiles, values, np.array([vocab[g] for g in panel]), group=idx)
    resolved = resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
    sections = [(sec.region, subset(full, sec.obs_index)) for sec in resolved]
    _, centres = spot_layout(resolved, table.n_obs)
    group_key = next((k for k in GROUP_KEYS if k in table.obs), None)
    groups = [
        None if group_key is None else str(table.obs[group_key].iloc[sec.obs_index[0]]) for sec in resolved
    ]
    return Registered(f"dataset{idx}", panel, values, sections, table.obs_names.to_numpy(), centres, groups)


def wants_token_cache(feature_cache: bool | None, vision: torch.nn.Module) -> bool:
    """Whether training reads cached trunk tokens: asked for, or by default whenever the trunk is frozen.

    Stain and colour jitter do not stop it: the cache then stores jittered views
    (:func:`~comtip_sc.pp.cache_trunk_tokens`).
    """
    if feature_cache is None:
        return bool(vision.trunk_frozen and vision.tokens is not None)
    if feature_cache and not (vision.trunk_frozen and vision.tokens is not None):
        raise ValueError(
            "feature_cache=True needs a frozen trunk with a token transformer (freeze_backbone='all', "
            "token_depth >= 1): a trunk that trains changes its tokens every step."
        )
    return bool(feature_cache)


def attach_token_caches(
    registered: list[Registered],
    vision: torch.nn.Module,
    folder: str,
    mean,
    std,
    device: torch.device,
    jitter: tuple[float, float] = (0.0, 0.0),
    memory_budget: int = 0,
    device_budget: int = 0,
) -> None:
    """Point every registered table's dataset at cached trunk tokens (built in ``folder`` when missing).

    ``jitter`` (stain, colour) > 0 caches jittered views. Their draws use one fixed seed (0), not the fit's,
    so fits with other seeds share the cache; the fit's seed still orders batches, views and masks.
    Caches that together fit in ``memory_budget`` bytes are read whole into memory (random reads through
    the zarr chunk reader cost milliseconds per spot, more than a training step on a GPU); larger ones
    are read chunk by chunk. Caches that together fit in ``device_budget`` bytes are held on ``device``
    instead, so a batch is gathered there without a copy from the host.
    """
    caches = []
    for i, r in enumerate(registered):
        full = r.sections[0][1].dataset  # every section is a view of its table's SpotSentences
        # Caches with a context tile or with jitter go to their own folder, so fits with and without share one.
        ctx = getattr(full.tiles, "context_um", None)
        name = f"dataset{i}" + ("" if ctx is None else f"_{ctx:g}um")
        name += f"_sj{jitter[0]:g}_cj{jitter[1]:g}" if any(jitter) else ""
        full.tiles = cache_trunk_tokens(
            full.tiles,
            vision,
            os.path.join(folder, f"{name}_tokens.zarr"),
            mean=mean,
            std=std,
            device=device,
            stain_jitter=jitter[0],
            colour_jitter=jitter[1],
        )
        caches.append(full.tiles)
    total = sum(c.nbytes for c in caches)
    if caches and total <= device_budget:
        for c in caches:
            c.hold_on(device)
    elif caches and total <= memory_budget:
        for c in caches:
            c.in_memory = True


def gene_stats(registered: list[Registered], vocab: dict[str, int]) -> dict[str, dict[str, float]]:
    """Mean and maximum normalised value of every vocabulary gene over all spots given to fit (NaN if none)."""
    total = np.zeros(len(vocab))
    count = np.zeros(len(vocab))
    vmax = np.full(len(vocab), -np.inf)
    for r in registered:
        cols = [vocab[g] for g in r.panel]
        total[cols] += r.values.sum(0)
        count[cols] += len(r.values)
        vmax[cols] = np.maximum(vmax[cols], r.values.max(0, initial=-np.inf))
    with np.errstate(all="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    vmax = np.where(count > 0, vmax, np.nan)
    return {
        "mean": dict(zip(vocab, mean.tolist(), strict=True)),
        "max": dict(zip(vocab, vmax.tolist(), strict=True)),
    }


@dataclass
class TrainingData:
    """Every registered table of one ``fit``, its sections in order, and which of them are held out."""

    registered: list[Registered]
    vocab: dict[str, int]
    names: list[str]
    sections: list[SpotSentences]
    held_out: list[int]
    groups: list[str | None]
    stats: dict[str, dict[str, float]]

    @property
    def n_train(self) -> int:
        """Spots of the sections that train."""
        return sum(len(ds) for i, ds in enumerate(self.sections) if i not in self.held_out)


def held_out_sections(
    names: list[str], groups: list[str | None], sizes: list[int], val_sections: Sequence[str] | str | None
) -> list[int]:
    """Indices of the sections held out for validation.

    ``"auto"``: when the tables name a patient or individual (``obs`` column among
    ``comtip_sc.constants.GROUP_KEYS``) and there are at least two, every section of the group with
    the fewest spots (so that validation measures a new patient and most spots still train); else the
    last section when there are several, none when there is one. ``None``: none. Otherwise the named
    sections.
    """
    if val_sections is None:
        return []
    if val_sections == "auto":
        known = [g for g in groups if g is not None]
        if len(set(known)) >= 2 and len(known) == len(groups):
            spots: dict[str, int] = {}
            for g, n in zip(groups, sizes, strict=True):
                spots[g] = spots.get(g, 0) + n
            smallest = min(spots, key=lambda g: (spots[g], -max(i for i, h in enumerate(groups) if h == g)))
            return [i for i, g in enumerate(groups) if g == smallest]
        return [len(names) - 1] if len(names) > 1 else []
    wanted = [val_sections] if isinstance(val_sections, str) else list(val_sections)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"val_sections {unknown} are not sections of the data; sections: {names}.")
    return [names.index(w) for w in wanted]


def smooth_training_targets(registered: list[Registered], held_out: Sequence[int], k: int) -> None:
    """Train on each training spot's expression averaged over its ``k`` nearest spots of the same section.

    Only the training sentences change: every table's dataset gets a smoothed copy of its values, with the
    held-out sections' rows left raw (their validation loss stays on raw expression), while
    ``Registered.values`` keeps the raw values that the reference bank and the gene statistics read.
    """
    i = 0
    for r in registered:
        full = r.sections[0][1].dataset  # every section is a view of its table's SpotSentences
        smoothed = r.values.copy()
        for _, ds in r.sections:
            if i not in held_out:
                rows = np.asarray(ds.indices)
                # smooth_over_neighbours counts neighbours without the spot itself.
                smoothed[rows] = smooth_over_neighbours(
                    r.values[rows], r.centres[rows], np.zeros(len(rows), int), k - 1
                )
            i += 1
        full.values = smoothed


def register_all(
    datasets: Sequence[SpatialData],
    val_sections: Sequence[str] | str | None,
    smooth_targets: int | None = None,
    **kwargs: Any,
) -> TrainingData:
    """Register every dataset (``register``, with ``kwargs``) and choose the held-out sections.

    ``smooth_targets`` (``TrainSettings.smooth_targets``): train on expression averaged over that many
    nearest spots of each section (``smooth_training_targets``); ``None``: raw expression.
    """
    vocab: dict[str, int] = {}
    registered = [register(d, idx=i, vocab=vocab, **kwargs) for i, d in enumerate(datasets)]
    several = len(registered) > 1
    names = [f"{r.name}:{name}" if several else name for r in registered for name, _ in r.sections]
    groups = [
        None if g is None else (f"{r.name}:{g}" if several else g) for r in registered for g in r.groups
    ]
    sections = [ds for r in registered for _, ds in r.sections]
    held_out = held_out_sections(names, groups, [len(ds) for ds in sections], val_sections)
    if len(held_out) == len(sections):
        raise ValueError("Every section is held out for validation; nothing is left to train on.")
    data = TrainingData(registered, vocab, names, sections, held_out, groups, gene_stats(registered, vocab))
    if smooth_targets is not None:
        smooth_training_targets(registered, held_out, smooth_targets)
    if data.n_train < 2:
        raise ValueError(
            f"Only {data.n_train} training spot(s) outside val_sections; InfoNCE needs at least 2."
        )
    log.info(
        "Training CoMTIP on %d section(s) (%s), %d training spots, %d genes in the vocabulary; held out: "
        "%s%s.",
        len(sections),
        ", ".join(names),
        data.n_train,
        len(vocab),
        [names[i] for i in held_out] or "none",
        "" if smooth_targets is None else f"; targets averaged over the {smooth_targets} nearest spots",
    )
    return data
