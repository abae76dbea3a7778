"""cs.datasets.her2st / cs.datasets.mob on the real files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from spatialdata.transformations import get_transformation

import comtip_sc as cs
from comtip_sc._constants import (
    INSTANCE_KEY,
    REGION_KEY,
    SAMPLE_KEY,
    SPATIAL_KEY,
    SPOT_ID_KEY,
    TABLE_KEY,
    UM_PER_PX_KEY,
    UNS_KEY,
)

# Values from her2st/SOURCE.md and stutility_mob/SOURCE.md.
HER2ST_SPOTS = {"A1": 346, "C2": 187}
HER2ST_UM_PER_PX = {"A1": 3.2, "C2": 0.69}
MOB_SPOTS = {"MOB1": 379, "MOB2": 407, "MOB3": 438}
MOB_INDIVIDUAL = {"MOB1": 1, "MOB2": 1, "MOB3": 2}
MOB_UM_PER_PX = 4.4


@pytest.fixture(scope="module")
def her2st_sdata(shared_data):
    return cs.datasets.her2st(shared_data / "her2st", sections=["A1", "C2"])


@pytest.fixture(scope="module")
def mob_sdata(shared_data):
    return cs.datasets.mob(shared_data / "stutility_mob")


def _per_sample(table, column):
    return table.obs.groupby(SAMPLE_KEY, observed=True)[column]


@pytest.mark.realdata
def test_her2st_spots_scale_and_patient(her2st_sdata):
    table = her2st_sdata.tables[TABLE_KEY]
    assert _per_sample(table, SPOT_ID_KEY).size().to_dict() == HER2ST_SPOTS
    patients = _per_sample(table, "patient").agg(lambda s: set(s.astype(str))).to_dict()
    assert patients == {"A1": {"A"}, "C2": {"C"}}
    assert set(her2st_sdata.images) == {"A1_image", "C2_image"}
    assert set(her2st_sdata.shapes) == {"A1_spots", "C2_spots"}
    for sample, expected in HER2ST_UM_PER_PX.items():
        um_per_px = table.uns[UNS_KEY][UM_PER_PX_KEY][sample]
        assert um_per_px == pytest.approx(expected, rel=0.1)
        scale = get_transformation(her2st_sdata.shapes[f"{sample}_spots"], to_coordinate_system=sample)
        np.testing.assert_allclose(scale.scale, [um_per_px, um_per_px])
    # SOURCE.md: spot radius ~72 px at full resolution, ~16 px in the A1 PNG
    assert her2st_sdata.shapes["C2_spots"]["radius"].iloc[0] == pytest.approx(72, rel=0.1)
    assert her2st_sdata.shapes["A1_spots"]["radius"].iloc[0] == pytest.approx(16, rel=0.1)


@pytest.mark.realdata
def test_her2st_table_holds_the_raw_counts(her2st_sdata, shared_data):
    table = her2st_sdata.tables[TABLE_KEY]
    raw = pd.read_csv(shared_data / "her2st" / "data" / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    assert table.X.dtype == np.int32
    row = table[table.obs_names == "C2_10x21"]
    genes = raw.columns[:50]
    np.testing.assert_array_equal(row[:, genes].X.toarray().ravel(), raw.loc["10x21", genes].to_numpy())
    assert row.X.sum() == raw.loc["10x21"].sum()
    # genes only A1 measured are 0 for C2 spots, not missing
    only_a1 = table.var_names.difference(raw.columns)
    assert len(only_a1) > 0
    assert table[table.obs[SAMPLE_KEY] == "C2", only_a1].X.nnz == 0


@pytest.mark.realdata
def test_mob_spots_individual_and_scale(mob_sdata):
    table = mob_sdata.tables[TABLE_KEY]
    assert _per_sample(table, SPOT_ID_KEY).size().to_dict() == MOB_SPOTS
    assert _per_sample(table, "individual").first().to_dict() == MOB_INDIVIDUAL
    assert _per_sample(table, "individual").nunique().eq(1).all()
    assert table.n_vars == 1000
    for sample in MOB_SPOTS:
        assert table.uns[UNS_KEY][UM_PER_PX_KEY][sample] == pytest.approx(MOB_UM_PER_PX, rel=0.1)


@pytest.mark.realdata
@pytest.mark.parametrize("which", ["her2st", "mob"])
def test_spot_centres_lie_inside_their_image(which, her2st_sdata, mob_sdata):
    sdata = her2st_sdata if which == "her2st" else mob_sdata
    table = sdata.tables[TABLE_KEY]
    for region in table.obs[REGION_KEY].cat.categories:
        sample = region.removesuffix("_spots")
        _, height, width = sdata.images[f"{sample}_image"]["scale0"]["image"].shape
        shapes = sdata.shapes[region]
        x, y = shapes.geometry.x.to_numpy(), shapes.geometry.y.to_numpy()
        assert ((x >= 0) & (x < width) & (y >= 0) & (y < height)).all(), region
        rows = table.obs[REGION_KEY] == region
        order = table.obs.loc[rows, INSTANCE_KEY].to_numpy()
        np.testing.assert_allclose(table.obsm[SPATIAL_KEY][rows.to_numpy()], np.c_[x, y][order])


def _affine(element) -> dict[str, np.ndarray]:
    # axis order of a Scale is not preserved by the zarr round trip; compare the matrices
    return {
        cs_name: t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        for cs_name, t in get_transformation(element, get_all=True).items()
    }


def _assert_same(a: sd.SpatialData, b: sd.SpatialData) -> None:
    ta, tb = a.tables[TABLE_KEY], b.tables[TABLE_KEY]
    assert (ta.X != tb.X).nnz == 0
    assert tb.X.dtype == np.int32
    pd.testing.assert_frame_equal(ta.obs, tb.obs)
    np.testing.assert_allclose(ta.obsm[SPATIAL_KEY], tb.obsm[SPATIAL_KEY])
    assert tb.uns[UNS_KEY] == ta.uns[UNS_KEY]
    assert set(a.images) == set(b.images)
    assert set(a.shapes) == set(b.shapes)
    for name, element in [*a.images.items(), *a.shapes.items()]:
        other = b.images[name] if name in b.images else b.shapes[name]
        before, after = _affine(element), _affine(other)
        assert before.keys() == after.keys()
        for cs_name in before:
            np.testing.assert_allclose(after[cs_name], before[cs_name])
    for name in a.shapes:
        pd.testing.assert_series_equal(a.shapes[name]["radius"], b.shapes[name]["radius"])


@pytest.mark.realdata
def test_mob_round_trips_through_zarr(mob_sdata, tmp_path):
    mob_sdata.write(tmp_path / "x.zarr")
    _assert_same(mob_sdata, sd.read_zarr(tmp_path / "x.zarr"))


@pytest.mark.realdata
def test_her2st_round_trips_through_zarr(shared_data, tmp_path):
    # A1 alone: writing the 9k x 10k C2 pyramid would cost several seconds for no extra coverage
    sdata = cs.datasets.her2st(shared_data / "her2st", sections="A1")
    sdata.write(tmp_path / "x.zarr")
    _assert_same(sdata, sd.read_zarr(tmp_path / "x.zarr"))


def test_missing_files_and_unknown_sections(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"C2\.tsv\.gz"):
        cs.datasets.her2st(tmp_path, sections=["C2"])
    with pytest.raises(FileNotFoundError, match=r"metaData\.csv"):
        cs.datasets.mob(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        cs.datasets.her2st(tmp_path / "no_such_folder")
    with pytest.raises(ValueError, match="B1"):
        cs.datasets.her2st(tmp_path, sections=["B1"])
    with pytest.raises(ValueError, match="MOB9"):
        cs.datasets.mob(tmp_path, sections=["MOB9"])
