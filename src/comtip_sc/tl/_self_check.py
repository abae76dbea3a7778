"""``cs.tl.self_check``: a trained model's read-outs against the simple colour bar on held-out sections.

Every read-out of a model is scored with PCC-ALL on whole sections it was not trained on, beside the
simple bar (:func:`~comtip_sc.tl.colour_bar`) fitted on the training sections and scored on the same spots
and genes. A read-out that does not beat the bar predicts nothing the colour of a spot does not already
tell.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from .._constants import BAR_ROW, TABLE_KEY
from .._devices import resolve_device
from .._predictions import get_predictions
from .._tables import get_table, normalized_values
from ..model._comtip_model import ComtipModel
from ..pp._smooth import smooth_over_neighbours
from ._colour_bar import as_list, colour_bar, section_layout
from ._embed import image_embeddings
from ._evaluate import pearson_per_gene
from ._hybrid import bank_keys, spot_keys, with_bank_colour
from ._predict import comtip_predict
from ._ridge import CV_BLOCKS
from ._utils import target

log = logging.getLogger(__name__)

#: The read-outs scored by default, in table order.
READOUTS = ("retrieval", "head", "zero_shot", "hybrid")
#: Working keys in the copies of the held-out tables (never in the user's objects).
_EMB, _PRED = "_self_check_emb", "_self_check_pred"


def _default_genes(model: ComtipModel, tables: list, genes: Sequence[str] | None) -> list[str]:
    if genes is None:
        genes = [g for g in model.panel if all(g in t.var_names for t in tables)]
        if not genes:
            raise ValueError("No gene of the model's panel is measured in every training and held-out table.")
        return genes
    genes = list(dict.fromkeys(genes))
    for i, t in enumerate(tables):
        missing = [g for g in genes if g not in t.var_names]
        if missing:
            raise KeyError(f"Genes {missing[:10]} are not in table {i} of the training and held-out objects.")
    return genes


def _scoring_model(
    model: ComtipModel,
    train: list[SpatialData],
    held_out: list[SpatialData],
    hybrid: bool,
    table_key: str,
    spot_diameter_um: float | None,
) -> ComtipModel:
    """A shallow copy of ``model`` whose bank holds no held-out spot and, for the hybrid, colour statistics."""
    bank = model.reference
    if bank is None:
        return model
    out = copy.copy(model)
    held = spot_keys(held_out, table_key, spot_diameter_um)
    inside = np.array([k in held for k in bank_keys(bank)], dtype=bool)
    if inside.all():
        raise ValueError(
            "Every spot of the model's reference bank is in a held-out section; nothing is left."
        )
    if inside.any():
        # fit puts every spot it was given in the bank, validation sections included.
        log.info("Self-check: %d held-out spots left out of the reference bank.", int(inside.sum()))
        out.reference = bank.subset(~inside)
    if hybrid and out.reference.colour is None:
        out = with_bank_colour(out, train, table_key=table_key, spot_diameter_um=spot_diameter_um)
    return out


def self_check(
    model: ComtipModel,
    train: SpatialData | Sequence[SpatialData],
    held_out: SpatialData | Sequence[SpatialData],
    genes: Sequence[str] | None = None,
    *,
    readouts: Sequence[str] = READOUTS,
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    smooth: int | None = None,
    tta: bool = False,
    cv_blocks: int = CV_BLOCKS,
    spot_diameter_um: float | None = None,
    batch_size: int = 64,
    accelerator: str = "auto",
) -> pd.DataFrame:
    """Score the model's read-outs and the simple colour bar on whole held-out sections.

    Each read-out (:func:`~comtip_sc.tl.comtip_predict` with ``method=`` each of ``readouts``) predicts the held-out
    spots from their tiles; the simple bar predicts the same spots with each of the four colour-statistics
    ridges of :func:`~comtip_sc.tl.colour_bar` (spot tile or 3× context tile, with and without per-section
    z-scores, each penalty by spatial-block CV, fitted on ``train``), and the bar is the best of the four on
    the held-out spots: the hardest colour baseline to beat (the variant that CV inside the training
    sections prefers cannot see a new patient's stain shift). Every prediction is scored
    against the held-out expression with PCC-ALL: the mean over ``genes`` of the Pearson correlation over
    all held-out spots (:func:`~comtip_sc.tl.pearson_per_gene`; a gene constant in the truth or the prediction counts 0).
    Spots of held-out sections in the model's reference bank (matched by shapes element and spot id) are
    left out of the bank first, so retrieval and the ridge read-outs never see them; the ``"hybrid"``
    read-out takes the colour statistics of bank spots from ``train`` when the bank carries none. Nothing
    is written into ``model``, ``train`` or ``held_out``: the work happens on copies of their tables.

    Parameters
    ----------
    model
        A trained :class:`~comtip_sc.model.ComtipModel`.
    train
        The sections the model was trained on (one SpatialData or several, e.g. from
        :func:`~comtip_sc.pp.subset_sections`); the bar is fitted on them.
    held_out
        Whole sections the model was not trained on, with measured expression.
    genes
        Genes scored. Default: the model's panel genes measured in every training and held-out table.
    readouts
        Read-outs scored, among ``"retrieval"``, ``"head"``, ``"zero_shot"`` (skipped for a model whose
        sentences carry no values) and ``"hybrid"``.
    table_key
        Table of every object.
    layer
        Layer of observed expression: ``None`` normalises the raw counts in ``X`` (1e4 per spot + log1p).
    smooth
        ``None``: predictions from each spot's own tile. An int ``k``: every read-out and the bar alike are
        averaged over each spot's ``k`` nearest spots of its section (``comtip_predict(smooth=k)``).
    tta
        Embed the held-out tiles with test-time augmentation (8 dihedral views).
    cv_blocks
        Spatial blocks per section for the ridges' penalties and the bar's variant.
    spot_diameter_um
        Spot diameter in µm when the tables do not record it (Visium: 55).
    batch_size, accelerator
        Inference settings.

    Returns
    -------
    DataFrame indexed by read-out (``readouts`` in order, then ``"simple bar (<variant>)"``) with columns
    ``pcc_all``, ``vs_bar`` (``pcc_all`` minus the bar's), ``beats_bar`` (``False`` on the bar's row),
    ``n_spots`` and ``n_genes``. ``attrs`` holds ``"bar_variant"`` (the best on the held-out spots),
    ``"bar_held_out_pcc"`` (every variant's held-out score), ``"bar_cv_pcc"`` (every variant's training CV
    score) and ``"genes"``. :func:`~comtip_sc.tl.format_self_check` renders it as text. A warning is logged
    when no read-out beats the bar.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> patient = sdata.tables["table"].obs["patient"].to_numpy()  # doctest: +SKIP
    >>> train = cs.pp.subset_sections(sdata, patient != "A")  # doctest: +SKIP
    >>> model = cs.tl.fit(train)  # doctest: +SKIP
    >>> table = cs.tl.self_check(model, train, cs.pp.subset_sections(sdata, patient == "A"))  # doctest: +SKIP
    >>> print(cs.tl.format_self_check(table))  # doctest: +SKIP

    """
    train, held_out = as_list(train, "train"), as_list(held_out, "held_out")
    unknown = [m for m in readouts if m not in READOUTS]
    if unknown or not readouts:
        raise ValueError(f"readouts must be a non-empty selection of {READOUTS}, got {list(readouts)!r}.")
    readouts = [m for m in dict.fromkeys(readouts) if m != "zero_shot" or model.config.use_values]
    tables = [get_table(s, table_key) for s in (*train, *held_out)]
    genes = _default_genes(model, tables, genes)
    needs_bank = any(m != "zero_shot" for m in readouts)
    if needs_bank and model.reference is None:
        raise ValueError("The model stores no reference bank; score readouts=('zero_shot',) only.")
    scorer = (
        _scoring_model(model, train, held_out, "hybrid" in readouts, table_key, spot_diameter_um)
        if needs_bank
        else model
    )
    truth = np.concatenate([normalized_values(get_table(s, table_key), genes, layer=layer) for s in held_out])
    preds: dict[str, list[np.ndarray]] = {m: [] for m in readouts}
    device = resolve_device(accelerator)
    for sdata in held_out:
        work, table = target(sdata, table_key, copy=True)
        table.obsm[_EMB] = image_embeddings(
            work,
            model,
            table_key=table_key,
            batch_size=batch_size,
            device=device,
            spot_diameter_um=spot_diameter_um,
            tta=tta,
        )
        for m in readouts:
            comtip_predict(
                work,
                scorer,
                method=m,
                genes=genes,
                cv_blocks=cv_blocks,
                smooth=smooth,
                table_key=table_key,
                key_added=_PRED,
                use_rep=_EMB,
                spot_diameter_um=spot_diameter_um,
                accelerator=accelerator,
            )
            preds[m].append(get_predictions(table, _PRED)[genes].to_numpy(np.float64))
    bar = colour_bar(
        train,
        held_out,
        genes=genes,
        table_key=table_key,
        layer=layer,
        tile_um=model.tile_um,
        tile_px=model.tile_px,
        colour_norm=model.colour_norm,
        cv_blocks=cv_blocks,
        smooth=smooth,
        spot_diameter_um=spot_diameter_um,
    )
    scores = {name: float(pearson_per_gene(truth, np.concatenate(p)).mean()) for name, p in preds.items()}
    # The bar is the best variant on the held-out sections: the hardest colour baseline to beat. The
    # variant chosen by CV inside the training patient cannot see a new patient's stain shift (on her2st
    # it picked raw spot-tile colour, PCC-ALL ~0 on the other patient, where per-section z scores ~0.08).
    bar_scores = _variant_scores(bar, truth, held_out, table_key, smooth, spot_diameter_um)
    variant = max(bar_scores, key=lambda k: bar_scores[k])
    bar_score = scores[f"{BAR_ROW} ({variant})"] = bar_scores[variant]
    out = pd.DataFrame(
        {
            "pcc_all": scores,
            "vs_bar": {k: v - bar_score for k, v in scores.items()},
            "beats_bar": {k: k in readouts and v > bar_score for k, v in scores.items()},
            "n_spots": dict.fromkeys(scores, len(truth)),
            "n_genes": dict.fromkeys(scores, len(genes)),
        }
    )
    out.index.name = "read_out"
    out.attrs = {
        "bar_variant": variant,
        "bar_held_out_pcc": bar_scores,
        "bar_cv_pcc": dict(bar.fit.cv_pcc),
        "genes": list(genes),
    }
    if not out["beats_bar"].any():
        log.warning(
            "No read-out beats the simple colour bar on the held-out sections (PCC-ALL %.3f, %s): the model "
            "predicts nothing there that the tiles' colour does not already tell.",
            bar_score,
            variant,
        )
    return out


def _variant_scores(
    bar, truth: np.ndarray, held_out: list[SpatialData], table_key: str, smooth: int | None, spot_diameter_um
) -> dict[str, float]:
    """PCC-ALL on the held-out spots of every colour-bar variant (smoothed like the read-outs when asked)."""
    if smooth is not None:
        sections, centres = section_layout(held_out, table_key, spot_diameter_um)
    out = {}
    for name, pred in bar.fit.predictions.items():
        if smooth is not None:
            pred = smooth_over_neighbours(pred, centres, sections, smooth)
        out[name] = float(pearson_per_gene(truth, np.asarray(pred, np.float64)).mean())
    return out


def format_self_check(table: pd.DataFrame) -> str:
    """A self-check table (:func:`~comtip_sc.tl.self_check`) as aligned text for logs and reprs.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame(
    ...     {"pcc_all": [0.21, 0.18], "vs_bar": [0.03, 0.0], "beats_bar": [True, False],
    ...      "n_spots": [500, 500], "n_genes": [250, 250]},
    ...     index=["head", "simple bar (spot tile)"],
    ... )
    >>> print(format_self_check(t))
    Self-check on 500 held-out spots, 250 genes (PCC-ALL):
      head                    0.210  +0.030 vs the bar
      simple bar (spot tile)  0.180

    """
    if table.empty:
        return "Self-check: no rows."
    first = table.iloc[0]
    width = max(len(str(i)) for i in table.index)
    lines = [
        f"Self-check on {int(first['n_spots'])} held-out spots, {int(first['n_genes'])} genes (PCC-ALL):"
    ]
    for name, row in table.iterrows():
        is_bar = str(name).startswith(BAR_ROW)
        margin = "" if is_bar else f"  {row['vs_bar']:+.3f} vs the bar"
        lines.append(f"  {name!s:<{width}}  {row['pcc_all']:.3f}{margin}")
    if not table["beats_bar"].any():
        lines.append("No read-out beats the simple bar.")
    return "\n".join(lines)
