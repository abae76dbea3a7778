"""Visium HD bins and Xenium cells: spatialdata-io-shaped inputs, pseudo-spots, and training on bins."""

import gc
import tracemalloc

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, get_transformation

import comtip_sc as cs
from comtip_sc._predictions import get_predictions

# The synthetic slide at 0.5 µm per pixel: an 8 µm bin is 16 px.
UM_PER_PX = 0.5


@pytest.fixture(scope="module")
def raw():
    """spatialdata_io.visium_hd-shaped output: 18 × 24 bins of 8 µm."""
    return cs.datasets.visium_hd_tissue(n_rows=18, n_cols=24, n_genes=30, um_per_px=UM_PER_PX, seed=1)


def test_synthetic_slide_has_spatialdata_io_layout(raw):
    assert set(raw.tables) == {"square_008um"}
    assert set(raw.shapes) == {"hd_square_008um"}
    assert set(raw.images) == {"hd_full_image", "hd_lowres_image"}
    table = raw.tables["square_008um"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        "hd_square_008um",
        "region",
        "location_id",
    )
    assert {"in_tissue", "array_row", "array_col", "location_id", "region"} <= set(table.obs.columns)
    assert table.obs_names[25] == "s_008um_00001_00001-1"
    squares = raw.shapes["hd_square_008um"]
    assert set(squares.geom_type) == {"Polygon"}
    np.testing.assert_allclose(squares.area, (8 / UM_PER_PX) ** 2)
    assert isinstance(get_transformation(squares, "hd"), Identity)
    # obsm["spatial"] is the bin centre in full-resolution pixels, as the squares' centroids.
    np.testing.assert_allclose(table.obsm["spatial"], shapely.get_coordinates(squares.centroid))


def test_bin_tiles_are_centred_and_of_physical_size(raw):
    # spatialdata-io output as it is: the bin side comes from the element name, the image is found.
    tiles = cs.pp.SpotTiles(raw, tile_um=24, tile_px=12, table_key="square_008um")
    assert tiles.image_names == ["hd_full_image"]
    boxes = tiles.boxes_px
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 24 / UM_PER_PX)
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2, raw.tables["square_008um"].obsm["spatial"])
    assert tiles[5].shape == (12, 12, 3)


def test_bins_as_circles_give_the_same_tiles(raw):
    # spatialdata_io.visium_hd(bins_as_squares=False) stores each bin as a circle of radius half its side.
    squares = raw.shapes["hd_square_008um"]
    centres = shapely.get_coordinates(squares.centroid)
    circles = ShapesModel.parse(
        centres,
        geometry=0,
        radius=np.full(len(centres), 4 / UM_PER_PX),
        index=squares.index,
        transformations=get_transformation(squares, get_all=True),
    )
    as_circles = SpatialData(
        images={"hd_full_image": raw.images["hd_full_image"]},
        shapes={"hd_square_008um": circles},
        tables={"square_008um": raw.tables["square_008um"]},
    )
    a = cs.pp.SpotTiles(raw, tile_um=24, tile_px=12, table_key="square_008um")
    b = cs.pp.SpotTiles(as_circles, tile_um=24, tile_px=12, table_key="square_008um")
    np.testing.assert_allclose(a.boxes_px, b.boxes_px)
    np.testing.assert_array_equal(a[7], b[7])


def test_from_visium_hd_shares_counts_and_leaves_input_alone(raw):
    before = raw.tables["square_008um"].obs.copy()
    hd = cs.io.from_visium_hd(raw, bin_size=8)
    table = hd.tables["table"]
    assert table.X is raw.tables["square_008um"].X
    assert set(hd.images) == {"hd_full_image"} and set(hd.shapes) == {"hd_square_008um"}
    assert table.uns["comtip"]["spot_diameter_um"] == {"hd": 8.0}
    assert table.uns["comtip"]["um_per_px"]["hd"] == pytest.approx(UM_PER_PX)
    assert (table.obs["sample"] == "hd").all()
    np.testing.assert_array_equal(table.obs["instance_id"], before["location_id"])
    pd.testing.assert_frame_equal(raw.tables["square_008um"].obs, before)
    assert set(raw.tables) == {"square_008um"}


def test_from_visium_hd_errors_name_what_is_missing(raw):
    with pytest.raises(KeyError, match="square_016um"):
        cs.io.from_visium_hd(raw, bin_size=16)
    no_image = SpatialData(shapes=dict(raw.shapes), tables=dict(raw.tables))
    with pytest.raises(KeyError, match=r"hd_full_image.*fullres_image_file"):
        cs.io.from_visium_hd(no_image)


