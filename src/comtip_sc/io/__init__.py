"""Readers that turn platform output into SpatialData objects laid out as in ``docs/data_layout.md``, and a crash-safe table writer."""

from __future__ import annotations

from .._atomic import atomic_path
from .._store import write_table
from ._hest import read_hest
from ._legacy_st import read_legacy_st

__all__ = ["atomic_path", "read_hest", "read_legacy_st", "write_table"]
