"""Keep the memory that CPU forward passes free in the process's heap, for the next batch (glibc only).

glibc serves every block above its mmap threshold (32 MiB at most) from a fresh mapping and unmaps it when
it is freed. A batch's activations are such blocks (64 tiles of 128 px through EfficientNet-Lite0: up to
100 MB each), so each batch faults its activations in again, page by page: on a 2-core machine ~40% of the
CPU time of an image forward went to those page faults, and the cutting of tiles between forwards made it
worse. Inside :func:`keep_freed_memory` large blocks come from the heap and freed ones stay there for the
next batch; on leaving, glibc's defaults return and the free memory goes back to the operating system.

Measured with ``python benchmarks/throughput.py`` (stage a runs once with and once without).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch

from ._constants import KEEP_HEAP_ENV

# mallopt parameters and glibc's defaults for them (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Free memory at the top of the heap kept inside the block: more than one batch's activations.
_KEEP_BYTES = 1 << 30

_lock = threading.Lock()
_depth = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library's ``mallopt`` and ``malloc_trim``, or ``None`` on another C library or system."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def heap_keeping_available() -> bool:
    """Whether :func:`keep_freed_memory` changes anything here (glibc, and not turned off by the environment)."""
    return os.environ.get(KEEP_HEAP_ENV, "1") != "0" and _glibc() is not None


@contextmanager
def keep_freed_memory(device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block, large CPU allocations come from the heap and freed ones stay for the next batch.

    A no-op for a non-CPU ``device``, outside glibc (macOS, Windows, musl) and when the environment variable
    ``COMTIP_SC_KEEP_HEAP`` is ``"0"``. Blocks nest; the outermost one, on leaving, restores glibc's
    default limits (its dynamic mmap threshold stays where it stood, as after any ``mallopt``) and hands the
    free memory back to the operating system (``malloc_trim``). Up to 1 GiB of free memory may stay with
    the process inside the block. Process-wide, as the C heap is: loader processes forked inside the block
    keep the setting. Where objects still alive sit above the freed memory, the heap cannot shrink: its
    pages go back, but later large allocations may reuse that stretch, and what they free there stays
    with the process until the heap is trimmed again (as after any large use of the heap).

    Examples
    --------
    >>> import torch
    >>> from comtip_sc.model import keep_freed_memory
    >>> with keep_freed_memory("cpu"):
    ...     y = torch.ones(64, 32, 64, 64).sum()

    """
    libc = _glibc() if heap_keeping_available() else None
    if libc is None or torch.device(device or "cpu").type != "cpu":
        yield
        return
    global _depth
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
