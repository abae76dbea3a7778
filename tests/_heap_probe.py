"""Page faults and resident memory around ``keep_freed_memory``, in a fresh process (run as a script).

A process's heap keeps the shape its past allocations gave it, so each scenario of tests/test_heap.py
runs here from a clean start. argv: the device passed to ``keep_freed_memory``. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import torch

from comtip_sc.model import keep_freed_memory

#: Above glibc's largest mmap threshold (32 MiB): by default mapped afresh and unmapped on free.
BLOCK = 64 * 2**20


def faults(repeats: int) -> float:
    """Page faults per allocation, fill and free of a ``BLOCK``-sized tensor, over ``repeats``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        x = torch.ones(BLOCK // 4)
        del x
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def resident() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hold_and_free(n: int = 4) -> None:
    """``n`` blocks held together, then freed."""
    held = [torch.ones(BLOCK // 4) for _ in range(n)]
    del held


def main() -> None:
    device = sys.argv[1]
    out = {"outside": faults(4)}
    base = resident()
    with keep_freed_memory(device):
        faults(2)  # the heap grows to hold a block (alignment may take a second one)
        out["inside"] = faults(8)
        with keep_freed_memory(device):
            hold_and_free()
        out["inner_left"] = resident() - base
    out["left"] = resident() - base
    print(json.dumps(out))


if __name__ == "__main__":
    main()