def test_unknown_bin_size_and_bad_geometry_are_named(raw):
    squares = raw.shapes["hd_square_008um"]
    table = raw.tables["square_008um"]
    renamed = table.copy()
    renamed.obs["region"] = pd.Categorical(["bins"] * renamed.n_obs)
    renamed.uns["spatialdata_attrs"]["region"] = "bins"
    sdata = SpatialData(
        images={"img": raw.images["hd_full_image"]}, shapes={"bins": squares}, tables={"table": renamed}
    )
    with pytest.raises(ValueError, match=r"'bins'.*spot_diameter_um="):
        cs.pp.SpotTiles(sdata, tile_um=24, tile_px=8)
    assert len(cs.pp.SpotTiles(sdata, tile_um=24, tile_px=8, spot_diameter_um=8)) == table.n_obs
    # Points without a radius are neither circles nor polygons (dropped after parsing: spatialdata refuses them).
    points = ShapesModel.parse(
        shapely.get_coordinates(squares.centroid),
        geometry=0,
        radius=np.ones(len(squares)),
        index=squares.index,
        transformations=get_transformation(squares, get_all=True),
    )
    sdata = SpatialData(
        images={"img": raw.images["hd_full_image"]}, shapes={"bins": points}, tables={"table": renamed}
    )
    del points["radius"]
    with pytest.raises(ValueError, match=r"'bins' holds neither circles.*POINT"):
        cs.pp.SpotTiles(sdata, tile_um=24, tile_px=8, spot_diameter_um=8)


