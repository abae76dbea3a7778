"""Write a table back into the zarr store that backs a SpatialData, so that a killed process loses nothing.

spatialdata cannot overwrite an element inside the store it is backed by (``write_element`` refuses), and
deleting then rewriting it loses the table when the process dies in between. Here the table is written
into a scratch store beside the target, swapped into place in one rename, and the store's consolidated
metadata is dropped before the swap and rebuilt after it: at every instant the store reads back with the
previous table or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from pathlib import Path

import zarr
from spatialdata import SpatialData

from ._atomic import _remove, atomic_path, replace_dir
from ._constants import TABLE_KEY
from ._tables import get_table

logger = logging.getLogger(__name__)


def store_path(sdata: SpatialData) -> Path:
    """The local zarr folder backing ``sdata``, writable, or a clear error.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> store_path(cs.datasets.toy_tissue(n_rows=2, n_cols=2, n_genes=11))
    Traceback (most recent call last):
    ...
    ValueError: This SpatialData is not backed by a zarr store (sdata.path is None); ...

    """
    if sdata.path is None:
        raise ValueError(
            "This SpatialData is not backed by a zarr store (sdata.path is None); write it once with "
            "sdata.write(path) or read it with spatialdata.read_zarr(path)."
        )
    path = Path(sdata.path)
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise ValueError(f"{path} (sdata.path) is not a local zarr store.")
    for folder in (path, path / "tables", path.parent):
        # Permission bits too: a store made read-only (chmod a-w) is meant to stay so, also for root.
        if folder.exists() and (
            not os.access(folder, os.W_OK | os.X_OK) or not folder.stat().st_mode & 0o222
        ):
            raise PermissionError(
                f"The zarr store {path} is read-only here ({folder} is not writable); nothing was written. "
                "Write to a copy (sdata.write(new_path)) or pass write=False."
            )
    return path


def _drop_consolidated(path: Path) -> bool:
    """Remove the consolidated metadata of the store at ``path`` (atomically); whether it had any."""
    v2 = path / ".zmetadata"
    if v2.is_file():
        v2.unlink()
        return True
    root = path / "zarr.json"
    meta = json.loads(root.read_text())
    if meta.get("consolidated_metadata") is None:
        return False
    meta.pop("consolidated_metadata")
    with atomic_path(root) as tmp:
        tmp.write_text(json.dumps(meta))
    return True


def write_table(sdata: SpatialData, table_key: str = TABLE_KEY) -> None:
    """Write ``sdata.tables[table_key]`` into the zarr store backing ``sdata``, replacing the stored table.

    The table is written completely into a scratch store beside the target store and then swapped into
    place in one rename, so a process killed at any moment leaves the store readable with the previous
    table or the new one, never a mixture. Consolidated metadata is rebuilt when the store had it.

    Parameters
    ----------
    sdata
        A SpatialData backed by a local zarr store (``sdata.path``).
    table_key
        The table to write.

    Examples
    --------
    >>> import comtip_sc as cs, spatialdata as sd, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.zarr")
    >>> cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=11).write(path)
    >>> sdata = sd.read_zarr(path)
    >>> sdata.tables["table"].obs["seen"] = True
    >>> write_table(sdata)
    >>> bool(sd.read_zarr(path).tables["table"].obs["seen"].all())
    True

    """
    path = store_path(sdata)
    table = get_table(sdata, table_key)
    target = path / "tables" / table_key
    scratch = path.with_name(f".{path.name}.{table_key}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with warnings.catch_warnings():
            # The scratch store holds the table alone: that it annotates shapes it lacks is expected.
            warnings.filterwarnings("ignore", message=".*which is not present in the SpatialData")
            SpatialData(tables={table_key: table}).write(scratch, consolidate_metadata=False)
        new = scratch / "tables" / table_key
        had_consolidated = _drop_consolidated(path)
        if target.exists():
            replace_dir(new, target)
        else:
            target.parent.mkdir(exist_ok=True)
            if not (target.parent / "zarr.json").is_file() and not (target.parent / ".zgroup").is_file():
                zarr.open_group(str(path), mode="r+", use_consolidated=False).require_group("tables")
            os.replace(new, target)
        if had_consolidated:
            # zarr writes each metadata file to a temporary name and renames it into place.
            sdata.write_consolidated_metadata()
    finally:
        _remove(scratch)
    logger.info("Wrote table %r to %s.", table_key, target)
