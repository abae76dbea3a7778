"""``cs.tl.embedding_clusters``: neighbour graph, UMAP and Leiden domains of the image embedding (scanpy)."""

from __future__ import annotations

import scanpy as sc
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import CLUSTER_KEY, EMBED_KEY, TABLE_KEY
from .._tables import get_table
from ._utils import record, target


def embedding_clusters(
    sdata: SpatialData | AnnData,
    *,
    use_rep: str = EMBED_KEY,
    key_added: str = CLUSTER_KEY,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    random_state: int = 0,
    table_key: str = TABLE_KEY,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """Cluster the spots on their CoMTIP embedding and lay them out with UMAP, with scanpy's own tools.

    Runs :func:`scanpy.pp.neighbors` on ``obsm[use_rep]``, :func:`scanpy.tl.umap` and
    :func:`scanpy.tl.leiden` (igraph flavour). The graph and the UMAP are stored under keys derived from
    ``use_rep``, so they never replace scanpy's defaults (``uns["neighbors"]``, ``obsm["X_umap"]``) that
    a gene-expression analysis of the same table may hold.

    Parameters
    ----------
    sdata
        SpatialData (its ``table_key`` table) or AnnData with ``obsm[use_rep]``.
    use_rep
        ``obsm`` key of the embedding (written by :func:`comtip_embed`).
    key_added
        ``obs`` column of the Leiden clusters (categorical).
    n_neighbors
        Neighbours of the kNN graph (at most the number of spots minus one).
    resolution
        Leiden resolution; higher gives more, smaller clusters.
    random_state
        Seed of the graph, UMAP and Leiden.
    table_key
        Table of a SpatialData.
    copy
        Return a new object instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the new object when ``copy=True``. Writes ``obs[key_added]``; the graph to
    ``uns[use_rep + "_neighbors"]`` with ``obsp[use_rep + "_neighbors_distances"]`` and
    ``obsp[use_rep + "_neighbors_connectivities"]``; the UMAP to ``obsm[use_rep + "_umap"]``
    (``"X_comtip_umap"`` by default, what :func:`comtip_sc.pl.embedding` draws); the settings to
    ``uns["comtip"]["embedding_clusters"][key_added]``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> cs.tl.comtip_embed(sdata, model)  # doctest: +SKIP
    >>> cs.tl.embedding_clusters(sdata, resolution=0.5)  # doctest: +SKIP
    >>> cs.pl.embedding(sdata, color=["sample", "comtip_leiden"])  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    if use_rep not in table.obsm:
        raise KeyError(
            f"obsm[{use_rep!r}] is missing (obsm: {list(table.obsm.keys())}); run cs.tl.comtip_embed first."
        )
    if table.n_obs < 3:
        raise ValueError(f"Clustering needs at least 3 spots; the table has {table.n_obs}.")
    if isinstance(sdata, AnnData):
        out = sdata.copy() if copy else sdata
        table = out
    else:
        out, table = target(sdata, table_key, copy)
    graph, umap = f"{use_rep}_neighbors", f"{use_rep}_umap"
    sc.pp.neighbors(
        table,
        use_rep=use_rep,
        n_neighbors=min(n_neighbors, table.n_obs - 1),
        random_state=random_state,
        key_added=graph,
    )
    sc.tl.umap(table, random_state=random_state, neighbors_key=graph, key_added=umap)
    sc.tl.leiden(
        table,
        resolution=resolution,
        random_state=random_state,
        key_added=key_added,
        neighbors_key=graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    record(
        table,
        "embedding_clusters",
        key_added,
        {
            "use_rep": use_rep,
            "neighbors_key": graph,
            "umap_key": umap,
            "n_neighbors": int(min(n_neighbors, table.n_obs - 1)),
            "resolution": float(resolution),
            "random_state": int(random_state),
            "n_clusters": int(table.obs[key_added].nunique()),
        },
    )
    return out if copy else None
