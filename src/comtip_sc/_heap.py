"""Keep the memory that CPU forward passes free in the process's heap, for the next batch (glibc only).

glibc serves every block above its mmap threshold (32 MiB at most) from a fresh mapping and unmaps it when
it is freed. A batch's activations are such blocks (64 tiles of 128 px through EfficientNet-Lite0: up to
100 MB each), so each batch faults its activations in again, page by page: on a 2-core machine ~40% of the
CPU time of an image forward went to those page faults, and the cutting of tiles between forwards made it
worse. Inside :func:`keep_freed_memory` large blocks come from the heap and freed ones stay there for the
next batch; on leaving, the free memory goes back to the operating system.

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

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
#: Free memory at the top of the heap kept inside the block: more than one batch's activations.
_KEEP_BYTES = 1 << 30
#: What is set on leaving. Any mallopt call ends glibc's dynamic thresholds for good, and its defaults
#: (mmap above 128 KiB) would make every later allocation above 128 KiB fault afresh; these are the values
#: the dynamic thresholds reach by themselves once a process has freed a block of 32 MiB.
_LEAVE = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 64 * 2**20))
#: Environment variables through which a user tunes glibc's allocator: their settings are left alone.
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
#: Blocks open in this process (a process forked inside a block starts again from 0).
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
    """Whether :func:`keep_freed_memory` acts here.

    It does on glibc, unless the environment turns it off (``COMTIP_SC_KEEP_HEAP=0``) or tunes glibc's
    allocator itself (``MALLOC_*_`` variables, ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``).
    """
    if os.environ.get(KEEP_HEAP_ENV, "1") == "0" or any(v in os.environ for v in _USER_TUNING):
        return False
    return "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", "") and _glibc() is not None


def _leave(libc: ctypes.CDLL) -> None:
    for param, value in _LEAVE:
        libc.mallopt(param, value)
    libc.malloc_trim(0)


def _after_fork_in_child() -> None:
    # A loader worker forked inside a block would otherwise keep the setting for its whole life.
    global _depth, _lock
    _lock = threading.Lock()
    if _depth > 0:
        _depth = 0
        libc = _glibc()
        if libc is not None:
            _leave(libc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def keep_freed_memory(device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block, large CPU allocations come from the heap and freed ones stay for the next batch.

    Process-wide, as the C heap is; blocks nest. Processes forked inside a block (data-loader workers) go
    back to the settings used on leaving. On leaving the outermost block, glibc serves blocks above 32 MiB
    by fresh mappings again and the free memory goes back to the operating system (``malloc_trim``); its
    dynamic thresholds stay at 32 MiB (mmap) and 64 MiB (trim), the values they reach by themselves in a
    process that has freed a large block. Inside the block up to 1 GiB of free memory at the top of the
    heap stays with the process, and free stretches between objects still alive until they are reused.
    Such a stretch can outlive the block: its pages go back, but later allocations may reuse it, and what
    they free there stays until the heap is trimmed again (as after any large use of the heap).

    Parameters
    ----------
    device
        Where the forward passes run: anything but the CPU (and ``None``, the CPU) makes the block a no-op.
        So do a C library other than glibc, ``COMTIP_SC_KEEP_HEAP=0`` and the user's own tuning of glibc's
        allocator through the environment (``MALLOC_*_`` variables, ``glibc.malloc`` tunables).

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
            # A process forked inside the block has already put the limits back and counts no block.
            if _depth > 0:
                _depth -= 1
                if _depth == 0:
                    _leave(libc)
