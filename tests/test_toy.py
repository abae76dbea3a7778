from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Scale, get_transformation

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
from comtip_sc._image import pyramid_factors
from comtip_sc.datasets import toy_tissue
from comtip_sc.datasets._toy import TOY_UNS_KEY


@pytest.fixture(scope="module")
def toy():
    return toy_tissue()


def _full_image(sdata, name="toy_image") -> np.ndarray:
    return np.asarray(sdata.images[name]["scale0"]["image"].values)


def _spot_pixels(image: np.ndarray, xy: np.ndarray, radius: float) -> list[np.ndarray]:
    """RGB values (n_pixels, 3) of the pixels whose centre lies inside each spot."""
    out = []
    r = int(np.ceil(radius))
    for x, y in xy:
        x0, y0 = int(x) - r, int(y) - r
        patch = image[:, y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1].astype(np.float64)
        yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1] + 0.5
        inside = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        out.append(patch[:, inside].T)
    return out


def test_same_seed_is_identical():
    a, b = toy_tissue(n_rows=6, n_cols=7, seed=3), toy_tissue(n_rows=6, n_cols=7, seed=3)
    np.testing.assert_array_equal(_full_image(a), _full_image(b))
    ta, tb = a.tables[TABLE_KEY], b.tables[TABLE_KEY]
    np.testing.assert_array_equal(ta.X.toarray(), tb.X.toarray())
    assert list(ta.var_names) == list(tb.var_names)
    assert ta.obs["tissue_type"].tolist() == tb.obs["tissue_type"].tolist()


def test_different_seed_differs_but_shares_genes():
    a, b = toy_tissue(n_rows=6, n_cols=7, seed=0), toy_tissue(n_rows=6, n_cols=7, seed=1)
    assert not np.array_equal(_full_image(a), _full_image(b))
    assert not np.array_equal(a.tables[TABLE_KEY].X.toarray(), b.tables[TABLE_KEY].X.toarray())
    # Sections of one toy "tissue" must be stackable: same genes, same type names.
    assert list(a.tables[TABLE_KEY].var_names) == list(b.tables[TABLE_KEY].var_names)
    assert list(a.tables[TABLE_KEY].obs["tissue_type"].cat.categories) == list(
        b.tables[TABLE_KEY].obs["tissue_type"].cat.categories
    )


def test_layout_elements_and_transformations(toy):
    assert set(toy.images) == {"toy_image"}
    assert set(toy.shapes) == {"toy_spots"}
    assert set(toy.tables) == {TABLE_KEY}
    Image2DModel().validate(toy.images["toy_image"])
    ShapesModel.validate(toy.shapes["toy_spots"])
    TableModel().validate(toy.tables[TABLE_KEY])

    img = toy.images["toy_image"]
    full = img["scale0"]["image"]
    assert full.dims == ("c", "y", "x")
    assert full.dtype == np.uint8
    assert full.shape == (3, 2200, 2200)  # (20 spots * 100 µm + 2 * 100 µm margin) / 1 µm per px
    assert [img[k]["image"].shape[1] for k in img] == [2200, 1100, 550, 275]

    for element in (img, toy.shapes["toy_spots"]):
        t = get_transformation(element, to_coordinate_system="toy")
        assert isinstance(t, Scale)
        assert t.axes == ("y", "x")
        np.testing.assert_allclose(t.scale, [1.0, 1.0])
        assert set(get_transformation(element, get_all=True)) == {"toy"}


