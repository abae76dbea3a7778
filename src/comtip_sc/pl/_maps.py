"""Spatial maps of observed vs predicted expression over the H&E, and per-gene Pearson plots."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from spatialdata import SpatialData

from .._constants import PRED_KEY, TABLE_KEY
from .._deprecation import renamed_arguments
from .._predictions import get_predictions
from .._tables import get_table, normalized_values
from ..tl._evaluate import pearson_per_gene
from ._layout import draw_spots, section_layout
from ._utils import finish, finish_ax


def _values(table: AnnData, genes: Sequence[str], rows: np.ndarray, pred_key: str, layer: str | None):
    """Per gene: (observed or None, predicted) over ``rows``; clear errors for what is missing."""
    frame = get_predictions(table, pred_key)
    out = {}
    for g in genes:
        if g not in frame.columns:
            raise KeyError(
                f"Gene {g!r} has no prediction under {pred_key!r} (predicted: {list(frame.columns)[:10]})."
            )
        pred = frame[g].to_numpy(np.float64)[rows]
        if np.isnan(pred).all():
            raise ValueError(f"Gene {g!r} has no prediction under {pred_key!r} (all NaN).")
        obs = None
        if g in table.var_names:
            obs = normalized_values(table, [g], layer=layer)[rows, 0].astype(np.float64)
        out[g] = (obs, pred)
    return out


@renamed_arguments(layer_pred="pred_key", layer_true="layer")
def predicted_vs_observed(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    pred_key: str = PRED_KEY,
    layer: str | None = None,
    table_key: str = TABLE_KEY,
    sample: str | None = None,
    img_alpha: float = 1.0,
    spot_size: float | None = None,
    cmap: str = "viridis",
    spot_diameter_um: float | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Maps of observed and predicted expression side by side, spots drawn over the section's H&E.

    One row per gene: observed (left) and predicted (right) share one colour scale (same ``vmin`` /
    ``vmax``, one colour bar), so a pale prediction reads as pale. The predicted panel's title carries
    that gene's Pearson correlation with the observed values over the spots drawn (a constant gene
    scores 0). A predicted gene that the table does
    not measure (zero-shot genes outside the panel) is drawn predicted only.

    The background is a crop around the spots, read from a coarse pyramid level of the image; spots
    are mapped into its pixels through the spatialdata transformations to the section's coordinate
    system and drawn as circles of their true radius.

    Parameters
    ----------
    sdata
        SpatialData with images, spot circles and a table with predictions.
    genes
        Gene(s) to draw, one row each.
    pred_key
        Key of the predictions (:func:`comtip_sc.tl.comtip_predict`'s ``key_added``). Formerly
        ``layer_pred``, still accepted with a :class:`FutureWarning`.
    layer
        Layer of observed expression: ``None`` normalises the raw counts in ``X`` (1e4 per spot + log1p)
        without writing anything; a layer name is taken as already on that scale. Formerly ``layer_true``.
    table_key
        Table holding observed and predicted values.
    sample
        Value of ``obs["sample"]`` (or name of the shapes element) of the section to draw; required when
        the table spans several sections.
    img_alpha
        Opacity of the H&E background.
    spot_size
        Spot diameter in µm to draw instead of each circle's true radius.
    cmap
        Colour map of the expression values.
    spot_diameter_um
        Spot diameter in µm when the table does not record it in ``uns["comtip"]["spot_diameter_um"]``
        (e.g. ``spatialdata_io.visium`` output: 55); it fixes the section's µm scale.
    show, save, return_fig
        As in scanpy: show the figure, save it to a path, or return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure when ``return_fig`` is true; with ``show=False`` the map axes (observed, predicted of
    each gene in turn), the figure left open; else ``None``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cs.tl.comtip_predict(sdata, model, method="zero_shot")  # doctest: +SKIP
    >>> cs.pl.predicted_vs_observed(sdata, ["KRT19", "COL1A1"], sample="A1")  # doctest: +SKIP

    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("genes is empty; name at least one gene to draw.")
    table = get_table(sdata, table_key)
    lay = section_layout(
        sdata,
        table,
        table_key=table_key,
        sample=sample,
        spot_size=spot_size,
        spot_diameter_um=spot_diameter_um,
    )
    values = _values(table, genes, lay.rows, pred_key, layer)
    bg, extent, xy, r = lay.bg, lay.extent, lay.xy, lay.r
    x0, x1, y1, y0 = extent

    aspect = (y1 - y0) / max(x1 - x0, 1)
    fig, axes = plt.subplots(
        len(genes),
        3,
        figsize=(8.6, 4.0 * aspect * len(genes) + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 0.05]},
    )
    for gene, row in zip(genes, axes, strict=True):
        obs, pred = values[gene]
        both = pred if obs is None else np.concatenate([obs, pred])
        finite = both[np.isfinite(both)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        if obs is None:
            row[0].axis("off")
            row[0].text(0.5, 0.5, f"{gene}\nnot measured\n(predicted only)", ha="center", va="center")
            title_r = ""
        else:
            ok = np.isfinite(pred)
            r_gene = float(pearson_per_gene(obs[ok, None], pred[ok, None])[0]) if ok.sum() > 1 else 0.0
            title_r = f", r = {r_gene:.2f}"
            draw_spots(row[0], bg, extent, xy, r, obs, norm, cmap, img_alpha)
            row[0].set_title(f"{gene} observed", fontsize=9)
        coll = draw_spots(row[1], bg, extent, xy, r, pred, norm, cmap, img_alpha)
        row[1].set_title(f"{gene} predicted{title_r}", fontsize=9)
        fig.colorbar(coll, cax=row[2], label="log1p (1e4 / spot)")
    fig.suptitle(f"{lay.name}: {pred_key}", fontsize=10)
    fig.tight_layout()
    return finish(fig, show=show, save=save, return_fig=return_fig, axes=list(axes[:, :2].ravel()))


def _label_top(ax: Axes, top: pd.Series) -> None:
    """Name the best genes in a column beside their points, each joined to its point by a thin line.

    The best genes sit at neighbouring ranks with similar r, so labels next to the points would pile on
    each other; a column of evenly spaced labels never overlaps.
    """
    n = len(top)
    if not n:
        return
    # Top right is empty: the points fall from the top left, and the legend sits bottom left.
    step = min(0.06, 0.5 / n)
    for i, (gene, value) in enumerate(top.items()):
        ax.annotate(
            gene,
            xy=(i + 1, value),
            xycoords="data",
            xytext=(0.62, 0.95 - i * step),
            textcoords="axes fraction",
            fontsize=7,
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5", "shrinkA": 1, "shrinkB": 2},
        )


@renamed_arguments(n_top="n_top_genes")
def gene_pcc(
    sdata_or_table: SpatialData | AnnData,
    *,
    key: str = "comtip_pcc",
    n_top_genes: int = 10,
    table_key: str = TABLE_KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Ranked per-gene Pearson correlation of predicted vs observed expression.

    Every evaluated gene is a dot at its rank (best first); the ``n_top_genes`` best are labelled and a dashed
    line marks their mean over all genes (the PCC-ALL of :func:`comtip_sc.tl.evaluate`).

    Parameters
    ----------
    sdata_or_table
        SpatialData (its ``table_key`` table) or AnnData scored by :func:`comtip_sc.tl.evaluate`.
    key
        ``var`` column with the per-gene Pearson correlation (``evaluate``'s ``key_added``). Genes with
        NaN there were not evaluated and are left out.
    n_top_genes
        Number of best genes labelled with their names (formerly ``n_top``).
    table_key
        Table of a SpatialData.
    ax
        Axes to draw into; ``None`` makes a new figure.
    show, save, return_fig
        As in scanpy: show the figure, save it to a path, return the figure, or (``show=False``) return
        the axes and leave the figure open.

    Returns
    -------
    The figure when ``return_fig`` is true; with ``show=False`` the axes, the figure left open; else
    ``None``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cs.tl.evaluate(sdata, pred_key="comtip_pred", key_added="comtip_pcc")  # doctest: +SKIP
    >>> cs.pl.gene_pcc(sdata, n_top_genes=5)  # doctest: +SKIP

    """
    table = get_table(sdata_or_table, table_key)
    if key not in table.var:
        raise KeyError(f"var[{key!r}] is missing; run cs.tl.evaluate(..., key_added={key!r}) first.")
    r = pd.to_numeric(table.var[key], errors="coerce").dropna().sort_values(ascending=False)
    if r.empty:
        raise ValueError(f"var[{key!r}] holds no evaluated gene (all NaN).")
    owned = ax is None
    if owned:
        _, ax = plt.subplots(figsize=(max(4.0, min(10.0, 2.5 + 0.05 * len(r))), 3.6))
    rank = np.arange(1, len(r) + 1)
    ax.scatter(rank, r.to_numpy(), s=12, c=r.to_numpy(), cmap="coolwarm", vmin=-1, vmax=1, zorder=2)
    ax.axhline(float(r.mean()), ls="--", lw=1, c="0.3", label=f"mean r = {r.mean():.3f}")
    ax.axhline(0.0, lw=0.5, c="0.6")
    _label_top(ax, r.iloc[:n_top_genes])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("gene rank")
    ax.set_ylabel("Pearson r (predicted vs observed)")
    ax.set_title(f"{len(r)} genes, {key}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return finish_ax(ax, owned, show=show, save=save, return_fig=return_fig)
