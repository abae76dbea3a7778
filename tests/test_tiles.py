import pickle

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import torch
from spatialdata.models import TableModel
from spatialdata.transformations import Identity, get_transformation, set_transformation

import comtip_sc as cs
from comtip_sc._constants import COLOUR_REF_MEAN, COLOUR_REF_STD, INSTANCE_KEY, REGION_KEY
from comtip_sc._image import pyramid_levels
from comtip_sc._sections import resolve_sections
from comtip_sc._tables import check_counts
from comtip_sc.model._inference import worker_stretches
from comtip_sc.pp._chunk_cache import ChunkCache


@pytest.fixture(scope="module")
def toy():
    return cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=1)


def _image_array(sdata, name):
    img = sdata.images[name]
    return np.asarray(img["scale0"]["image"].data if "scale0" in img else img.data)


def test_tile_is_exact_crop_at_native_resolution(toy):
    # At 1 µm/px a tile of tile_px µm at tile_px pixels is a plain crop of the image.
    um_per_px = toy.tables["table"].uns["comtip"]["um_per_px"]["toy"]
    tile_px = 24
    tiles = cs.pp.SpotTiles(toy, tile_um=tile_px * um_per_px, tile_px=tile_px)
    image = _image_array(toy, "toy_image")
    for i in [0, 7, 20]:
        x0, y0, _, _ = tiles.boxes_px[i]
        # The toy's spot centres sit on whole pixels at 1 µm/px, so the tile is a plain crop.
        assert float(x0).is_integer() and float(y0).is_integer()
        crop = np.moveaxis(image[:3, int(y0) : int(y0) + tile_px, int(x0) : int(x0) + tile_px], 0, -1)
        np.testing.assert_array_equal(tiles[i], crop)


def test_tiles_have_requested_physical_size(toy):
    tiles = cs.pp.SpotTiles(toy, tile_um=150, tile_px=32)
    sec = resolve_sections(toy)[0]
    widths_um = (tiles.boxes_px[:, 2] - tiles.boxes_px[:, 0]) / sec.px_per_um
    np.testing.assert_allclose(widths_um, 150.0)
    assert tiles[0].shape == (32, 32, 3) and tiles[0].dtype == np.uint8


def test_downsampled_tiles_match_pil_on_the_same_window(toy):
    # 150 µm at 1 µm/px into 32 px: the window is resampled by torch, which must give PIL's filter on the
    # window snapped to whole pixels (the toy's centres are whole pixels, so that is the exact box).
    from PIL import Image

    tiles = cs.pp.SpotTiles(toy, tile_um=150, tile_px=32)
    image = _image_array(toy, "toy_image")
    tiles._level_of[:] = 0  # full resolution: 150 px windows, the torch path
    for i in [0, 11, 30]:
        x0, y0, x1, y1 = np.round(tiles.boxes_px[i]).astype(int)
        window = np.ascontiguousarray(np.moveaxis(image[:3, y0:y1, x0:x1], 0, -1))
        pil = np.asarray(Image.fromarray(window).resize((32, 32), Image.Resampling.BILINEAR)).astype(int)
        diff = np.abs(tiles[i].astype(int) - pil)
        assert diff.max() <= 1, f"spot {i}: torch and PIL differ by up to {diff.max()} grey levels"


