"""Freed CPU memory kept in the heap during forward passes, and glibc's defaults back afterwards."""

import os
import resource

import numpy as np
import pytest
import torch

import comtip_sc as cs
from comtip_sc._heap import heap_keeping_available
from comtip_sc.constants import KEEP_HEAP_ENV
from comtip_sc.model import keep_freed_memory

pytestmark = [
    pytest.mark.skipif(not heap_keeping_available(), reason="glibc only"),
    # PyTorch's transparent-huge-page switch maps large tensors in 2 MiB pages: far fewer faults to count.
    pytest.mark.skipif("THP_MEM_ALLOC_ENABLE" in os.environ, reason="huge pages hide the page faults"),
]

#: Above glibc's largest mmap threshold (32 MiB): by default mapped afresh and unmapped on free.
BLOCK = 64 * 2**20
PAGES = BLOCK // 4096


def faults_per_block(repeats: int = 3) -> float:
    """Page faults of allocating, filling and freeing a large tensor, per repeat (after one warm-up)."""
    x = torch.ones(BLOCK // 4)
    del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        x = torch.ones(BLOCK // 4)
        del x
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def test_freed_blocks_reused_inside_and_defaults_back_outside():
    assert faults_per_block() > PAGES / 2
    with keep_freed_memory("cpu"):
        assert faults_per_block() < PAGES / 20
        with keep_freed_memory():
            assert faults_per_block() < PAGES / 20
        # Leaving an inner block keeps the outer one's setting.
        assert faults_per_block() < PAGES / 20
    assert faults_per_block() > PAGES / 2


def test_no_change_for_other_devices_or_when_turned_off(monkeypatch):
    with keep_freed_memory(torch.device("cuda")):
        assert faults_per_block() > PAGES / 2
    monkeypatch.setenv(KEEP_HEAP_ENV, "0")
    assert not heap_keeping_available()
    with keep_freed_memory("cpu"):
        assert faults_per_block() > PAGES / 2


def test_embedding_restores_the_defaults_and_gives_the_same_result(tiny_config, monkeypatch):
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=12, seed=0)
    genes = [f"g{i}" for i in range(12)]
    network = cs.model.build_network(tiny_config, genes)
    model = cs.model.ComtipModel(network, panel=genes, tile_um=100, tile_px=tiny_config.tile_px)
    kept = model.encode_images(model.tiles(sdata), batch_size=8)
    assert faults_per_block() > PAGES / 2
    monkeypatch.setenv(KEEP_HEAP_ENV, "0")
    default = model.encode_images(model.tiles(sdata), batch_size=8)
    np.testing.assert_array_equal(kept, default)
