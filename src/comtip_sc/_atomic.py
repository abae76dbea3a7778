"""Atomic writes: a file or folder appears complete at its final path, or not at all."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False``, having changed nothing, where the system or file system cannot do it; a reader then
    always sees one of the two contents at either path, never neither.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a").write_text("A"), (d / "b").write_text("B")
    >>> swapped = exchange(d / "a", d / "b")
    >>> (d / "a").read_text() == ("B" if swapped else "A")
    True

    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the folder ``new`` at ``path``, replacing the folder there, and remove the old content.

    Where the file system swaps atomically (:func:`exchange`), a process killed at any moment leaves ``path``
    holding the old or the new content. Elsewhere the old folder is moved aside first, so for an instant
    ``path`` is absent (never half-written).
    """
    new, path = Path(new), Path(path)
    if exchange(new, path):
        _remove(new)  # it now holds the old content
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    os.replace(new, path)
    _remove(old)


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
            # os.replace cannot replace a non-empty folder.
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)
