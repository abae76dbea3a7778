"""Preprocessing: gene panel, normalisation, spot filtering and physical-size tiles."""

from ._genes import filter_spots, normalize, select_genes
from ._tile_cache import CachedTiles, cache_tiles
from ._tiles import SpotTiles, extract_tiles

__all__ = [
    "CachedTiles",
    "SpotTiles",
    "cache_tiles",
    "extract_tiles",
    "filter_spots",
    "normalize",
    "select_genes",
]
