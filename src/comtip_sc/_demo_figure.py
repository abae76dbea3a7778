"""The figure of ``comtip demo``: observed vs predicted expression and the embedding's clusters on the tissue."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a command writing a file, never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.patches import Patch

from ._atomic import atomic_path
from ._constants import CLUSTER_KEY, UMAP_KEY
from ._predictions import get_predictions
from ._tables import normalized_values
from .pl._layout import draw_spots, section_layout
from .tl._evaluate import pearson_per_gene

#: Resolution of the demo figure: readable, a few hundred kB.
DPI = 90


def most_variable(sdata, pred_key: str, table_key: str, n: int = 3) -> list[str]:
    """The ``n`` predicted genes whose observed values vary most: chosen without looking at the predictions."""
    table = sdata.tables[table_key]
    genes = [g for g in get_predictions(table, pred_key).columns if g in table.var_names]
    var = normalized_values(table, genes).var(axis=0)
    return [genes[i] for i in np.argsort(-var, kind="stable")[:n]]


def demo_figure(sdata, path: str | Path, *, genes: list[str], pred_key: str, table_key: str) -> Path:
    """Save observed (top) and predicted (bottom) maps of ``genes`` and the clusters on the tissue and UMAP."""
    table = sdata.tables[table_key]
    lay = section_layout(sdata, table, table_key=table_key)
    obs = normalized_values(table, genes)[lay.rows]
    pred = get_predictions(table, pred_key)[genes].to_numpy()[lay.rows]
    n = len(genes)
    fig, axes = plt.subplots(2, n + 1, figsize=(2.7 * (n + 1), 5.6), squeeze=False)
    for j, gene in enumerate(genes):
        lo, hi = float(min(obs[:, j].min(), pred[:, j].min())), float(max(obs[:, j].max(), pred[:, j].max()))
        norm = Normalize(lo, hi if hi > lo else lo + 1e-6)
        draw_spots(axes[0, j], lay.bg, lay.extent, lay.xy, lay.r, obs[:, j], norm, "viridis", 1.0)
        coll = draw_spots(axes[1, j], lay.bg, lay.extent, lay.xy, lay.r, pred[:, j], norm, "viridis", 1.0)
        r = float(pearson_per_gene(obs[:, [j]], pred[:, [j]])[0])
        axes[0, j].set_title(f"{gene} observed", fontsize=9)
        axes[1, j].set_title(f"{gene} predicted, r = {r:.2f}", fontsize=9)
        fig.colorbar(coll, ax=axes[:, j].tolist(), location="bottom", shrink=0.8, pad=0.04, label="log1p")
    clusters = table.obs[CLUSTER_KEY].astype("category")
    codes = clusters.cat.codes.to_numpy()
    k = len(clusters.cat.categories)
    cmap = ListedColormap(plt.get_cmap("tab20").colors[:k] if k > 10 else plt.get_cmap("tab10").colors[:k])
    norm = BoundaryNorm(np.arange(-0.5, k), k)
    draw_spots(axes[0, n], lay.bg, lay.extent, lay.xy, lay.r, codes[lay.rows], norm, cmap, 1.0)
    axes[0, n].set_title("embedding clusters", fontsize=9)
    umap = np.asarray(table.obsm[UMAP_KEY])
    axes[1, n].scatter(umap[:, 0], umap[:, 1], c=codes, cmap=cmap, norm=norm, s=8)
    axes[1, n].set(xticks=[], yticks=[], title="UMAP of the embedding")
    axes[1, n].title.set_fontsize(9)
    handles = [Patch(color=cmap(i), label=str(c)) for i, c in enumerate(clusters.cat.categories)]
    axes[1, n].legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=min(k, 5), fontsize=7
    )
    fig.suptitle(f"{lay.name}: the {n} most variable genes, observed vs predicted ({pred_key})", fontsize=10)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=DPI, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)