def test_pseudo_spots_sum_the_bins_of_each_grid_cell(raw):
    hd = cs.io.from_visium_hd(raw)
    out = cs.pp.aggregate_bins(hd, spot_um=56, min_bins=1, copy=True)
    assert "pseudo_56um" not in hd.tables and "pseudo_56um" in out.tables
    pooled = out.tables["pseudo_56um"]
    bins = hd.tables["table"]
    # 56 µm = 7 bins of 8 µm, and the grid starts at the first bin's edge: cells are 7 × 7 blocks of bins.
    block = (bins.obs["array_row"].to_numpy() // 7) * 100 + bins.obs["array_col"].to_numpy() // 7
    expected = pd.DataFrame(bins.X.toarray()).groupby(block).sum()
    got_block = pooled.obs["array_row"].to_numpy() * 100 + pooled.obs["array_col"].to_numpy()
    np.testing.assert_array_equal(pooled.X.toarray(), expected.loc[got_block].to_numpy())
    np.testing.assert_array_equal(pooled.obs["n_bins"], pd.Series(block).value_counts().loc[got_block])
    assert pooled.uns["comtip"]["spot_diameter_um"] == {"hd": 56.0}
    # Pseudo-spot tiles are centred on the grid cells: the centre of 7 × 7 bins is the middle bin's centre.
    tiles = cs.pp.SpotTiles(out, tile_um=100, tile_px=16, table_key="pseudo_56um")
    first = (bins.obs["array_row"] == 3).to_numpy() & (bins.obs["array_col"] == 3).to_numpy()
    np.testing.assert_allclose(tiles.boxes_px[0, :2] + 50 / UM_PER_PX, bins.obsm["spatial"][first][0])


def test_pseudo_spots_drop_sparse_cells_and_check_sizes(raw):
    hd = cs.io.from_visium_hd(raw)
    # 18 × 24 bins in 7-bin cells: full cells have 49 bins; the last row and column hold 4 × 7 and 3 × 7.
    cs.pp.aggregate_bins(hd, spot_um=56)
    n_bins = hd.tables["pseudo_56um"].obs["n_bins"]
    assert n_bins.min() >= 25 and sorted(set(n_bins)) == [28, 49]
    assert hd.tables["pseudo_56um"].uns["comtip"]["aggregate_bins"]["min_bins"] == {"hd": 25}
    with pytest.raises(ValueError, match="smaller than the 8 µm bins of shapes element 'hd_square_008um'"):
        cs.pp.aggregate_bins(hd, spot_um=4, key_added="tiny")
    with pytest.raises(ValueError, match="exists already"):
        cs.pp.aggregate_bins(hd, spot_um=56)


def _xenium_like(seed: int = 0) -> SpatialData:
    """spatialdata_io.xenium-shaped output with a post-Xenium H&E (from the toy tissue, 1 µm per pixel).

    Cells are in µm with ``Scale(1 / 0.2125)`` to the ``"global"`` pixel system, the table annotates the
    cell labels through ``cell_labels`` and holds ``cell_id``, as spatialdata-io writes them.
    """
    he = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20, seed=seed)
    rgb = np.asarray(he.images["toy_image"]["scale0"]["image"].data)
    rng = np.random.default_rng(seed)
    xy = rng.uniform(60, rgb.shape[1] - 60, size=(40, 2))
    radius = rng.uniform(4, 7, size=40)
    ids = [f"aaa{i:05d}-1" for i in range(40)]
    to_global = {"global": Scale([1 / 0.2125] * 2, axes=("x", "y"))}
    circles = ShapesModel.parse(xy, geometry=0, radius=radius, index=pd.Index(ids), transformations=to_global)
    polygons = ShapesModel.parse(
        gpd.GeoDataFrame(
            geometry=shapely.buffer(shapely.points(xy), radius), index=pd.Index(ids, name="cell_id")
        ),
        transformations=to_global,
    )
    counts = rng.poisson(3, size=(40, 20)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_id": ids, "cell_area": np.pi * radius**2, "region": pd.Categorical(["cell_labels"] * 40)},
        index=pd.Index(ids),
    )
    obs["cell_labels"] = np.arange(1, 41)
    table = TableModel.parse(
        AnnData(counts, obs=obs), region="cell_labels", region_key="region", instance_key="cell_labels"
    )
    morphology = Image2DModel.parse(
        np.zeros((1, 64, 64), np.uint16), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    he_image = Image2DModel.parse(
        rgb,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations={"global": Scale([1 / 0.2125] * 2, axes=("x", "y"))},
    )
    labels = Labels2DModel.parse(
        np.zeros((64, 64), np.int32), dims=("y", "x"), transformations={"global": Identity()}
    )
    return SpatialData(
        images={"morphology_focus": morphology, "he_image": he_image},
        labels={"cell_labels": labels},
        shapes={"cell_circles": circles, "cell_boundaries": polygons},
        tables={"table": table},
    )


@pytest.mark.parametrize("shapes_key", ["cell_circles", "cell_boundaries"])
def test_xenium_cells_are_tiled_on_the_he_image(shapes_key):
    raw = _xenium_like()
    cells = cs.io.from_xenium(raw, shapes_key=shapes_key)
    assert set(cells.images) == {"he_image"}
    table = cells.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == shapes_key
    assert raw.tables["table"].uns["spatialdata_attrs"]["region"] == "cell_labels"
    # H&E at 1 µm per pixel: a 20 µm tile is 20 px, centred on the cell centre (µm = H&E pixels here).
    tiles = cs.pp.SpotTiles(cells, tile_um=20, tile_px=10)
    np.testing.assert_allclose(tiles.boxes_px[:, 2] - tiles.boxes_px[:, 0], 20, rtol=1e-6)
    centre = shapely.get_coordinates(raw.shapes["cell_circles"].geometry)
    np.testing.assert_allclose((tiles.boxes_px[:, :2] + tiles.boxes_px[:, 2:]) / 2, centre, atol=0.05)
    assert tiles[0].shape == (10, 10, 3)


def test_xenium_errors_name_what_is_missing():
    raw = _xenium_like()
    no_he = SpatialData(labels=dict(raw.labels), shapes=dict(raw.shapes), tables=dict(raw.tables))
    with pytest.raises(KeyError, match=r"'he_image'.*xenium_aligned_image"):
        cs.io.from_xenium(no_he)
    with pytest.raises(KeyError, match=r"'cell_circles'.*cells_as_circles=True"):
        cs.io.from_xenium(
            SpatialData(images=dict(raw.images), labels=dict(raw.labels), tables=dict(raw.tables))
        )
    fewer = SpatialData(
        images=dict(raw.images),
        labels=dict(raw.labels),
        shapes={"cell_circles": raw.shapes["cell_circles"].iloc[:30]},
        tables=dict(raw.tables),
    )
    with pytest.raises(ValueError, match=r"10 cell\(s\).*'cell_circles'.*aaa00030-1"):
        cs.io.from_xenium(fewer)


def _fit_embed_predict(sdata, tiny_config, tmp_path, *, table_key, tile_um):
    model = cs.tl.fit(
        sdata,
        table_key=table_key,
        config=tiny_config,
        tile_um=tile_um,
        max_epochs=1,
        batch_size=32,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    cs.tl.comtip_embed(sdata, model, table_key=table_key)
    cs.tl.comtip_predict(sdata, model, table_key=table_key)
    table = sdata.tables[table_key]
    emb, pred = table.obsm["X_comtip"], get_predictions(table, "comtip_pred")
    assert emb.shape == (table.n_obs, tiny_config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    assert pred.shape == (table.n_obs, len(model.panel)) and np.isfinite(pred.to_numpy()).all()
    return model


def test_fit_embed_predict_on_8um_bins(tiny_config, one_torch_thread, tmp_path):
    raw = cs.datasets.visium_hd_tissue(n_rows=16, n_cols=20, n_genes=30, seed=2)
    hd = cs.io.from_visium_hd(raw, bin_size=8)
    # A 32 µm tile centred on each 8 µm bin: the bin and its neighbours.
    model = _fit_embed_predict(hd, tiny_config, tmp_path, table_key="table", tile_um=32)
    assert model.tile_um == 32 and len(model.reference.embeddings) == 320


def test_fit_embed_predict_on_pseudo_spots(tiny_config, one_torch_thread, tmp_path):
    raw = cs.datasets.visium_hd_tissue(n_rows=36, n_cols=36, bin_um=16, n_genes=30, um_per_px=2.0, seed=3)
    hd = cs.io.from_visium_hd(raw, bin_size=16)
    cs.pp.aggregate_bins(hd, spot_um=55)
    n = hd.tables["pseudo_55um"].n_obs
    assert 64 <= n <= 121
    _fit_embed_predict(hd, tiny_config, tmp_path, table_key="pseudo_55um", tile_um=110)
    # The bins' table is untouched by training on the pseudo-spots.
    assert "X_comtip" not in hd.tables["table"].obsm


def _measure(fn):
    """``fn()``, the growth of the process's peak RSS over its RSS before (MiB; ``None`` where the peak
    cannot be reset) and the peak of Python/numpy allocations during it (tracemalloc, MiB)."""

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

    gc.collect()
    try:
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    except OSError:
        before = None
    tracemalloc.start()
    try:
        out = fn()
        traced = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    rss = None if before is None else round(status("VmHWM") - before, 1)
    return out, rss, round(traced, 1)


class _Spread:
    """A lazy view of ``k`` tiles spread evenly over a tile reader."""

    def __init__(self, tiles, k):
        self.tiles, self.idx = tiles, np.linspace(0, len(tiles) - 1, k).astype(int)

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.tiles[int(self.idx[i])]


def test_a_million_bins_cost_memory_per_batch_not_per_bin(tiny_model, one_torch_thread):
    raw = cs.datasets.visium_hd_tissue(n_rows=1000, n_cols=1000, n_genes=20, um_per_px=8.0, seed=4)
    hd = cs.io.from_visium_hd(raw)
    n = hd.tables["table"].n_obs
    assert n == 1_000_000
    tiles, rss, traced = _measure(lambda: tiny_model.tiles(hd))
    per_bin_images_mb = n * tiny_model.tile_px**2 * 3 / 2**20
    print(
        f"tile reader for {n} bins: peak RSS +{rss} MiB, traced peak {traced} MiB "
        f"(per-bin images would take {per_bin_images_mb:.0f} MiB)"
    )
    # The reader keeps centres and names (a few hundred bytes per bin), never a tile per bin.
    assert traced < 0.15 * per_bin_images_mb and (rss is None or rss < 0.15 * per_bin_images_mb)
    peaks = {}
    for k in (256, 1024):
        emb, rss, traced = _measure(lambda k=k: tiny_model.encode_images(_Spread(tiles, k), batch_size=64))
        assert emb.shape == (k, tiny_model.config.embed_dim) and np.isfinite(emb).all()
        peaks[k] = (rss, traced)
        print(f"embedding {k} of the bins in batches of 64: peak RSS +{rss} MiB, traced peak {traced} MiB")
    # Four times the batches, the same peak: memory follows the batch (and the bounded chunk cache).
    assert peaks[1024][1] < peaks[256][1] + 32 and peaks[1024][1] < 256
    if peaks[1024][0] is not None:
        assert peaks[1024][0] < peaks[256][0] + 64