def test_read_order_sweeps_blocks_of_chunks_and_bands_inside_them(tmp_path):
    # A lazily read image of 4 x 4 chunks of 64 px, a cache of 12 chunks: blocks of 2 x 2 chunks (a block
    # and its right and lower neighbours fit), block rows swept both ways in turn, and inside a block
    # bands one chunk row high (by the tile's top edge), also swept both ways; every spot once.
    side, chunk = 256, 64
    rng = np.random.default_rng(0)
    image = da.from_array(rng.integers(0, 255, (3, side, side), dtype=np.uint8), chunks=(3, chunk, chunk))
    xy = rng.uniform(20, side - 20, size=(120, 2))
    tiles = cs.pp.SpotTiles(_points_sdata(image, xy), tile_um=20, tile_px=8, spot_diameter_um=10)
    tiles._chunk_cache = ChunkCache(max_bytes=12 * 3 * chunk * chunk)
    order = tiles.read_order()
    assert sorted(order.tolist()) == list(range(120))
    band = np.floor(tiles.boxes_px[order, 1] / chunk)
    block = np.stack([band // 2, np.floor(tiles.boxes_px[order, 0] / chunk) // 2], axis=1)
    visits = [tuple(b) for i, b in enumerate(block) if i == 0 or tuple(b) != tuple(block[i - 1])]
    assert visits == [(0, 0), (0, 1), (1, 1), (1, 0)]  # each block once, block rows both ways
    for b in visits:
        inside = (block == b).all(axis=1)
        assert (np.diff(band[inside]) >= 0).all()
        for r in np.unique(band[inside]):
            x = xy[order][inside & (band == r), 0]
            assert (np.diff(x if r % 2 == 0 else -x) >= 0).all()


def test_a_reader_copy_with_a_smaller_chunk_cache_reads_in_smaller_blocks():
    # What embedding gives each of many loader workers: a copy with its own, smaller cache; the user's
    # reader keeps its cache, the tiles are the same, and the copy's read order fits its blocks to it.
    from comtip_sc.pp._chunk_cache import CHUNK_CACHE_BYTES

    side, chunk = 256, 64
    rng = np.random.default_rng(1)
    image = da.from_array(rng.integers(0, 255, (3, side, side), dtype=np.uint8), chunks=(3, chunk, chunk))
    sdata = _points_sdata(image, rng.uniform(20, side - 20, size=(60, 2)))
    tiles = cs.pp.SpotTiles(sdata, tile_um=20, tile_px=8, spot_diameter_um=10)
    small = tiles.with_chunk_cache(12 * 3 * chunk * chunk)
    assert tiles._chunk_cache.max_bytes == CHUNK_CACHE_BYTES
    assert small._chunk_cache.max_bytes == 12 * 3 * chunk * chunk
    np.testing.assert_array_equal(small[7], tiles[7])
    assert len(tiles._chunk_cache) > 0 and small._chunk_cache is not tiles._chunk_cache
    assert not np.array_equal(small.read_order(), tiles.read_order())
    both = cs.pp.ContextTiles(tiles, cs.pp.SpotTiles(sdata, tile_um=40, tile_px=8, spot_diameter_um=10))
    halves = both.with_chunk_cache(2**20)
    assert halves.spot._chunk_cache.max_bytes == halves.context._chunk_cache.max_bytes == 2**19
    np.testing.assert_array_equal(halves[4], both[4])


def test_read_order_decodes_each_chunk_about_once(tmp_path):
    # 900 spots on a grid over 8 x 8 chunks, read with a cache of one chunk row: the read order decodes
    # each chunk about 1.5 times (bands by tile centre, swept one way: 1.9), the table's raster order 2.8.
    side, chunk = 512, 64
    image = da.from_array(np.full((3, side, side), 200, np.uint8), chunks=(3, chunk, chunk))
    g = np.linspace(12, side - 12, 30)
    xy = np.array([(x, y) for y in g for x in g])
    row_bytes = 3 * chunk * side

    def decodes(order):
        tiles = cs.pp.SpotTiles(_points_sdata(image, xy), tile_um=24, tile_px=8, spot_diameter_um=10)
        tiles._chunk_cache = ChunkCache(max_bytes=row_bytes)
        for i in order if order is not None else tiles.read_order():
            tiles[int(i)]
        return tiles._chunk_cache.decoded

    n_chunks = (side // chunk) ** 2
    assert decodes(None) <= 1.6 * n_chunks
    assert decodes(np.arange(len(xy))) > 2 * n_chunks


@pytest.mark.slow
def test_read_order_in_blocks_decodes_fewer_chunks_than_whole_bands():
    # 20 x 20 chunks, 3,600 spots, a cache of one chunk row (20 chunks): the read order's blocks of 3 x 3
    # chunks decode each chunk about 1.25 times; bands one chunk row high across the whole width, swept
    # both ways in turn, about 1.6 times with the same cache.
    side, chunk = 1280, 64
    image = da.from_array(np.full((3, side, side), 200, np.uint8), chunks=(3, chunk, chunk))
    g = np.linspace(12, side - 12, 60)
    xy = np.array([(x, y) for y in g for x in g])
    sdata = _points_sdata(image, xy)
    top = xy[:, 1] - 12
    band = np.floor(top / chunk)
    whole_bands = np.lexsort((top, np.where(band % 2 == 1, -xy[:, 0], xy[:, 0]), band))

    def decodes(order):
        tiles = cs.pp.SpotTiles(sdata, tile_um=24, tile_px=8, spot_diameter_um=10)
        tiles._chunk_cache = ChunkCache(max_bytes=20 * 3 * chunk * chunk)  # one chunk row
        for i in tiles.read_order() if order is None else order:
            tiles[int(i)]
        return tiles._chunk_cache.decoded / (side // chunk) ** 2

    assert decodes(None) <= 1.3 < 1.5 <= decodes(whole_bands)


def _points_sdata(image, xy):
    import anndata as ad
    import pandas as pd
    from spatialdata.models import Image2DModel, ShapesModel

    n = len(xy)
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(n, 5.0), transformations={"global": Identity()})
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n), "spot_id": np.arange(n)}, index=[f"s{i}" for i in range(n)]
    )
    table = TableModel.parse(
        ad.AnnData(np.zeros((n, 1), np.float32), obs=obs),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    img = Image2DModel.parse(image, dims=("c", "y", "x"), transformations={"global": Identity()})
    return sd.SpatialData(images={"img": img}, shapes={"spots": shapes}, tables={"table": table})


def test_border_tiles_are_padded_not_errors(toy):
    # A tile far larger than the margin must cross the image border.
    tiles = cs.pp.SpotTiles(toy, tile_um=600, tile_px=64)
    corner = tiles[0]
    assert corner.shape == (64, 64, 3)
    assert (corner == 255).all(axis=-1).any(), "expected white padding outside the image"


def test_coarse_level_matches_full_resolution(toy):
    # Small tiles are read from a coarser pyramid level; they must show the same field.
    tiles = cs.pp.SpotTiles(toy, tile_um=200, tile_px=16)
    levels = pyramid_levels(toy.images["toy_image"])
    assert len(levels) > 1, "toy image should be multiscale"
    coarse = tiles[10].astype(float)
    assert tiles._level_of[10] > 0  # the reader did choose a coarser level
    tiles._level_of[:] = 0  # force level 0
    fine = tiles[10].astype(float)
    assert np.abs(coarse - fine).mean() < 12.0


def test_tiles_are_lazy_on_zarr_backed_data(toy, tmp_path):
    toy.write(tmp_path / "toy.zarr")
    back = sd.read_zarr(tmp_path / "toy.zarr")
    tiles = cs.pp.SpotTiles(back, tile_um=150, tile_px=32)
    assert all(isinstance(a, da.Array) for a in tiles._images[0].arrays)
    image_bytes = _image_array(back, "toy_image").nbytes
    # A worker receives the task graph, not the pixels.
    assert len(pickle.dumps(tiles)) < image_bytes / 4
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tiles))[3], tiles[3])


