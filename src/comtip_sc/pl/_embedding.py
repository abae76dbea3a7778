"""UMAP of the CoMTIP image embedding, coloured by section and cluster, with scanpy's own tools."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from spatialdata import SpatialData

from .._constants import EMBED_KEY, TABLE_KEY
from .._tables import get_table
from ._maps import finish_ax
from ._utils import finish

#: scanpy's default keys: what ``sc.pp.neighbors`` / ``sc.tl.umap`` / ``sc.tl.leiden`` write and read.
_NEIGHBORS, _UMAP, _LEIDEN = "neighbors", "X_umap", "leiden"


def _has_graph(table: AnnData, use_rep: str) -> bool:
    """Whether the table already holds a neighbour graph built on ``use_rep``."""
    params = table.uns.get(_NEIGHBORS, {}).get("params", {})
    conn = table.uns.get(_NEIGHBORS, {}).get("connectivities_key", "connectivities")
    return params.get("use_rep") == use_rep and conn in table.obsp


def _light_copy(table: AnnData, use_rep: str) -> AnnData:
    """A table to compute on that shares the (possibly large) X and layers and copies the small parts.

    Only obs, obsm, obsp and uns are written by neighbors / umap / leiden / plotting, so those are
    copied; X, layers and var are shared read-only, as colouring by a gene only reads them.
    """
    obsm = {k: table.obsm[k] for k in (use_rep, _UMAP) if k in table.obsm}
    return AnnData(
        X=table.X,
        obs=table.obs.copy(),
        var=table.var.copy(),
        obsm=obsm,
        obsp={k: v.copy() for k, v in table.obsp.items()},
        layers=dict(table.layers),
        uns={
            k: v
            for k, v in table.uns.items()
            if k == _NEIGHBORS or k.endswith("_colors")  # reuse the graph and the user's palettes
        },
    )


def _leiden(adata: AnnData, resolution: float, random_state: int) -> None:
    """Leiden clustering with the igraph implementation when installed, else leidenalg."""
    if importlib.util.find_spec("igraph") is not None:
        sc.tl.leiden(
            adata,
            resolution=resolution,
            random_state=random_state,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
    elif importlib.util.find_spec("leidenalg") is not None:
        sc.tl.leiden(adata, resolution=resolution, random_state=random_state, flavor="leidenalg")
    else:
        raise ImportError(
            "Leiden clustering needs the 'igraph' package (pip install igraph); or drop 'leiden' from color."
        )


def embedding(
    sdata: SpatialData | AnnData,
    *,
    use_rep: str = EMBED_KEY,
    color: str | Sequence[str] = ("sample", "leiden"),
    table_key: str = TABLE_KEY,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    random_state: int = 0,
    inplace: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Figure | Axes | None:
    """UMAP of the spots' CoMTIP embedding, one panel per ``color`` (by default section and cluster).

    What is missing is computed with scanpy's own functions: ``sc.pp.neighbors(use_rep=use_rep)``,
    ``sc.tl.umap`` and, when ``"leiden"`` is asked for and ``obs["leiden"]`` is absent,
    ``sc.tl.leiden`` (igraph flavour). A UMAP already in the table is reused when its neighbour graph
    was built on ``use_rep`` (``uns["neighbors"]["params"]["use_rep"]``), as after
    ``sc.pp.neighbors(table, use_rep="X_comtip"); sc.tl.umap(table)``.

    Where results go: with ``inplace=False`` (default) everything is computed on a light copy of the
    table and discarded, so the user's table is left exactly as it was. With ``inplace=True`` they are
    kept in the table under scanpy's default keys: ``uns["neighbors"]``, ``obsp["distances"]``,
    ``obsp["connectivities"]``, ``obsm["X_umap"]``, ``uns["umap"]``, ``obs["leiden"]``,
    ``uns["leiden"]`` and the palettes ``uns["<color>_colors"]`` (an existing graph on another
    representation is replaced).

    Parameters
    ----------
    sdata
        SpatialData (its ``table_key`` table) or AnnData with ``obsm[use_rep]``.
    use_rep
        ``obsm`` key of the embedding (written by :func:`comtip_sc.tl.comtip_embed`).
    color
        ``obs`` column(s) or gene(s) to colour by; ``"leiden"`` is computed when absent.
    table_key
        Table of a SpatialData.
    n_neighbors
        Neighbours of the kNN graph.
    resolution
        Leiden resolution.
    random_state
        Seed of UMAP and Leiden.
    inplace
        Keep the computed graph, UMAP and clusters in the table (see above).
    ax
        Axes to draw a single ``color`` into.
    show, save, return_fig
        As in scanpy. With ``ax`` given and ``show=False`` the axes are returned.
    **kwargs
        Passed to :func:`scanpy.pl.umap` (e.g. ``legend_loc``, ``palette``, ``layer``, ``size``).

    Returns
    -------
    The figure when ``return_fig`` is true; the axes when ``ax`` was given and ``show=False``; else ``None``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cs.tl.comtip_embed(sdata, model)  # doctest: +SKIP
    >>> cs.pl.embedding(sdata, color=["sample", "leiden"])  # doctest: +SKIP
    >>> cs.pl.embedding(sdata, inplace=True, show=False)  # doctest: +SKIP
    >>> sdata.tables["table"].obs["leiden"].value_counts()  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    colors = [color] if isinstance(color, str) else list(color)
    if not colors:
        raise ValueError("color is empty; name at least one obs column or gene.")
    if use_rep not in table.obsm:
        raise KeyError(
            f"obsm[{use_rep!r}] is missing (obsm: {list(table.obsm.keys())}); run cs.tl.comtip_embed first."
        )
    unknown = [c for c in colors if c != _LEIDEN and c not in table.obs and c not in table.var_names]
    if unknown:
        raise KeyError(f"color {unknown} are neither obs columns nor genes of the table.")
    if ax is not None and len(colors) > 1:
        raise ValueError(f"ax= takes one panel but color has {len(colors)}; pass a single color.")

    has_graph = _has_graph(table, use_rep)
    need_umap = not (has_graph and _UMAP in table.obsm)
    need_leiden = _LEIDEN in colors and _LEIDEN not in table.obs
    work = table if inplace else _light_copy(table, use_rep)
    if (need_umap or need_leiden) and not has_graph:
        sc.pp.neighbors(work, use_rep=use_rep, n_neighbors=min(n_neighbors, work.n_obs - 1))
    if need_umap:
        sc.tl.umap(work, random_state=random_state)
    if need_leiden:
        _leiden(work, resolution, random_state)

    title = [f"{c} ({use_rep})" for c in colors]
    if ax is not None:
        sc.pl.umap(work, color=colors[0], ax=ax, show=False, title=title[0], **kwargs)
        return finish_ax(ax, False, show=show, save=save, return_fig=return_fig)
    fig = sc.pl.umap(work, color=colors, show=False, return_fig=True, title=title, **kwargs)
    if not isinstance(fig, Figure):  # older scanpy returned axes for a single panel
        fig = plt.gcf()
    return finish(fig, show=show, save=save, return_fig=return_fig)
