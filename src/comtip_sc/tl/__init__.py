"""Tools: training, embedding, clustering, prediction and evaluation."""

from .._predictions import predictions_adata
from ._auto import AUTO_CANDIDATES, format_auto
from ._clusters import embedding_clusters
from ._colour_bar import ColourBar, ColourBarFit, colour_bar, colour_bar_predict
from ._embed import comtip_embed
from ._evaluate import evaluate, pearson_per_gene
from ._fit import fit
from ._predict import comtip_predict
from ._ridge import ridge_cv, spatial_folds
from ._self_check import format_self_check, self_check

__all__ = [
    "AUTO_CANDIDATES",
    "ColourBar",
    "ColourBarFit",
    "colour_bar",
    "colour_bar_predict",
    "comtip_embed",
    "comtip_predict",
    "embedding_clusters",
    "evaluate",
    "fit",
    "format_auto",
    "format_self_check",
    "pearson_per_gene",
    "predictions_adata",
    "ridge_cv",
    "self_check",
    "spatial_folds",
]
