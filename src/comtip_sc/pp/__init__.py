"""Preprocessing: gene panel, normalisation, spot filtering, section splits, bin pooling and physical-size tiles."""

from .._sections import resolve_sections, spot_layout
from .._tables import normalized_values
from ._colour_stats import colour_features, colour_stats, zscore_per_section
from ._context import ContextTiles
from ._feature_cache import CachedTokens, cache_trunk_tokens
from ._genes import filter_spots, normalize, select_genes
from ._pseudo_spots import aggregate_bins
from ._subset import subset_sections
from ._tile_cache import CachedTiles, cache_tiles
from ._tiles import SpotTiles, extract_tiles

__all__ = [
    "CachedTiles",
    "CachedTokens",
    "ContextTiles",
    "SpotTiles",
    "aggregate_bins",
    "cache_tiles",
    "cache_trunk_tokens",
    "colour_features",
    "colour_stats",
    "extract_tiles",
    "filter_spots",
    "normalize",
    "normalized_values",
    "resolve_sections",
    "select_genes",
    "spot_layout",
    "subset_sections",
    "zscore_per_section",
]
