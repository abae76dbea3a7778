"""Physical-scale checks of the tiles on the real her2st sections A1 (~3.2 µm/px) and C2 (~0.69 µm/px)."""

import numpy as np
import pytest

import comtip_sc as cs
from comtip_sc._constants import ARRAY_COL_KEY, ARRAY_ROW_KEY, SAMPLE_KEY

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def a1_c2(shared_data):
    return cs.datasets.her2st(shared_data / "her2st", sections=["A1", "C2"])


def _neighbour_distance_in_tile_px(tiles, table, sample):
    """Median distance, in tile pixels, between spots one array column apart."""
    obs = table.obs
    rows = np.flatnonzero(obs[SAMPLE_KEY].astype(str).to_numpy() == sample)
    key = {(int(obs[ARRAY_COL_KEY].iloc[i]), int(obs[ARRAY_ROW_KEY].iloc[i])): i for i in rows}
    boxes = tiles.boxes_px
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    scale = tiles.tile_px / (boxes[:, 2] - boxes[:, 0])  # tile px per image px
    dists = [
        np.linalg.norm(centres[j] - centres[i]) * scale[i]
        for (x, y), i in key.items()
        if (j := key.get((x + 1, y))) is not None
    ]
    assert len(dists) > 20
    return float(np.median(dists))


def test_a1_and_c2_tiles_cover_the_same_physical_field(a1_c2):
    tile_um, tile_px = 400.0, 112
    tiles = cs.pp.SpotTiles(a1_c2, tile_um=tile_um, tile_px=tile_px)
    table = a1_c2.tables["table"]
    # Legacy ST spots are 200 µm apart, so in a 400 µm tile a neighbour sits half a tile away.
    expected = 200.0 / tile_um * tile_px
    for sample in ["A1", "C2"]:
        got = _neighbour_distance_in_tile_px(tiles, table, sample)
        assert got == pytest.approx(expected, rel=0.05), sample
    # Same tile_um gives boxes 4.6x larger in C2's pixels than in A1's.
    width = tiles.boxes_px[:, 2] - tiles.boxes_px[:, 0]
    samples = table.obs[SAMPLE_KEY].astype(str).to_numpy()
    ratio = np.median(width[samples == "C2"]) / np.median(width[samples == "A1"])
    assert 4.0 < ratio < 5.2


def test_real_tiles_show_tissue(a1_c2):
    tiles = cs.pp.SpotTiles(a1_c2, tile_um=150, tile_px=64)
    table = a1_c2.tables["table"]
    for sample in ["A1", "C2"]:
        i = int(np.flatnonzero(table.obs[SAMPLE_KEY].astype(str).to_numpy() == sample)[0])
        tile = tiles[i].astype(float)
        assert tile.shape == (64, 64, 3)
        # Spots lie on tissue: the tile is neither blank white nor blank black.
        assert 20 < tile.mean() < 240 and tile.std() > 5, sample
