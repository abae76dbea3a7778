"""Atomic writes: a file or folder appears complete at its final path, or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike, *, replace_existing: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into, then rename it over ``path``.

    The temporary file or folder lives in the same directory, so the final ``os.replace`` is a
    rename on one file system. If the block raises, the temporary is removed and ``path`` is left as
    it was. An existing ``path`` is replaced only once the new content is complete; with
    ``replace_existing=False`` a ``path`` that appeared meanwhile (another process wrote the same
    content first, e.g. every DDP rank building one tile cache) is kept and the new copy dropped.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.exists() and not replace_existing:
            return
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)