def test_tile_cache_roundtrip_reuse_and_mismatch(toy, tmp_path):
    path = tmp_path / "tiles.zarr"
    direct = cs.pp.SpotTiles(toy, tile_um=150, tile_px=24).take()
    cached = cs.pp.cache_tiles(toy, path, tile_um=150, tile_px=24)
    np.testing.assert_array_equal(cached.take(), direct)
    np.testing.assert_array_equal(cached[5], direct[5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cached))[5], direct[5])
    again = cs.pp.cache_tiles(toy, path, tile_um=150, tile_px=24)
    assert again.path == cached.path
    with pytest.raises(ValueError, match="other settings"):
        cs.pp.cache_tiles(toy, path, tile_um=100, tile_px=24)
    rebuilt = cs.pp.cache_tiles(toy, path, tile_um=100, tile_px=24, overwrite=True)
    assert rebuilt.tile_um == 100
    assert [p.name for p in tmp_path.iterdir()] == ["tiles.zarr"], "no temporary folder may remain"


def test_table_annotating_no_shapes(toy):
    bad = sd.SpatialData(images=dict(toy.images), shapes=dict(toy.shapes))
    table = toy.tables["table"].copy()
    del table.uns["spatialdata_attrs"]
    bad.tables["table"] = table
    with pytest.raises(ValueError, match="annotates no shapes"):
        cs.pp.SpotTiles(bad)


