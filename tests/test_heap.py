"""Freed CPU memory kept in the heap during forward passes, and handed back afterwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import comtip_sc as cs
from comtip_sc._heap import heap_keeping_available
from comtip_sc.constants import KEEP_HEAP_ENV

pytestmark = [
    pytest.mark.skipif(not heap_keeping_available(), reason="glibc only"),
    # PyTorch's transparent-huge-page switch maps large tensors in 2 MiB pages: far fewer faults to count.
    pytest.mark.skipif("THP_MEM_ALLOC_ENABLE" in os.environ, reason="huge pages hide the page faults"),
]

PROBE = Path(__file__).with_name("_heap_probe.py")
#: 4 KiB pages of one 64 MiB block, and of the 256 MiB the probe holds and frees.
PAGES = 64 * 2**20 // 4096
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
    # Leaving an inner block keeps the outer one's memory; leaving the outer one hands it back.
    assert r["inner_left"] > 0.75 * HELD
    assert r["left"] < HELD / 4


@pytest.mark.parametrize(("device", "env"), [("cuda", {}), ("cpu", {KEEP_HEAP_ENV: "0"})])
def test_no_change_for_other_devices_or_when_turned_off(device, env):
    r = probe(device, **env)
    assert r["inside"] > 0.9 * PAGES
    assert r["inner_left"] < HELD / 4


def test_embedding_gives_the_same_result_either_way(tiny_config, monkeypatch):
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=12, seed=0)
    genes = [f"g{i}" for i in range(12)]
    network = cs.model.build_network(tiny_config, genes)
    model = cs.model.ComtipModel(network, panel=genes, tile_um=100, tile_px=tiny_config.tile_px)
    kept = model.encode_images(model.tiles(sdata), batch_size=8)
    monkeypatch.setenv(KEEP_HEAP_ENV, "0")
    default = model.encode_images(model.tiles(sdata), batch_size=8)
    np.testing.assert_array_equal(kept, default)
