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
#: Below it.
SMALL = 8 * 2**20


def faults(repeats: int, size: int = BLOCK) -> float:
    """Page faults per allocation, fill and free of a ``size``-byte tensor, over ``repeats``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        x = torch.ones(size // 4)
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


def in_forked_child() -> float:
    """Page faults per 4-block tensor in a process forked now, as a data-loader worker is.

    Larger than any free stretch the child inherits from this heap, which it could otherwise reuse.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)  # OpenMP's threads do not survive a fork (loader workers do the same)
        faults(1, 4 * BLOCK)
        os.write(write, json.dumps(faults(3, 4 * BLOCK)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return json.loads(f.read())


def main() -> None:
    device = sys.argv[1]
    out = {"outside": faults(4)}
    # Blocks under 32 MiB after a block: reused from the heap, as glibc's dynamic threshold would have them.
    with keep_freed_memory(device):
        pass
    faults(1, SMALL)
    out["small_after"] = faults(4, SMALL)
    base = resident()
    with keep_freed_memory(device):
        faults(2)  # the heap grows to hold a block (alignment may take a second one)
        out["inside"] = faults(8)
        out["forked"] = in_forked_child()
        with keep_freed_memory(device):
            hold_and_free()
        out["inner_left"] = resident() - base
    out["left"] = resident() - base
    print(json.dumps(out))


if __name__ == "__main__":
    main()
