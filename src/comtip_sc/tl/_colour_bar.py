"""The simple colour bar: ridge regression of expression on the tiles' colour statistics.

Four variants: the spot tile's or a 3× wider context tile's :func:`~comtip_sc.pp.colour_stats`, each as
they are or z-scored within each section. Each is a ridge whose penalty is chosen by spatial-block CV
(:mod:`~comtip_sc.tl._ridge`); the variant is chosen by the same CV on the training sections, never by
a held-out score. A learned image model that does not beat it has learnt nothing the colour of a spot
does not already say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from .._constants import COLOUR_CONTEXT_SCALE, DEFAULT_TILE_PX, DEFAULT_TILE_UM, TABLE_KEY
from .._sections import resolve_sections, spot_layout
from .._tables import get_table, normalized_values
from ..pp._colour_stats import N_COLOUR_STATS, colour_features, zscore_per_section
from ..pp._smooth import smooth_over_neighbours
from ._evaluate import pearson_per_gene
from ._ridge import CV_BLOCKS, ridge_cv, spatial_folds

#: The variants, in table order: (context tile, per-section z-scores).
COLOUR_BAR_VARIANTS: list[tuple[bool, bool]] = [(c, z) for c in (False, True) for z in (False, True)]


def colour_variant_name(context: bool, zscore: bool, context_scale: float = COLOUR_CONTEXT_SCALE) -> str:
    """Label of one colour-bar variant, e.g. ``"3× context, per-section z"``.

    Examples
    --------
    >>> colour_variant_name(False, True)
    'spot tile, per-section z'

    """
    return (f"{context_scale:g}× context" if context else "spot tile") + (", per-section z" if zscore else "")


@dataclass
class ColourBarFit:
    """Every variant of the colour bar fitted on training spots, and the one their CV chose.

    Attributes
    ----------
    variant
        Name of the chosen variant (``colour_variant_name``).
    cv_pcc
        Per variant, the PCC-ALL of its out-of-fold predictions over the training spots' spatial blocks.
    alphas
        Per variant, the ridge penalty chosen by the same blocks.
    predictions
        Per variant, its ``(n_test, n_genes)`` predictions of the test spots.

    """

    variant: str
    cv_pcc: dict[str, float]
    alphas: dict[str, float]
    predictions: dict[str, np.ndarray] = field(repr=False)


def _variant_x(x: np.ndarray, sections: Sequence[str], context: bool, zscore: bool) -> np.ndarray:
    block = x[:, N_COLOUR_STATS:] if context else x[:, :N_COLOUR_STATS]
    return zscore_per_section(block, sections) if zscore else np.asarray(block, np.float64)


def _out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: float) -> np.ndarray:
    """Predictions of every spot by a ridge (penalty ``alpha``) fitted without its fold."""
    from sklearn.linear_model import Ridge

    out = np.zeros(y.shape, np.float64)
    for f in np.unique(folds):
        held = folds == f
        out[held] = Ridge(alpha=alpha).fit(x[~held], y[~held]).predict(x[held])
    return out


def colour_bar_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_sections: Sequence[str],
    train_folds: np.ndarray,
    test_x: np.ndarray,
    test_sections: Sequence[str],
    *,
    context_scale: float = COLOUR_CONTEXT_SCALE,
) -> ColourBarFit:
    """Fit the four colour-bar variants on training spots; predict test spots; choose a variant by CV.

    Each variant standardises its 54 features over the training spots (after the per-section z-scores,
    if any) and fits ``cs.tl.ridge_cv`` over ``train_folds``. The chosen variant has
    the best PCC-ALL of out-of-fold predictions over the same folds (each fold predicted by a ridge with
    the variant's penalty fitted on the other folds), ties going to the simpler variant. Test values are
    never looked at: selection uses training spots only.

    Parameters
    ----------
    train_x, test_x
        ``(n, 108)`` :func:`~comtip_sc.pp.colour_features` of the training and of the test spots.
    train_y
        ``(n_train, n_genes)`` training expression (normalised log1p).
    train_sections, test_sections
        Section of every spot (for the per-section z-scores).
    train_folds
        Spatial CV fold of every training spot (``cs.tl.spatial_folds``), at least two.
    context_scale
        The context tile's scale, for the variants' names.

    Returns
    -------
    A :class:`~comtip_sc.tl.ColourBarFit`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(size=(60, 108)); y = x[:, :3] @ rng.normal(size=(3, 4))
    >>> fit = colour_bar_predict(x, y, ["a"] * 60, np.arange(60) % 5, x[:10], ["b"] * 10)
    >>> fit.variant in fit.cv_pcc, fit.predictions[fit.variant].shape
    (True, (10, 4))

    """
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y = np.asarray(train_y, np.float64)
    train_folds = np.asarray(train_folds)
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if x.ndim != 2 or x.shape[1] != 2 * N_COLOUR_STATS:
            raise ValueError(
                f"{name} must be (n_spots, {2 * N_COLOUR_STATS}) colour features, got {x.shape}."
            )
    if len(train_y) != len(train_x) or len(train_folds) != len(train_x):
        raise ValueError(
            f"train_y and train_folds must have one row per training spot ({len(train_x)}), got "
            f"{len(train_y)} and {len(train_folds)}."
        )
    if len(np.unique(train_folds)) < 2:
        raise ValueError("The colour bar needs at least two CV folds among the training spots.")
    cv, alphas, preds = {}, {}, {}
    for context, zscore in COLOUR_BAR_VARIANTS:
        name = colour_variant_name(context, zscore, context_scale)
        scale = StandardScaler().fit(_variant_x(train_x, train_sections, context, zscore))
        tr = scale.transform(_variant_x(train_x, train_sections, context, zscore))
        ridge = ridge_cv(tr, train_y, train_folds)
        alphas[name] = float(ridge.alpha_)
        cv[name] = float(
            pearson_per_gene(train_y, _out_of_fold(tr, train_y, train_folds, ridge.alpha_)).mean()
        )
        te = scale.transform(_variant_x(test_x, test_sections, context, zscore))
        preds[name] = ridge.predict(te).astype(np.float32)
    best = max(cv, key=lambda k: cv[k])  # the first of equals: variants go from simple to elaborate
    return ColourBarFit(best, cv, alphas, preds)


@dataclass
class ColourBar:
    """The colour bar fitted on training sections and its predictions of the test sections.

    Attributes
    ----------
    variant
        The variant chosen by spatial-block CV on the training sections.
    predictions
        One DataFrame per test SpatialData: its table's spots × ``genes``, the chosen variant's predictions.
    fit
        The :class:`~comtip_sc.tl.ColourBarFit` of every variant (CV scores, penalties, predictions before smoothing).
    genes
        The predicted genes.

    """

    variant: str
    predictions: list[pd.DataFrame] = field(repr=False)
    fit: ColourBarFit = field(repr=False)
    genes: list[str] = field(repr=False)


def section_layout(
    sdatas: Sequence[SpatialData], table_key: str, spot_diameter_um: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Section label (``"<i>/<shapes element>"``, unique across the objects) and centre of every spot."""
    sections, centres = [], []
    for i, sdata in enumerate(sdatas):
        table = get_table(sdata, table_key)
        resolved = resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
        names, xy = spot_layout(resolved, table.n_obs)
        sections.extend(f"{i}/{n}" for n in names)
        centres.append(xy)
    return np.asarray(sections), np.concatenate(centres)


def as_list(sdatas: SpatialData | Sequence[SpatialData], what: str) -> list[SpatialData]:
    """One SpatialData or several, as a non-empty list."""
    out = [sdatas] if isinstance(sdatas, SpatialData) else list(sdatas)
    if not out or not all(isinstance(s, SpatialData) for s in out):
        raise TypeError(f"{what} must be a SpatialData or a non-empty sequence of them.")
    return out


def colour_bar(
    train: SpatialData | Sequence[SpatialData],
    test: SpatialData | Sequence[SpatialData],
    *,
    genes: Sequence[str],
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    colour_norm: str | None = None,
    context_scale: float = COLOUR_CONTEXT_SCALE,
    cv_blocks: int = CV_BLOCKS,
    smooth: int | None = None,
    spot_diameter_um: float | None = None,
) -> ColourBar:
    """The simple bar: predict the test sections' expression from the colour of their tiles.

    Fits the four colour-statistics ridges (:func:`~comtip_sc.tl.colour_bar_predict`: spot tile or 3× context tile,
    with and without per-section z-scores, each penalty chosen by spatial-block CV) on the training
    sections and predicts the test sections with the one whose out-of-fold PCC-ALL over the training
    sections' spatial blocks is best. The variant is chosen on the training sections alone, not by the
    test score, so the bar is what a user could have fitted without seeing the test expression. Nothing
    is written into ``train`` or ``test``.

    Parameters
    ----------
    train, test
        SpatialData objects (one or several each) with images, spot shapes and a table; ``train``'s tables
        must measure ``genes``.
    genes
        Genes to predict.
    table_key
        Table of every object.
    layer
        Layer of the training expression: ``None`` normalises the raw counts in ``X`` (1e4 per spot + log1p).
    tile_um, tile_px, colour_norm, context_scale
        The tiles the colour statistics are taken from (:func:`~comtip_sc.pp.colour_features`).
    cv_blocks
        Spatial blocks per training section (the CV folds of the penalty and of the variant).
    smooth
        ``None``: each spot's prediction from its own tiles. An int ``k``: afterwards, each spot's prediction
        is averaged with its ``k`` nearest spots' of the same section (as ``comtip_predict(smooth=k)``).
    spot_diameter_um
        Spot diameter in µm when the tables do not record it (Visium: 55).

    Returns
    -------
    A :class:`ColourBar`: the chosen ``variant``, one DataFrame of ``predictions`` per test object and the
    ``fit`` of every variant (its CV score and penalty).

    Examples
    --------
    >>> import comtip_sc as cs
    >>> train = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=20, seed=0, sample_id="a")
    >>> test = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=20, seed=1, sample_id="b")
    >>> bar = cs.tl.colour_bar(train, test, genes=["KRT19", "COL1A1"], tile_um=100, tile_px=16)
    >>> bar.variant in bar.fit.cv_pcc, bar.predictions[0].shape
    (True, (36, 2))

    """
    train, test = as_list(train, "train"), as_list(test, "test")
    genes = list(dict.fromkeys(genes))
    if not genes:
        raise ValueError("genes is empty.")
    kw = {
        "tile_um": tile_um,
        "tile_px": tile_px,
        "colour_norm": colour_norm,
        "context_scale": context_scale,
        "table_key": table_key,
        "spot_diameter_um": spot_diameter_um,
    }
    train_y = np.concatenate([normalized_values(get_table(s, table_key), genes, layer=layer) for s in train])
    train_sections, train_centres = section_layout(train, table_key, spot_diameter_um)
    test_sections, test_centres = section_layout(test, table_key, spot_diameter_um)
    fit = colour_bar_predict(
        np.concatenate([colour_features(s, **kw) for s in train]),
        train_y,
        train_sections,
        spatial_folds(train_centres, train_sections, cv_blocks),
        np.concatenate([colour_features(s, **kw) for s in test]),
        test_sections,
        context_scale=context_scale,
    )
    pred = fit.predictions[fit.variant]
    if smooth is not None:
        pred = smooth_over_neighbours(pred, test_centres, test_sections, smooth)
    frames, lo = [], 0
    for s in test:
        obs = get_table(s, table_key).obs_names
        frames.append(pd.DataFrame(pred[lo : lo + len(obs)], index=obs.copy(), columns=pd.Index(genes)))
        lo += len(obs)
    return ColourBar(fit.variant, frames, fit, genes)
