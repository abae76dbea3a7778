"""read_legacy_st on a small synthetic legacy-ST section written to tmp_path."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image
from spatialdata.models import get_table_keys
from spatialdata.transformations import Scale, get_transformation

import comtip_sc as cs
from comtip_sc._constants import (
    ARRAY_COL_KEY,
    ARRAY_ROW_KEY,
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SPATIAL_KEY,
    SPOT_DIAMETER_KEY,
    SPOT_ID_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)

# A 4 x 3 grid of array spots, 50 px apart: 200 µm / 50 px = 4 µm/px, spot radius 50 µm = 12.5 px.
PX_PER_UNIT = 50.0
UM_PER_PX = 200.0 / PX_PER_UNIT
IMAGE_HW = (180, 200)
GENES = ["G1", "G2", "G3", "G4", "G5"]


def _spot_table() -> pd.DataFrame:
    rows = []
    for x in range(1, 5):
        for y in range(1, 4):
            px, py = 40 + (x - 1) * PX_PER_UNIT, 30 + (y - 1) * PX_PER_UNIT
            # 4x3 is off tissue: it has counts but must be dropped
            rows.append((x, y, x + 0.01, y - 0.02, px + 0.3, py - 0.2, 0 if (x, y) == (4, 3) else 1))
    return pd.DataFrame(rows, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"])


def _count_table() -> pd.DataFrame:
    ids = [f"{x}x{y}" for x in range(1, 5) for y in range(1, 4)] + ["9x9"]  # 9x9: no coordinates, dropped
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.integers(0, 20, size=(len(ids), len(GENES))), index=ids, columns=GENES)


def _image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(*IMAGE_HW, 3), dtype=np.uint8)


@pytest.fixture
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _count_table(), _spot_table()


@pytest.fixture
def folder(tmp_path, frames):
    counts, spots = frames
    counts.to_csv(tmp_path / "S1.tsv", sep="\t")
    with gzip.open(tmp_path / "S1.tsv.gz", "wt") as fh:
        counts.to_csv(fh, sep="\t")
    spots.to_csv(tmp_path / "S1_selection.tsv", sep="\t", index=False)
    Image.fromarray(_image()).save(tmp_path / "S1.png")
    return tmp_path


@pytest.fixture
def sdata(folder):
    return cs.io.read_legacy_st(
        folder / "S1.tsv", folder / "S1_selection.tsv", folder / "S1.png", sample_id="S1"
    )


KEPT = [f"{x}x{y}" for x in range(1, 5) for y in range(1, 4) if (x, y) != (4, 3)]


def test_layout_elements(sdata):
    assert set(sdata.images) == {"S1_image"}
    assert set(sdata.shapes) == {"S1_spots"}
    assert set(sdata.tables) == {TABLE_KEY}
    image = sdata.images["S1_image"]["scale0"]["image"]
    assert image.dims == ("c", "y", "x")
    assert image.shape == (3, *IMAGE_HW)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(np.moveaxis(image.values, 0, -1), _image())


def test_transformations_are_scale_to_micrometres(sdata):
    for element in (sdata.images["S1_image"], sdata.shapes["S1_spots"]):
        transforms = get_transformation(element, get_all=True)
        assert set(transforms) == {"S1"}
        t = transforms["S1"]
        assert isinstance(t, Scale)
        assert tuple(t.axes) == ("y", "x")
        np.testing.assert_allclose(t.scale, [UM_PER_PX, UM_PER_PX], rtol=1e-3)


def test_shapes_are_circles_in_pixels(sdata):
    shapes = sdata.shapes["S1_spots"]
    assert list(shapes.index) == list(range(len(KEPT)))
    np.testing.assert_allclose(shapes["radius"], 50.0 / UM_PER_PX, rtol=1e-3)
    spots = (
        _spot_table()
        .assign(key=lambda d: [f"{x}x{y}" for x, y in zip(d.x, d.y, strict=True)])
        .set_index("key")
    )
    np.testing.assert_allclose(shapes.geometry.x, spots.loc[KEPT, "pixel_x"])
    np.testing.assert_allclose(shapes.geometry.y, spots.loc[KEPT, "pixel_y"])


def test_table(sdata):
    table = sdata.tables[TABLE_KEY]
    assert get_table_keys(table) == ("S1_spots", REGION_KEY, INSTANCE_KEY)
    assert list(table.obs_names) == [f"S1_{s}" for s in KEPT]
    assert list(table.obs[SPOT_ID_KEY]) == KEPT
    assert list(table.obs[INSTANCE_KEY]) == list(range(len(KEPT)))
    assert isinstance(table.obs[REGION_KEY].dtype, pd.CategoricalDtype)
    assert isinstance(table.obs[SAMPLE_KEY].dtype, pd.CategoricalDtype)
    assert set(table.obs[SAMPLE_KEY]) == {"S1"}
    assert list(table.obs[ARRAY_COL_KEY]) == [int(s.split("x")[0]) for s in KEPT]
    assert list(table.obs[ARRAY_ROW_KEY]) == [int(s.split("x")[1]) for s in KEPT]
    assert sp.isspmatrix_csr(table.X) or isinstance(table.X, sp.csr_array)
    assert table.X.dtype == np.int32
    np.testing.assert_array_equal(table.X.toarray(), _count_table().loc[KEPT].to_numpy())
    assert list(table.var_names) == GENES
    spatial = table.obsm[SPATIAL_KEY]
    assert spatial.dtype.kind == "f"
    shapes = sdata.shapes["S1_spots"]
    np.testing.assert_allclose(spatial, np.c_[shapes.geometry.x, shapes.geometry.y])
    assert table.uns[UNS_KEY][SPOT_DIAMETER_KEY] == {"S1": 100.0}
    assert table.uns[UNS_KEY][UM_PER_PX_KEY]["S1"] == pytest.approx(UM_PER_PX, rel=1e-3)


def test_frames_array_and_gzip_inputs_give_the_same_result(sdata, folder, frames):
    counts, spots = frames
    before = counts.copy(), spots.copy()
    from_frames = cs.io.read_legacy_st(counts, spots, _image(), sample_id="S1")
    from_gzip = cs.io.read_legacy_st(
        folder / "S1.tsv.gz", folder / "S1_selection.tsv", folder / "S1.png", sample_id="S1"
    )
    pd.testing.assert_frame_equal(counts, before[0])
    pd.testing.assert_frame_equal(spots, before[1])
    for other in (from_frames, from_gzip):
        a, b = sdata.tables[TABLE_KEY], other.tables[TABLE_KEY]
        np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
        pd.testing.assert_frame_equal(a.obs, b.obs)
        np.testing.assert_allclose(a.obsm[SPATIAL_KEY], b.obsm[SPATIAL_KEY])


def test_explicit_um_per_px_and_pixel_scale(frames):
    counts, spots = frames
    half = _image()[::2, ::2]
    sdata = cs.io.read_legacy_st(counts, spots, half, sample_id="h", pixel_scale=0.5)
    # half-size image: twice the µm per pixel, half the radius in pixels
    assert sdata.tables[TABLE_KEY].uns[UNS_KEY][UM_PER_PX_KEY]["h"] == pytest.approx(2 * UM_PER_PX, rel=1e-3)
    np.testing.assert_allclose(sdata.shapes["h_spots"]["radius"], 50.0 / (2 * UM_PER_PX), rtol=1e-3)
    np.testing.assert_allclose(sdata.tables[TABLE_KEY].obsm[SPATIAL_KEY][0], [40.3 / 2, 29.8 / 2])
    fixed = cs.io.read_legacy_st(counts, spots, _image(), sample_id="f", um_per_px=1.5, spot_diameter_um=55.0)
    assert get_transformation(fixed.shapes["f_spots"], "f").scale.tolist() == [1.5, 1.5]
    np.testing.assert_allclose(fixed.shapes["f_spots"]["radius"], 55.0 / 2 / 1.5)


def test_spot_spacing_on_a_checkerboard_grid():
    # "2k" layout: spots where x + y is even, so neighbours are diagonal, sqrt(2) array units apart
    xy = np.array([(x, y) for x in range(1, 9) for y in range(1, 9) if (x + y) % 2 == 0])
    spots = pd.DataFrame(
        {"x": xy[:, 0], "y": xy[:, 1], "pixel_x": xy[:, 0] * 20.0, "pixel_y": xy[:, 1] * 20.0}
    )
    counts = pd.DataFrame(1, index=[f"{x}x{y}" for x, y in xy], columns=["g"])
    sdata = cs.io.read_legacy_st(counts, spots, np.zeros((200, 200, 3), np.uint8), spot_spacing_um=141.0)
    expected = 141.0 / (20.0 * np.sqrt(2))
    assert sdata.tables[TABLE_KEY].uns[UNS_KEY][UM_PER_PX_KEY]["sample"] == pytest.approx(expected, rel=1e-6)


def test_pyramid_and_pil_limit_restored(frames):
    counts, spots = frames
    limit = Image.MAX_IMAGE_PIXELS
    sdata = cs.io.read_legacy_st(counts, spots, np.zeros((1100, 2100, 3), np.uint8), sample_id="p")
    shapes = [tuple(node["image"].shape) for node in sdata.images["p_image"].values()]
    assert shapes == [(3, 1100, 2100), (3, 550, 1050), (3, 275, 525)]
    assert Image.MAX_IMAGE_PIXELS == limit


def test_duplicated_gene_names_are_made_unique(folder, frames):
    counts, spots = frames
    counts.columns = ["G1", "G2", "G2", "G4", "G5"]
    counts.to_csv(folder / "dup.tsv", sep="\t")
    with pytest.warns(UserWarning, match="G2"):
        sdata = cs.io.read_legacy_st(folder / "dup.tsv", spots, _image())
    assert sdata.tables[TABLE_KEY].var_names.is_unique


# --- errors: each names the offender and leaves the inputs untouched ---------------------------------


def _negative(c, s):
    c.loc["2x2", "G3"] = -1


def _nan_count(c, s):
    c["G3"] = c["G3"].astype(float)
    c.loc["2x2", "G3"] = np.nan


def _fractional(c, s):
    c["G3"] = c["G3"].astype(float)
    c.loc["2x2", "G3"] = 0.5


def _nan_pixel(c, s):
    s.loc[(s.x == 3) & (s.y == 1), "pixel_x"] = np.nan


def _dup_count_id(c, s):
    c.index = [*c.index[:-1], "1x2"]


def _dup_spot_id(c, s):
    s.loc[(s.x == 2) & (s.y == 3), "y"] = 2


def _no_overlap(c, s):
    c.index = [f"spot{i}" for i in range(len(c))]


def _missing_column(c, s):
    s.drop(columns="pixel_y", inplace=True)


BAD = [
    (_negative, ValueError, ["negative", "'2x2'", "'G3'", "1 negative"]),
    (_nan_count, ValueError, ["NaN", "'2x2'", "'G3'"]),
    (_fractional, ValueError, ["non-integer", "'2x2'", "'G3'"]),
    (_nan_pixel, ValueError, ["'3x1'", "pixel_x"]),
    (_dup_count_id, ValueError, ["duplicated", "'1x2'", "count"]),
    (_dup_spot_id, ValueError, ["duplicated", "'2x2'", "spot"]),
    (_no_overlap, ValueError, ["No spot in common", "'spot0'", "'1x1'"]),
    (_missing_column, KeyError, ["pixel_y"]),
]


@pytest.mark.parametrize(("corrupt", "error", "words"), BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_frames_raise_and_are_not_modified(corrupt, error, words):
    counts, spots = _count_table(), _spot_table()
    corrupt(counts, spots)
    before = counts.copy(), spots.copy()
    with pytest.raises(error) as info:
        cs.io.read_legacy_st(counts, spots, _image())
    for word in words:
        assert word in str(info.value)
    pd.testing.assert_frame_equal(counts, before[0])
    pd.testing.assert_frame_equal(spots, before[1])


@pytest.mark.parametrize(("corrupt", "error", "words"), BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_files_name_the_file(tmp_path, corrupt, error, words):
    counts, spots = _count_table(), _spot_table()
    corrupt(counts, spots)
    counts.to_csv(tmp_path / "bad_counts.tsv", sep="\t")
    spots.to_csv(tmp_path / "bad_spots.tsv", sep="\t", index=False)
    with pytest.raises(error) as info:
        cs.io.read_legacy_st(tmp_path / "bad_counts.tsv", tmp_path / "bad_spots.tsv", _image())
    message = str(info.value)
    assert "bad_counts.tsv" in message or "bad_spots.tsv" in message
    for word in words:
        assert word in message


def test_missing_file_and_bad_image(folder, frames):
    counts, spots = frames
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv"):
        cs.io.read_legacy_st(folder / "nope.tsv", spots, _image())
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        cs.io.read_legacy_st(counts, spots, folder / "nope.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        cs.io.read_legacy_st(counts, spots, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="um_per_px"):
        cs.io.read_legacy_st(counts, spots, _image(), um_per_px=0.0)
