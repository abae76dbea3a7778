"""Freed CPU memory kept in the heap during forward passes, and handed back afterwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import comtip_sc as cs
from comtip_sc import _heap
from comtip_sc._heap import heap_keeping_available
from comtip_sc.constants import KEEP_HEAP_ENV


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(
        not heap_keeping_available(), reason="glibc, with its allocator not tuned by the user"
    ),
    pytest.mark.skipif("LD_PRELOAD" in os.environ, reason="another allocator may be preloaded"),
    # Huge pages (PyTorch's switch, or the kernel's for every mapping) map large tensors in 2 MiB pages:
    # far fewer faults to count.
    pytest.mark.skipif(
        "THP_MEM_ALLOC_ENABLE" in os.environ or _huge_pages_always(), reason="huge pages hide the page faults"
    ),
]

PROBE = Path(__file__).with_name("_heap_probe.py")
#: 4 KiB pages of one 64 MiB block and of one 8 MiB block, and the 256 MiB the probe holds and frees.
PAGES = 64 * 2**20 // 4096
SMALL_PAGES = 8 * 2**20 // 4096
HELD = 256 * 2**20


def probe(device: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(PROBE), device],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_reused_inside_and_returned_on_leaving():
    r = probe("cpu")
    # glibc's default: every block mapped afresh and faulted in page by page.
    assert r["outside"] > 0.9 * PAGES
    # Inside: the memory of the block before is reused (an odd block may still land on fresh pages).
    assert r["inside"] < PAGES / 4
    # A process forked inside (a loader worker) is back to mapping such blocks afresh.
    assert r["forked"] > 0.9 * 4 * PAGES
    # Leaving an inner block keeps the outer one's memory; leaving the outer one hands it back.
    assert r["inner_left"] > 0.75 * HELD
    assert r["left"] < HELD / 4
    # After leaving, blocks under 32 MiB are reused from the heap, as glibc would do by itself.
    assert r["small_after"] < SMALL_PAGES / 2


@pytest.mark.parametrize(("device", "env"), [("cuda", {}), ("cpu", {KEEP_HEAP_ENV: "0"})])
def test_no_change_for_other_devices_or_when_turned_off(device, env):
    r = probe(device, **env)
    assert r["inside"] > 0.9 * PAGES
    assert r["inner_left"] < HELD / 4


class RecordingLibc:
    """Stands in for glibc's allocator calls: records them, changes nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


@pytest.fixture
def recorded(monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(_heap, "_glibc", lambda: libc)
    return libc.calls


def _kept(calls) -> bool:
    """Whether the calls set the heap up (mmap off) and then put it back (trim on leaving)."""
    return ("mallopt", -4, 0) in calls and calls[-1][0] == "malloc_trim"


def test_embedding_and_token_caching_keep_the_heap_with_the_same_result(
    tiny_model, frozen_cnn_config, recorded, tmp_path, monkeypatch
):
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=12, seed=0)
    kept = tiny_model.encode_images(tiny_model.tiles(sdata), batch_size=8)
    assert _kept(recorded)
    recorded.clear()
    monkeypatch.setenv(KEEP_HEAP_ENV, "0")
    default = tiny_model.encode_images(tiny_model.tiles(sdata), batch_size=8)
    assert recorded == []
    np.testing.assert_array_equal(kept, default)
    monkeypatch.delenv(KEEP_HEAP_ENV)
    vision = cs.model.build_vision(frozen_cnn_config())
    tiles = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=64)
    cs.pp.cache_trunk_tokens(tiles, vision, tmp_path / "tok.zarr", mean=(0.5,) * 3, std=(0.25,) * 3, views=2)
    assert _kept(recorded)


def test_fit_keeps_the_heap_on_the_cpu_only(tiny_config, recorded, fit_quiet):
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=12, seed=0)
    fit_quiet(sdata, tiny_config, max_epochs=1, accelerator="cpu")
    assert _kept(recorded)
    # Entered once by the runner: the bank built inside it nests and does not put the heap back early.
    assert [c[0] for c in recorded].count("malloc_trim") == 1