def test_scale_and_radius_follow_resolution():
    sdata = toy_tissue(n_rows=4, n_cols=5, um_per_px=2.0, spot_diameter_um=55.0, sample_id="s1")
    assert set(sdata.images) == {"s1_image"}
    full = sdata.images["s1_image"]["scale0"]["image"]
    assert full.shape == (3, (4 + 2) * 100 // 2, (5 + 2) * 100 // 2)
    t = get_transformation(sdata.shapes["s1_spots"], to_coordinate_system="s1")
    np.testing.assert_allclose(t.scale, [2.0, 2.0])
    np.testing.assert_allclose(sdata.shapes["s1_spots"]["radius"], 55.0 / 2 / 2.0)
    uns = sdata.tables[TABLE_KEY].uns[UNS_KEY]
    assert uns[UM_PER_PX_KEY] == {"s1": 2.0}
    assert uns[SPOT_DIAMETER_KEY] == {"s1": 55.0}


def test_scale_factors_rule():
    assert pyramid_factors((2200, 3000)) == [2, 2, 2]
    assert pyramid_factors((511, 4000)) == [2], "every image is multiscale"
    assert pyramid_factors((512, 512)) == [2]


def test_table_contents(toy):
    table = toy.tables[TABLE_KEY]
    assert table.shape == (400, 120)
    assert sparse.isspmatrix_csr(table.X) or isinstance(table.X, sparse.csr_array)
    assert table.X.dtype == np.int32
    assert table.X.min() >= 0
    assert table.obs_names.is_unique
    obs = table.obs
    for col in (
        REGION_KEY,
        INSTANCE_KEY,
        SPOT_ID_KEY,
        SAMPLE_KEY,
        ARRAY_ROW_KEY,
        ARRAY_COL_KEY,
        "tissue_type",
    ):
        assert col in obs
    assert obs[REGION_KEY].dtype == "category" and set(obs[REGION_KEY]) == {"toy_spots"}
    assert obs[SAMPLE_KEY].dtype == "category" and set(obs[SAMPLE_KEY]) == {"toy"}
    np.testing.assert_array_equal(obs[INSTANCE_KEY], np.arange(400))
    row = obs.iloc[27]
    assert row[SPOT_ID_KEY] == f"{row[ARRAY_COL_KEY]}x{row[ARRAY_ROW_KEY]}"
    assert table.obs_names[27] == f"toy_{row[SPOT_ID_KEY]}"
    assert table.uns["spatialdata_attrs"]["region_key"] == REGION_KEY
    assert table.uns["spatialdata_attrs"]["instance_key"] == INSTANCE_KEY

    # obsm["spatial"] (x, y) px agrees with the shapes and respects the margin of one spacing.
    xy = table.obsm[SPATIAL_KEY]
    shapes = toy.shapes["toy_spots"]
    np.testing.assert_allclose(xy, np.c_[shapes.geometry.x, shapes.geometry.y][obs[INSTANCE_KEY]])
    np.testing.assert_allclose(np.diff(np.unique(xy[:, 0])), 100.0)
    assert xy.min() >= 100 + 75 / 2 and xy.max() <= 2200 - 100 - 75 / 2
    np.testing.assert_allclose(shapes["radius"], 27.5)

    genes = list(table.var_names)
    assert len(set(genes)) == 120
    for g in ("KRT19", "ERBB2", "EPCAM", "PTPRC", "COL1A1", "ACTA2", "MKI67", "CD3E", "VIM"):
        assert g in genes
    assert sum(g.startswith("TOYG") for g in genes) > 60
    assert abs(np.median(np.asarray(table.X.sum(axis=1)).ravel()) - 2000) < 800


def test_every_type_present_with_small_grid():
    sdata = toy_tissue(n_rows=5, n_cols=5, n_types=6, n_genes=40, seed=5)
    types = sdata.tables[TABLE_KEY].obs["tissue_type"]
    assert len(types.cat.categories) == 6
    assert types.value_counts().min() >= 1


def test_too_few_genes_errors():
    with pytest.raises(ValueError, match="n_genes=5"):
        toy_tissue(n_genes=5, n_types=4)


def test_types_separable_by_markers(toy):
    table = toy.tables[TABLE_KEY]
    markers = table.uns[TOY_UNS_KEY]["markers"]
    types = table.obs["tissue_type"].to_numpy()
    counts = table.X.toarray().astype(float)
    cpm = counts / counts.sum(axis=1, keepdims=True) * 1e4
    for t, genes in markers.items():
        score = cpm[:, table.var_names.get_indexer(list(genes))].sum(axis=1)
        inside, outside = score[types == t].mean(), score[types != t].mean()
        assert inside > 5 * outside, (t, inside, outside)


def test_gradient_gene_is_smooth_in_space(toy):
    table = toy.tables[TABLE_KEY]
    g = table.uns[TOY_UNS_KEY]["gradient_genes"][0]
    counts = table.X.toarray().astype(float)
    y = np.log1p(counts[:, table.var_names.get_loc(g)] / counts.sum(axis=1) * 1e4)
    design = np.c_[np.ones(table.n_obs), table.obsm[SPATIAL_KEY]]
    fit = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    r2 = 1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 > 0.3


def test_types_separable_by_colour_and_texture(toy):
    table = toy.tables[TABLE_KEY]
    image = _full_image(toy)
    pixels = _spot_pixels(image, table.obsm[SPATIAL_KEY], radius=27.5)
    # Mean colour plus per-channel spread (texture contrast) of the pixels under each spot.
    feats = np.array([np.r_[p.mean(axis=0), p.std(axis=0)] for p in pixels])
    types = table.obs["tissue_type"].cat.codes.to_numpy()
    n_types = types.max() + 1

    means = np.array([feats[types == t, :3].mean(axis=0) for t in range(n_types)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(n_types, 1)]
    assert gaps.min() > 15  # mean RGB of every pair of types differs clearly

    # Nearest-centroid classifier fitted on even spots, scored on odd ones.
    train, test = np.arange(len(types)) % 2 == 0, np.arange(len(types)) % 2 == 1
    mu, sd = feats[train].mean(axis=0), feats[train].std(axis=0)
    z = (feats - mu) / sd
    cents = np.array([z[train & (types == t)].mean(axis=0) for t in range(n_types)])
    pred = np.argmin(((z[test, None] - cents[None]) ** 2).sum(-1), axis=1)
    assert (pred == types[test]).mean() > 0.9  # chance is about 1 / n_types


def test_texture_alone_separates_types(toy):
    """Grey-level texture (no colour) still tells the types apart."""
    table = toy.tables[TABLE_KEY]
    image = _full_image(toy).astype(np.float64).mean(axis=0, keepdims=True)
    types = table.obs["tissue_type"].cat.codes.to_numpy()
    feats = []
    for x, y in table.obsm[SPATIAL_KEY]:
        patch = image[0, int(y) - 20 : int(y) + 20, int(x) - 20 : int(x) + 20]
        patch = (patch - patch.mean()) / (patch.std() + 1e-9)
        power = np.abs(np.fft.fft2(patch)) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(40), indexing="ij")
        radius, angle = np.hypot(fy, fx), np.arctan2(fy, fx) % np.pi
        bands = [
            (radius > lo) & (radius <= hi) for lo, hi in [(0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.8)]
        ]
        sectors = [(radius > 0.05) & (angle >= a) & (angle < a + np.pi / 4) for a in np.arange(4) * np.pi / 4]
        feats.append([np.log(power[m].sum() + 1e-9) for m in bands + sectors])
    feats = np.asarray(feats)
    train, test = np.arange(len(types)) % 2 == 0, np.arange(len(types)) % 2 == 1
    mu, sd = feats[train].mean(axis=0), feats[train].std(axis=0)
    z = (feats - mu) / sd
    cents = np.array([z[train & (types == t)].mean(axis=0) for t in range(types.max() + 1)])
    pred = np.argmin(((z[test, None] - cents[None]) ** 2).sum(-1), axis=1)
    assert (pred == types[test]).mean() > 0.7
