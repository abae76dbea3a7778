"""Scanpy conventions shared by the tools: ``copy=`` semantics and the ``.uns["comtip"]`` record."""

from __future__ import annotations

import logging
from typing import Any

from anndata import AnnData
from spatialdata import SpatialData

from .._constants import UNS_KEY
from .._tables import get_table, with_tables

log = logging.getLogger(__name__)


def target(sdata: SpatialData, table_key: str, copy: bool) -> tuple[SpatialData, AnnData]:
    """The object to write into and its table.

    With ``copy=True`` a new SpatialData is returned whose tables are copies and whose images and
    shapes are the caller's elements (they are only read, and images can be whole slides).
    """
    table = get_table(sdata, table_key)
    if not copy:
        return sdata, table
    new = with_tables(sdata, {k: v.copy() for k, v in sdata.tables.items()})
    return new, new.tables[table_key]


def record(table: AnnData, tool: str, key: str, entry: dict[str, Any]) -> None:
    """Store what one call of ``tool`` wrote under ``key`` in ``table.uns["comtip"][tool][key]`` and log it.

    Each output key has its own record, so a second call with another ``key_added`` keeps the first's.
    """
    uns = table.uns.setdefault(UNS_KEY, {})
    if not isinstance(uns.get(tool), dict):
        uns[tool] = {}
    uns[tool][key] = entry
    log.info(
        "comtip: %s -> %s: %s",
        tool,
        key,
        ", ".join(f"{k}={v}" for k, v in entry.items() if not isinstance(v, dict | list)),
    )
