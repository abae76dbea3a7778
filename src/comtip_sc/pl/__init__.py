"""Plotting: tile montages, observed vs predicted maps, embeddings."""

from ._tiles import tiles

__all__ = ["tiles"]
