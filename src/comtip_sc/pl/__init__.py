"""Plotting: tile montages, observed vs predicted maps, embeddings."""

from ._embedding import embedding
from ._maps import gene_pcc, predicted_vs_observed
from ._tiles import tiles

__all__ = ["embedding", "gene_pcc", "predicted_vs_observed", "tiles"]