def test_table_annotating_missing_element(toy):
    table = toy.tables["table"].copy()
    table.obs[REGION_KEY] = table.obs[REGION_KEY].cat.rename_categories({"toy_spots": "ghost_spots"})
    table.uns["spatialdata_attrs"]["region"] = "ghost_spots"
    bad = sd.SpatialData(images=dict(toy.images), shapes=dict(toy.shapes))
    bad.tables["table"] = table
    with pytest.raises(ValueError, match="ghost_spots"):
        cs.pp.SpotTiles(bad)


def test_no_image_in_shapes_coordinate_system(toy):
    shapes = toy.shapes["toy_spots"].copy()
    set_transformation(shapes, {"elsewhere": Identity()}, set_all=True)
    bad = sd.SpatialData(
        images=dict(toy.images), shapes={"toy_spots": shapes}, tables={"table": toy.tables["table"].copy()}
    )
    with pytest.raises(ValueError, match=r"no image element.*toy_spots|toy_spots.*no image element"):
        cs.pp.SpotTiles(bad)
    # The user's object is untouched.
    assert "toy" in get_transformation(toy.shapes["toy_spots"], get_all=True)


def test_spots_without_coordinates(toy):
    table = toy.tables["table"].copy()
    table.obs[INSTANCE_KEY] = table.obs[INSTANCE_KEY].to_numpy() + 10_000
    bad = sd.SpatialData(images=dict(toy.images), shapes=dict(toy.shapes))
    bad.tables["table"] = TableModel.parse(
        table, region="toy_spots", region_key=REGION_KEY, instance_key=INSTANCE_KEY, overwrite_metadata=True
    )
    with pytest.raises(ValueError, match="no coordinates"):
        cs.pp.SpotTiles(bad)


def test_duplicated_spot_ids(toy):
    table = toy.tables["table"].copy()
    names = table.obs_names.to_numpy().copy()
    names[1] = names[0]
    table.obs_names = names
    bad = sd.SpatialData(images=dict(toy.images), shapes=dict(toy.shapes), tables={"table": table})
    with pytest.raises(ValueError, match="duplicated spot ids"):
        cs.pp.SpotTiles(bad)


def test_negative_counts_named():
    import anndata as ad

    adata = ad.AnnData(np.array([[1, 2], [3, -1]], dtype=np.float32))
    adata.obs_names = ["s1", "s2"]
    adata.var_names = ["G1", "G2"]
    with pytest.raises(ValueError, match=r"'s2'.*'G2'"):
        check_counts(adata)
    adata.X[1, 1] = np.nan
    with pytest.raises(ValueError, match="negative or NaN"):
        check_counts(adata)


def test_montage_renders(toy, tmp_path):
    out = tmp_path / "montage.png"
    fig = cs.pl.tiles(
        toy, n=6, tile_um=150, tile_px=32, color="tissue_type", save=out, show=False, return_fig=True
    )
    assert out.stat().st_size > 1000
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and all(t.split("\n")[0] in toy.tables["table"].obs_names for t in titles)


