"""UMAP of the CoMTIP image embedding, coloured by section, cluster or gene, with scanpy's plotting."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from spatialdata import SpatialData

from .._constants import CLUSTER_KEY, SAMPLE_KEY, TABLE_KEY, UMAP_KEY
from .._tables import get_table
from ._utils import finish, finish_ax


def _plot_copy(table: AnnData, basis: str) -> AnnData:
    """A table to draw from that shares X, var and layers and copies obs and the palettes.

    scanpy's plotting writes palettes (``uns["<color>_colors"]``) and categorical conversions into what
    it draws; drawing a light copy leaves the user's table exactly as it was.
    """
    return AnnData(
        X=table.X,
        obs=table.obs.copy(),
        var=table.var,
        obsm={basis: table.obsm[basis]},
        layers=dict(table.layers),
        uns={k: v for k, v in table.uns.items() if k.endswith("_colors")},
    )


def embedding(
    sdata: SpatialData | AnnData,
    *,
    basis: str = UMAP_KEY,
    color: str | Sequence[str] = (SAMPLE_KEY, CLUSTER_KEY),
    table_key: str = TABLE_KEY,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Figure | Axes | None:
    """UMAP of the spots' CoMTIP embedding, one panel per ``color`` (by default section and cluster).

    Only draws: the layout and the clusters come from :func:`comtip_sc.tl.embedding_clusters` (or from
    scanpy directly: ``sc.pp.neighbors(table, use_rep="X_comtip"); sc.tl.umap(table)`` and
    ``basis="umap"``). Nothing is written into the table.

    Parameters
    ----------
    sdata
        SpatialData (its ``table_key`` table) or AnnData.
    basis
        ``obsm`` key of the 2-D layout (``"X_comtip_umap"``, written by ``embedding_clusters``).
    color
        ``obs`` column(s) or gene(s) to colour by.
    table_key
        Table of a SpatialData.
    ax
        Axes to draw a single ``color`` into.
    show, save, return_fig
        As in scanpy: show the figure, save it to a path, return the figure, or (``show=False``) return
        the axes and leave the figure open.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``legend_loc``, ``palette``, ``layer``, ``size``).

    Returns
    -------
    The figure when ``return_fig`` is true; with ``show=False`` the axes (one, or a list), the figure left
    open; else ``None``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cs.tl.comtip_embed(sdata, model)  # doctest: +SKIP
    >>> cs.tl.embedding_clusters(sdata)  # doctest: +SKIP
    >>> cs.pl.embedding(sdata, color=["sample", "comtip_leiden"])  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    colors = [color] if isinstance(color, str) else list(color)
    if not colors:
        raise ValueError("color is empty; name at least one obs column or gene.")
    if basis not in table.obsm:
        raise KeyError(
            f"obsm[{basis!r}] is missing (obsm: {list(table.obsm.keys())}); compute the layout first with "
            "cs.tl.embedding_clusters(sdata, use_rep='X_comtip'), which writes obsm['X_comtip_umap']."
        )
    unknown = [c for c in colors if c not in table.obs and c not in table.var_names]
    if unknown:
        raise KeyError(
            f"color {unknown} are neither obs columns nor genes of the table; cluster labels come from "
            f"cs.tl.embedding_clusters(sdata, key_added={unknown[0]!r})."
        )
    if ax is not None and len(colors) > 1:
        raise ValueError(f"ax= takes one panel but color has {len(colors)}; pass a single color.")

    work = _plot_copy(table, basis)
    title = [f"{c} ({basis})" for c in colors]
    if ax is not None:
        sc.pl.embedding(work, basis=basis, color=colors[0], ax=ax, show=False, title=title[0], **kwargs)
        return finish_ax(ax, False, show=show, save=save, return_fig=return_fig)
    # scanpy's default gap between panels (~0.2 of a panel's width) is narrower than a legend of section
    # names, which then runs into the next panel.
    kwargs.setdefault("wspace", 0.6)
    fig = sc.pl.embedding(work, basis=basis, color=colors, show=False, return_fig=True, title=title, **kwargs)
    if not isinstance(fig, Figure):  # older scanpy returned axes for a single panel
        fig = plt.gcf()
    return finish(fig, show=show, save=save, return_fig=return_fig)
