"""Writes lose nothing: a process killed (SIGKILL) while writing leaves the previous table or tile cache readable."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd

import comtip_sc as cs

SRC = str(Path(cs.__file__).parents[1])

#: Kill moments after the writer's first completed write: spread so that some land inside a write.
KILL_AFTER_S = (0.1, 0.35)


def _run_and_kill(script: str, marker: Path, delay: float, tmp_path: Path) -> None:
    """Start ``script`` in a fresh interpreter, wait for ``marker`` (a first write is done), kill it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / f"writer-{delay}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"the writer died: {(tmp_path / f'writer-{delay}.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError("the writer never finished a first write")
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the writer ended before it was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "toy.zarr"
    cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0).write(path)
    return path


@pytest.fixture(scope="module")
def saved_model(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    tiny_model.save(path)
    return path


@pytest.mark.parametrize("delay", KILL_AFTER_S)
def test_killed_embed_leaves_old_or_new_table(store, saved_model, tmp_path, delay):
    marker = tmp_path / "first-write-done"
    script = f"""
        import itertools, pathlib
        import numpy as np, spatialdata as sd, torch
        import comtip_sc as cs
        from comtip_sc.model import ComtipModel
        torch.set_num_threads(1)
        sdata = sd.read_zarr({str(store)!r})
        model = ComtipModel.load({str(saved_model)!r})
        table = sdata.tables["table"]
        for i in itertools.count(1):
            # Each round writes a table whose parts all carry the round number.
            table.uns["round"] = i
            table.obsm["round"] = np.full((table.n_obs, 64), i, dtype=np.int64)
            table.obs["round"] = i
            cs.tl.comtip_embed(sdata, model, write=True, accelerator="cpu")
            pathlib.Path({str(marker)!r}).touch()
    """
    _run_and_kill(script, marker, delay, tmp_path)
    back = sd.read_zarr(store)
    table = back.tables["table"]
    original = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0).tables["table"]
    assert (table.obs_names == original.obs_names).all()
    np.testing.assert_array_equal(table.X.toarray(), original.X.toarray())
    rnd = int(table.uns["round"])
    assert rnd >= 1
    assert (table.obsm["round"] == rnd).all() and (table.obs["round"] == rnd).all()
    assert table.obsm["X_comtip"].shape == (table.n_obs, 32)
    assert np.isfinite(table.obsm["X_comtip"]).all()
    # the rest of the store is untouched and still links spots to the image
    assert cs.pp.extract_tiles(back, tile_um=100, tile_px=8).shape == (table.n_obs, 8, 8, 3)


@pytest.mark.parametrize("delay", KILL_AFTER_S)
def test_killed_tile_cache_rebuild_leaves_a_readable_cache(store, tmp_path, delay):
    cache = tmp_path / "tiles.zarr"
    marker = tmp_path / "first-write-done"
    script = f"""
        import itertools, pathlib
        import spatialdata as sd
        import comtip_sc as cs
        sdata = sd.read_zarr({str(store)!r})
        for i in itertools.count():
            cs.pp.cache_tiles(sdata, {str(cache)!r}, tile_um=100, tile_px=(16, 24)[i % 2], overwrite=True)
            pathlib.Path({str(marker)!r}).touch()
    """
    _run_and_kill(script, marker, delay, tmp_path)
    tiles = cs.pp.CachedTiles(cache, in_memory=True)
    assert tiles.tile_px in (16, 24)
    data = tiles.take()
    assert data.shape == (36, tiles.tile_px, tiles.tile_px, 3)
    fresh = cs.pp.extract_tiles(sd.read_zarr(store), tile_um=100, tile_px=tiles.tile_px)
    np.testing.assert_array_equal(data, fresh)