def test_montage_takes_spot_diameter_when_table_lacks_it():
    bare = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    del bare.tables["table"].uns["comtip"]["spot_diameter_um"]
    with pytest.raises(ValueError, match="spot_diameter_um="):
        cs.pl.tiles(bare, n=4, tile_um=100, tile_px=32, show=False)
    # The toy records 55 µm spots; passing the same diameter gives the same spots, tiles and pixels.
    fig = cs.pl.tiles(bare, n=4, tile_um=100, tile_px=32, spot_diameter_um=55.0, show=False, return_fig=True)
    full = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    ref = cs.pl.tiles(full, n=4, tile_um=100, tile_px=32, show=False, return_fig=True)
    got = [im.get_array() for ax in fig.axes for im in ax.get_images()]
    want = [im.get_array() for ax in ref.axes for im in ax.get_images()]
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_tile_cache_in_memory_and_on_disk_agree(toy, tmp_path):
    path = tmp_path / "tiles.zarr"
    cs.pp.cache_tiles(toy, path, tile_um=150, tile_px=24)
    from comtip_sc.pp._tile_cache import CachedTiles

    memory, disk = CachedTiles(path, in_memory=True), CachedTiles(path, in_memory=False)
    np.testing.assert_array_equal(memory.take([4, 1]), disk.take([4, 1]))
    np.testing.assert_array_equal(memory[2], disk[2])
    assert isinstance(memory._tiles(), np.ndarray) and not isinstance(disk._tiles(), np.ndarray)
    tile = memory[2]
    tile[:] = 0  # a caller's edit must not reach the cache
    np.testing.assert_array_equal(memory[2], disk[2])
    # Pickling (data-loader workers, spawned DDP ranks) ships the path, not the loaded array.
    assert pickle.loads(pickle.dumps(memory))._array is None


def test_lazy_tile_cache_reads_through_a_bounded_chunk_lru(toy, tmp_path):
    from comtip_sc.pp._tile_cache import CHUNK_LRU, CachedTiles

    path = tmp_path / "tiles.zarr"
    cs.pp.cache_tiles(toy, path, tile_um=150, tile_px=24, num_workers=0)
    memory, disk = CachedTiles(path, in_memory=True), CachedTiles(path, in_memory=False)
    order = np.random.default_rng(0).permutation(len(memory))
    for i in order:
        np.testing.assert_array_equal(disk[int(i)], memory[int(i)])
        assert len(disk._lru) <= CHUNK_LRU
    np.testing.assert_array_equal(disk[-1], memory[len(memory) - 1])
    with pytest.raises(IndexError, match="out of range"):
        disk[len(memory)]
    # A reader copied into a worker starts with no decoded chunks.
    assert pickle.loads(pickle.dumps(disk))._lru is None
    # The default reads a cache this small into memory.
    default = CachedTiles(path)
    default[0]
    assert isinstance(default._tiles(), np.ndarray)


@pytest.mark.parametrize("colour_norm", [None, "section"])
def test_parallel_tile_cache_equals_serial_byte_for_byte(tmp_path, colour_norm):
    import zarr

    # 9 x 9 spots = 81 tiles: 6 chunks, the last one partial.
    sdata = cs.datasets.toy_tissue(n_rows=9, n_cols=9, n_genes=20, seed=3)
    kw = {"tile_um": 120, "tile_px": 20, "colour_norm": colour_norm}
    cs.pp.cache_tiles(sdata, tmp_path / "serial.zarr", num_workers=0, **kw)
    cs.pp.cache_tiles(sdata, tmp_path / "parallel.zarr", num_workers=2, **kw)
    serial = zarr.open_group(str(tmp_path / "serial.zarr"), mode="r")
    parallel = zarr.open_group(str(tmp_path / "parallel.zarr"), mode="r")
    a, b = serial["tiles"][:], parallel["tiles"][:]
    assert a.shape == (81, 20, 20, 3) and a.dtype == b.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert dict(serial.attrs) == dict(parallel.attrs)
    np.testing.assert_array_equal(a, cs.pp.SpotTiles(sdata, **kw).take())


