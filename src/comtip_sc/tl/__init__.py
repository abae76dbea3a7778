"""Tools: training, embedding, clustering, prediction and evaluation."""

from .._predictions import predictions_adata
from ._clusters import embedding_clusters
from ._embed import comtip_embed
from ._evaluate import evaluate, pearson_per_gene
from ._fit import fit
from ._predict import comtip_predict

__all__ = [
    "comtip_embed",
    "comtip_predict",
    "embedding_clusters",
    "evaluate",
    "fit",
    "pearson_per_gene",
    "predictions_adata",
]
