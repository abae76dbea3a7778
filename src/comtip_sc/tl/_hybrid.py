"""The ``"hybrid"`` read-out: ridge over the image embedding and the tiles' colour statistics together.

The CoMTIP embedding and trivial colour statistics fail in different ways (the embedding can miss plain
stain intensity, colour misses texture), so one ridge over both blocks can beat either. Each block is
z-scored within each section, which removes a section's overall stain and embedding shift from both,
and the colour block's weight relative to the embedding block is searched together with the penalty
(a per-block penalty) by spatial-block CV on the reference spots.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from spatialdata import SpatialData

from .._constants import COLOUR_CONTEXT_SCALE, TABLE_KEY
from .._sections import resolve_sections
from .._tables import get_table
from ..model._bank import ReferenceBank
from ..model._comtip_model import ComtipModel
from ..pp._colour_stats import N_COLOUR_STATS, colour_features, zscore_per_section
from ._head import bank_folds, pattern_ridge

#: Weights of the colour block relative to the embedding block, searched with the ridge penalty: with one
#: penalty over both blocks, weight w penalises the colour coefficients 1/w² as much as the embedding's.
HYBRID_COLOUR_WEIGHTS = (0.5, 1.0, 2.0)


def model_colour_features(sdata: SpatialData, model: ComtipModel, **kw) -> np.ndarray:
    """:func:`~comtip_sc.pp.colour_features` of ``sdata``'s spots at the model's tile size and colour norm."""
    return colour_features(
        sdata,
        tile_um=model.tile_um,
        tile_px=model.tile_px,
        colour_norm=model.colour_norm,
        context_scale=COLOUR_CONTEXT_SCALE,
        **kw,
    )


def hybrid_features(
    emb: np.ndarray, colour: np.ndarray, sections: Sequence[str], weight: float
) -> np.ndarray:
    """``[embedding z-scored per section | weight × colour z-scored per section]``, ``float32``.

    Examples
    --------
    >>> x = hybrid_features(np.array([[1.0], [3.0]]), np.array([[0.0], [2.0]]), ["s", "s"], 2.0)
    >>> x.tolist()
    [[-1.0, -2.0], [1.0, 2.0]]

    """
    return np.hstack(
        [zscore_per_section(emb, sections), weight * zscore_per_section(colour, sections)]
    ).astype(np.float32)


def hybrid_head(
    img: np.ndarray,
    query_colour: np.ndarray,
    query_sections: Sequence[str],
    bank: ReferenceBank,
    cv_blocks: int | None,
) -> tuple[np.ndarray, dict]:
    """Hybrid ridge predictions of the query spots and how they were chosen.

    Fitted on the bank spots that have colour statistics; the colour weight
    (:data:`HYBRID_COLOUR_WEIGHTS`) and the penalty with the best CV score win.
    """
    if bank.image_embeddings is None or bank.colour is None:
        lacking = "image embeddings" if bank.image_embeddings is None else "colour statistics"
        raise ValueError(
            f"The reference bank has no {lacking}; method='hybrid' needs them. Pass reference= (the colour "
            "statistics of its spots are then computed from its images)."
        )
    rows = np.isfinite(bank.colour).all(axis=1)
    if rows.sum() < 2:
        raise ValueError("Fewer than 2 reference spots have colour statistics; method='hybrid' cannot fit.")
    sections = np.asarray(bank.sections if bank.sections else [""] * len(rows)).astype(str)[rows]
    folds = bank_folds(bank, cv_blocks)
    folds = None if folds is None else folds[rows]
    expression = bank.rows(np.flatnonzero(rows))
    best = None
    for w in HYBRID_COLOUR_WEIGHTS:
        train_x = hybrid_features(bank.image_embeddings[rows], bank.colour[rows], sections, w)
        query_x = hybrid_features(img, query_colour, query_sections, w)
        pred, alphas, score = pattern_ridge(train_x, expression, folds, query_x)
        if best is None or score > best[3]:
            best = (pred, alphas, w, score)
    pred, alphas, w, _ = best
    return pred, {
        "head_cv": "loo" if folds is None else f"{cv_blocks} spatial blocks",
        "head_alphas": alphas,
        "colour_weight": w,
        "reference_spots": int(rows.sum()),
    }


def spot_keys(sdatas: Sequence[SpatialData], table_key: str, spot_diameter_um: float | None):
    """``(object index, row)`` of every ``(shapes element, spot id)`` of the objects' tables."""
    keys = {}
    for i, sdata in enumerate(sdatas):
        names = get_table(sdata, table_key).obs_names
        for sec in resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um):
            for row in sec.obs_index:
                keys[(sec.region, str(names[row]))] = (i, int(row))
    return keys


def bank_keys(bank: ReferenceBank) -> list[tuple[str, str]]:
    """``(shapes element, spot id)`` of every bank spot (a section recorded as ``"<dataset>/<element>"``)."""
    if len(bank.obs_names) != len(bank.embeddings) or len(bank.sections) != len(bank.embeddings):
        raise ValueError("The reference bank does not record the section and id of every spot.")
    return [(str(s).rsplit("/", 1)[-1], str(o)) for s, o in zip(bank.sections, bank.obs_names, strict=True)]


def with_bank_colour(
    model: ComtipModel,
    sdatas: Sequence[SpatialData],
    *,
    table_key: str = TABLE_KEY,
    spot_diameter_um: float | None = None,
) -> ComtipModel:
    """A shallow copy of ``model`` whose bank carries the colour statistics of its spots found in ``sdatas``.

    Bank spots are matched to the tables' spots by shapes element and spot id; bank spots found in none
    of ``sdatas`` get NaN rows, which the ``"hybrid"`` read-out leaves out. ``model`` is not changed.
    """
    bank = model.reference
    if bank is None:
        raise ValueError("The model stores no reference bank.")
    keys = spot_keys(sdatas, table_key, spot_diameter_um)
    where = [keys.get(k) for k in bank_keys(bank)]
    colour = np.full((len(where), 2 * N_COLOUR_STATS), np.nan, np.float32)
    for i, sdata in enumerate(sdatas):
        mine = [
            (b, row) for b, hit in enumerate(where) if hit is not None and hit[0] == i for row in [hit[1]]
        ]
        if not mine:
            continue
        feats = model_colour_features(sdata, model, table_key=table_key, spot_diameter_um=spot_diameter_um)
        b_idx, rows = (np.asarray(v) for v in zip(*mine, strict=True))
        colour[b_idx] = feats[rows]
    out = copy.copy(model)
    out.reference = copy.copy(bank)
    out.reference.colour = colour
    return out