def test_training_augmentation_is_a_tile_symmetry():
    from comtip_sc.train._datamodule import SentenceCollate

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    items = [(t, np.zeros(2, np.float32), np.arange(2), 0) for t in tiles]
    plain = SentenceCollate((0.5,) * 3, (0.25,) * 3)(items)["image"]
    torch.manual_seed(0)
    augmented = SentenceCollate((0.5,) * 3, (0.25,) * 3, augment=True)(items)["image"]
    np.testing.assert_allclose(plain[0, :, 0, 0].numpy(), (tiles[0, 0, 0] / 255 - 0.5) / 0.25, rtol=1e-5)
    seen = set()
    for p, a in zip(plain, augmented, strict=True):
        variants = [torch.rot90(p, k, dims=(1, 2)) for k in range(4)]
        variants += [torch.flip(v, dims=(2,)) for v in variants]
        hits = [i for i, v in enumerate(variants) if torch.allclose(v, a)]
        assert hits, "an augmented tile is not a rotation/flip of its input"
        seen.add(hits[0])
    assert len(seen) > 2  # the 8 symmetries are actually drawn


def _rescanned(sdata, gain, offset):
    """``sdata`` with its image re-scanned darker/brighter: every pixel ``gain·x + offset`` (uint8)."""
    from spatialdata.models import Image2DModel

    name = next(iter(sdata.images))
    arr = _image_array(sdata, name).astype(np.float64)
    image = Image2DModel.parse(
        np.clip(gain * arr + offset, 0, 255).astype(np.uint8),
        dims=("c", "y", "x"),
        scale_factors=[2],
        transformations=get_transformation(sdata.images[name], get_all=True),
    )
    return sd.SpatialData(images={name: image}, shapes=dict(sdata.shapes), tables=dict(sdata.tables))


def test_section_colour_norm_undoes_a_scan_brightness_change(toy):
    kw = {"tile_um": 100, "tile_px": 24, "colour_norm": "section"}
    base = cs.pp.SpotTiles(toy, **kw).take().astype(float)
    darker = cs.pp.SpotTiles(_rescanned(toy, 0.7, 20.0), **kw).take().astype(float)
    raw = cs.pp.SpotTiles(_rescanned(toy, 0.7, 20.0), tile_um=100, tile_px=24).take().astype(float)
    plain = cs.pp.SpotTiles(toy, tile_um=100, tile_px=24).take().astype(float)
    assert np.abs(raw - plain).mean() > 10  # the re-scan really changed the tiles ...
    assert np.abs(darker - base).mean() < 1.5  # ... and the normalised tiles agree up to uint8 rounding
    # The tiles of the image land on the reference colour.
    pix = base.reshape(-1, 3)
    np.testing.assert_allclose(pix.mean(0), COLOUR_REF_MEAN, atol=2)
    np.testing.assert_allclose(pix.std(0), COLOUR_REF_STD, rtol=0.05)


def test_colour_norm_is_part_of_the_tile_cache(toy, tmp_path):
    path = tmp_path / "tiles.zarr"
    cached = cs.pp.cache_tiles(toy, path, tile_um=100, tile_px=16, colour_norm="section")
    assert cached.colour_norm == "section"
    np.testing.assert_array_equal(
        cached.take(), cs.pp.extract_tiles(toy, tile_um=100, tile_px=16, colour_norm="section")
    )
    with pytest.raises(ValueError, match="colour_norm='section'"):
        cs.pp.cache_tiles(toy, path, tile_um=100, tile_px=16)
    with pytest.raises(ValueError, match="colour_norm must be one of"):
        cs.pp.SpotTiles(toy, tile_um=100, tile_px=16, colour_norm="macenko")


