"""The keys and defaults of the package (table and element names, ``obs``/``obsm``/``uns`` keys, tile sizes).

They are defined once, in the package's private ``_constants`` module; this module is their public face for
code that builds on ``comtip_sc`` (scripts, the benchmark harness).

Examples
--------
>>> from comtip_sc.constants import EMBED_KEY, TABLE_KEY
>>> TABLE_KEY, EMBED_KEY
('table', 'X_comtip')

"""

from ._constants import (
    CLUSTER_KEY,
    DEFAULT_TILE_PX,
    DEFAULT_TILE_UM,
    EMBED_BATCH_CPU,
    EMBED_BATCH_GPU,
    EMBED_KEY,
    GROUP_KEYS,
    KEEP_HEAP_ENV,
    NORM_LAYER,
    NORM_TARGET_SUM,
    PANEL_KEY,
    PRED_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SPATIAL_KEY,
    TABLE_KEY,
    UNS_KEY,
)

__all__ = [
    "CLUSTER_KEY",
    "DEFAULT_TILE_PX",
    "DEFAULT_TILE_UM",
    "EMBED_BATCH_CPU",
    "EMBED_BATCH_GPU",
    "EMBED_KEY",
    "GROUP_KEYS",
    "KEEP_HEAP_ENV",
    "NORM_LAYER",
    "NORM_TARGET_SUM",
    "PANEL_KEY",
    "PRED_KEY",
    "REGION_KEY",
    "SAMPLE_KEY",
    "SPATIAL_KEY",
    "TABLE_KEY",
    "UNS_KEY",
]
