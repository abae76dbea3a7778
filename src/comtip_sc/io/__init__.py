"""Readers that turn platform output into SpatialData objects laid out as in ``docs/data_layout.md``, and a crash-safe table writer."""

from __future__ import annotations

from .._atomic import atomic_path
from .._store import write_table
from ._hest import read_hest
from ._legacy_st import read_legacy_st
from ._spatialdata_io import from_visium_hd, from_xenium, read_visium_hd, read_xenium

__all__ = [
    "atomic_path",
    "from_visium_hd",
    "from_xenium",
    "read_hest",
    "read_legacy_st",
    "read_visium_hd",
    "read_xenium",
    "write_table",
]
