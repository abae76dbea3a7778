"""What ``cs.tl.fit`` trains on and leaves behind: registered tables, trunk-token caches, the retrieval bank."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import PANEL_KEY, SAMPLE_KEY
from .._sections import resolve_sections, spot_layout
from .._tables import check_counts, check_genes, get_table
from ..model._comtip_model import ReferenceBank
from ..pp._context import with_context
from ..pp._feature_cache import cache_trunk_tokens
from ..pp._genes import select_genes
from ..pp._tile_cache import cache_tiles
from ..pp._tiles import SpotTiles
from ._datamodule import SpotDataModule, SpotSentences, normalized_values, subset
from ._inference import encode_images, encode_sentences

# Registration is part of fit: its messages go to fit's logger.
log = logging.getLogger("comtip_sc.tl._fit")


@dataclass
class Registered:
    """One training table after registration: its panel, values and per-section datasets."""

    name: str
    panel: list[str]
    values: np.ndarray
    sections: list[tuple[str, SpotSentences]]
    obs_names: np.ndarray
    centres: np.ndarray


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
    return Registered(f"dataset{idx}", panel, values, sections, table.obs_names.to_numpy(), centres)


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


def cache_device(accelerator: str) -> torch.device:
    """Where the trunk runs while the token cache is built: this process's GPU when training uses one."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def attach_token_caches(
    registered: list[Registered],
    vision: torch.nn.Module,
    folder: str,
    mean,
    std,
    device: torch.device,
    jitter: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Point every registered table's dataset at cached trunk tokens (built in ``folder`` when missing).

    ``jitter`` (stain, colour) > 0 caches jittered views. Their draws use one fixed seed (0), not the fit's,
    so fits with other seeds share the cache; the fit's seed still orders batches, views and masks.
    """
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


def build_bank(
    network: torch.nn.Module, dm: SpotDataModule, registered: list[Registered], vocab: dict[str, int]
) -> ReferenceBank:
    """The retrieval bank of a trained network: every spot given to fit, validation sections included.

    Image-independent sentence embeddings, image embeddings and expression (sparse over the vocabulary;
    each dataset is one measurement pattern, its panel) of every spot: they are the user's data, and
    retrieval is from all of it.
    """
    panel = list(vocab)
    embeddings, image_embeddings, expression, obs_names = [], [], [], []
    bank_sections, centres, pattern = [], [], []
    patterns = np.zeros((len(registered), len(panel)), bool)
    for ri, r in enumerate(registered):
        cols = np.array([vocab[g] for g in r.panel])
        patterns[ri, cols] = True
        for region, ds in r.sections:
            loader = dm.predict_loader(ds)
            embeddings.append(encode_sentences(network, loader))
            image_embeddings.append(encode_images(network, loader))
            block = sp.csr_matrix(r.values[ds.indices], dtype=np.float32)
            block = sp.csr_matrix((block.data, cols[block.indices], block.indptr), (len(ds), len(panel)))
            expression.append(block)
            pattern.append(np.full(len(ds), ri))
            obs_names.extend(r.obs_names[ds.indices].tolist())
            bank_sections.extend([f"{r.name}/{region}"] * len(ds))
            centres.append(r.centres[ds.indices])
    return ReferenceBank(
        np.concatenate(embeddings),
        sp.vstack(expression, format="csr"),
        panel,
        obs_names,
        np.concatenate(image_embeddings),
        bank_sections,
        np.concatenate(centres),
        observed=(patterns, np.concatenate(pattern)),
    )


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