def test_model_applies_its_colour_norm_after_save_and_load(toy, tiny_config, tmp_path):
    from comtip_sc.model import ComtipModel, build_network

    genes = toy.tables["table"].var_names[:5].tolist()
    net = build_network(tiny_config, genes)
    ComtipModel(net, panel=genes, tile_um=100, tile_px=32, colour_norm="section").save(tmp_path / "m")
    model = ComtipModel.load(tmp_path / "m")
    assert model.colour_norm == "section" and model.tiles(toy).colour_norm == "section"
    a = cs.tl.comtip_embed(toy, model, copy=True).tables["table"].obsm["X_comtip"]
    b = cs.tl.comtip_embed(_rescanned(toy, 0.7, 20.0), model, copy=True).tables["table"].obsm["X_comtip"]
    assert (a * b).sum(1).min() > 0.99  # the darker scan embeds (almost) like the original


def test_a_model_saved_with_data_settings_in_its_config_loads(toy, tiny_config, tmp_path):
    # Models of version 0.1 stored colour_norm and the jitter inside the network config, not beside it.
    import json

    from comtip_sc.model import ComtipModel, build_network

    genes = toy.tables["table"].var_names[:5].tolist()
    ComtipModel(build_network(tiny_config, genes), panel=genes, tile_um=100, tile_px=32).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("colour_norm", "context_scale"):
        del meta[key]
    del meta["config"]["context_tile"]
    meta["config"].update(colour_norm="section", stain_jitter=0.05, colour_jitter=0.1, context_scale=None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    model = ComtipModel.load(tmp_path / "m")
    assert model.colour_norm == "section" and model.context_scale is None
    assert model.config == tiny_config.replace(pretrained=False, checkpoint_path=None)


def test_montage_shows_colour_standardised_tiles(toy):
    fig = cs.pl.tiles(
        toy, n=4, tile_um=100, tile_px=16, colour_norm="section", seed=3, show=False, return_fig=True
    )
    spots = [ax.get_title() for ax in fig.axes if ax.get_title()]
    shown = np.stack([im.get_array() for ax in fig.axes for im in ax.get_images()])
    want = cs.pp.extract_tiles(toy, tile_um=100, tile_px=16, spots=spots, colour_norm="section")
    np.testing.assert_array_equal(shown, want)
    assert "colour standardised" in fig._suptitle.get_text()


def test_embedding_in_read_order_comes_back_in_table_order(tiny_model):
    sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=7, sample_id="other")
    tiles = tiny_model.tiles(sdata)
    assert not np.array_equal(tiles.read_order(), np.arange(len(tiles)))  # the order differs from the table's
    got = tiny_model.encode_images(tiles, batch_size=5)
    # A plain array of the same tiles has no read order: it is encoded in table order.
    np.testing.assert_allclose(got, tiny_model.encode_images(tiles.take(), batch_size=5), atol=1e-5)
    # Two loader workers, each reading its own stretch of the read order (7 batches: 4 + 3).
    two = tiny_model.encode_images(tiles, batch_size=5, num_workers=2)
    np.testing.assert_allclose(two, got, atol=1e-5)


@pytest.mark.parametrize(("n_batches", "workers"), [(8, 2), (10, 4), (13, 5), (3, 4), (5, 1)])
def test_each_loader_worker_reads_one_stretch_of_the_read_order(n_batches, workers):
    order = np.random.default_rng(n_batches).permutation(3 * n_batches - 1)  # a short last batch
    batches = worker_stretches(order, 3, workers)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(order)))
    # A data loader hands batch j to worker j % workers: each worker's batches, in turn, are one
    # contiguous stretch of the order.
    for w in range(min(workers, len(batches))):
        mine = np.concatenate(batches[w::workers])
        start = int(np.flatnonzero(order == mine[0])[0])
        assert np.array_equal(mine, order[start : start + len(mine)])
