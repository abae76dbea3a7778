"""Bad inputs get a clear error naming what is at fault, or a documented, logged fallback (docs/bad_inputs.md)."""

import ast
import json
import logging
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import shapely
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, get_transformation, set_transformation

import comtip_sc as cs
from comtip_sc._predictions import get_predictions
from comtip_sc.model._comtip_model import FORMAT_VERSION, ComtipModel

ROOT = Path(__file__).resolve().parents[1]


def _toy(seed=0, **kw):
    return cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=seed, **kw)


@pytest.fixture
def fit(tiny_config, tmp_path):
    def run(sdata, **kw):
        return cs.tl.fit(
            sdata, config=tiny_config, tile_um=100, batch_size=16, seed=0, max_epochs=1,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw,
        )  # fmt: skip

    return run


def _with_counts(change):
    sdata = _toy()
    table = sdata.tables["table"]
    X = table.X.toarray().astype(np.float64)
    change(X)
    table.X = X
    return sdata, table


# ------------------------------------------------------------------ counts and genes
def test_nan_counts(fit):
    sdata, table = _with_counts(lambda X: X.__setitem__((2, 3), np.nan))
    with pytest.raises(ValueError, match=rf"negative or NaN.*{table.obs_names[2]}.*{table.var_names[3]}"):
        fit(sdata)


def test_negative_counts(fit):
    sdata, table = _with_counts(lambda X: X.__setitem__((4, 1), -2))
    with pytest.raises(ValueError, match=rf"{table.obs_names[4]}.*{table.var_names[1]}.*-2"):
        fit(sdata)


def test_non_integer_counts(fit):
    sdata, table = _with_counts(lambda X: X.__setitem__((5, 7), 0.5))
    with pytest.raises(ValueError, match=rf"non-integer.*{table.obs_names[5]}.*{table.var_names[7]}.*layer="):
        fit(sdata)


def test_normalised_layer_is_accepted_where_counts_are_not(fit, tiny_config):
    sdata = _toy()
    cs.pp.normalize(sdata)  # writes a float layer
    model = fit(sdata, layer="comtip_norm")
    assert model.normalization["layer"] == "comtip_norm"


def _dup_genes(sdata):
    names = sdata.tables["table"].var_names.tolist()
    names[5] = names[4]
    sdata.tables["table"].var_names = names
    return names[4]


def test_duplicated_gene_names_fit(fit):
    sdata = _toy()
    gene = _dup_genes(sdata)
    with pytest.raises(ValueError, match=rf"duplicated gene name.*{gene}"):
        fit(sdata)


def test_duplicated_gene_names_predict(tiny_model):
    sdata = _toy(seed=3)
    gene = _dup_genes(sdata)
    with pytest.raises(ValueError, match=rf"duplicated gene name.*{gene}"):
        cs.tl.comtip_predict(sdata, tiny_model)
    assert "comtip_pred" not in sdata.tables["table"].layers


def test_gene_ids_of_another_namespace_at_predict(tiny_model):
    sdata = _toy(seed=3)
    sdata.tables["table"].var_names = [f"ENSG{i:011d}" for i in range(30)]
    with pytest.raises(ValueError, match=r"ENSG.*name genes differently"):
        cs.tl.comtip_predict(sdata, tiny_model)
    assert "comtip_pred" not in sdata.tables["table"].layers  # refused before anything is written


def test_model_genes_partly_missing_from_the_data(tiny_model, caplog):
    sdata = _toy(seed=3)
    sdata.tables["table"] = sdata.tables["table"][:, 10:].copy()
    table = sdata.tables["table"]
    with caplog.at_level(logging.WARNING, logger="comtip_sc.tl._predict"):
        cs.tl.comtip_predict(sdata, tiny_model)
    lacking = [g for g in tiny_model.panel if g not in table.var_names]
    assert len(lacking) == 10 and "10 of the 30 predicted genes are not in the table" in caplog.text
    pred = get_predictions(table, "comtip_pred")
    assert list(pred.columns) == list(tiny_model.panel) and np.isfinite(pred.to_numpy()).all()
    assert table.uns["comtip"]["predict"]["comtip_pred"]["unmeasured_genes"] == lacking


def test_requested_training_genes_partly_missing(fit, caplog):
    sdata = _toy()
    genes = [*sdata.tables["table"].var_names[:5], "NOT_A_GENE"]
    with caplog.at_level(logging.WARNING, logger="comtip_sc.train"):
        model = fit(sdata, genes=genes)
    assert model.panel == genes[:5] and "NOT_A_GENE" in caplog.text


# ------------------------------------------------------------------ table shapes
def test_empty_table_no_genes(fit):
    sdata = _toy()
    sdata.tables["table"] = sdata.tables["table"][:, :0].copy()
    with pytest.raises(ValueError, match=r"36 spot\(s\) and 0 gene\(s\)"):
        fit(sdata)


def test_empty_table_no_spots(fit):
    sdata = _toy()
    empty = sdata.tables["table"][:0].copy()
    with pytest.raises(TypeError, match="AnnData"):
        fit(empty)  # a table alone has no image to tile
    with pytest.raises(ValueError, match=r"Regions .* do not match"):
        sdata.tables["table"] = empty  # spatialdata refuses an annotating table with no rows


def test_single_spot_fit(fit):
    sdata = _toy()
    sdata.tables["table"] = sdata.tables["table"][:1].copy()
    with pytest.raises(ValueError, match=r"1 spot\(s\).*at least 2 spots"):
        fit(sdata)


def test_single_spot_predict(tiny_model):
    sdata = _toy(seed=3)
    sdata.tables["table"] = sdata.tables["table"][:1].copy()
    for method in ("retrieval", "head"):
        cs.tl.comtip_predict(sdata, tiny_model, method=method)
        assert np.isfinite(get_predictions(sdata.tables["table"], "comtip_pred").to_numpy()).all()


def test_single_gene(tiny_model, fit):
    sdata = _toy(seed=3)
    sdata.tables["table"] = sdata.tables["table"][:, :1].copy()
    cs.tl.comtip_predict(sdata, tiny_model)
    assert np.isfinite(get_predictions(sdata.tables["table"], "comtip_pred").to_numpy()).all()
    assert len(fit(sdata).panel) == 1


# ------------------------------------------------------------------ images and geometry
def _with_image(change):
    sdata = _toy(seed=3)
    el = sdata.images["toy_image"]
    rgb = np.asarray(el["scale0"]["image"].values)  # (c, y, x) uint8
    new = Image2DModel.parse(
        change(rgb), dims=("c", "y", "x"), transformations=get_transformation(el, get_all=True)
    )
    sdata.images["toy_image"] = new
    return sdata, rgb


def _tiles(sdata):
    return cs.pp.extract_tiles(sdata, tile_um=100, tile_px=16)


def test_spot_tile_fully_outside_the_image():
    sdata = _toy(seed=3)
    shapes = sdata.shapes["toy_spots"]
    shapes.loc[shapes.index[2], "geometry"] = shapely.Point(50_000, 50_000)
    spot = sdata.tables["table"].obs_names[2]
    with pytest.raises(ValueError, match=rf"entirely outside image 'toy_image'.*{spot}"):
        _tiles(sdata)


def test_image_with_alpha_channel():
    sdata, _ = _with_image(lambda a: np.concatenate([a, np.full_like(a[:1], 128)]))
    np.testing.assert_array_equal(_tiles(sdata), _tiles(_with_image(lambda a: a)[0]))


def test_grayscale_image():
    sdata, _ = _with_image(lambda a: a[1:2])
    tiles = _tiles(sdata)
    assert (tiles[..., 0] == tiles[..., 1]).all() and (tiles[..., 1] == tiles[..., 2]).all()
    reference = _tiles(_with_image(lambda a: np.repeat(a[1:2], 3, axis=0))[0])
    np.testing.assert_array_equal(tiles, reference)


def test_uint16_image():
    sdata, _ = _with_image(lambda a: a.astype(np.uint16) * 257)
    np.testing.assert_array_equal(_tiles(sdata), _tiles(_with_image(lambda a: a)[0]))


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_float_image(top):
    sdata, _ = _with_image(lambda a: a.astype(np.float32) * (top / 255.0))
    diff = np.abs(_tiles(sdata).astype(int) - _tiles(_with_image(lambda a: a)[0]).astype(int))
    assert diff.max() <= 1


def test_image_with_unreadable_channels():
    sdata, _ = _with_image(lambda a: np.concatenate([a, a[:2]]))
    with pytest.raises(ValueError, match=r"'toy_image' has 5 channels"):
        _tiles(sdata)


def test_shapes_and_image_in_different_coordinate_systems():
    sdata = _toy(seed=3)
    set_transformation(sdata.images["toy_image"], {"elsewhere": Identity()}, set_all=True)
    with pytest.raises(ValueError, match=r"'toy_spots' lives in coordinate system\(s\) \['toy'\].*no image"):
        _tiles(sdata)


def test_tile_um_under_one_pixel():
    with pytest.raises(ValueError, match=r"tile_um=0.2 is under one pixel of image 'toy_image'"):
        cs.pp.SpotTiles(_toy(seed=3), tile_um=0.2, tile_px=16)


def test_tile_um_larger_than_the_image():
    with pytest.raises(ValueError, match=r"tile_um=5000 .* larger than image 'toy_image'"):
        cs.pp.SpotTiles(_toy(seed=3), tile_um=5000, tile_px=16)


# ------------------------------------------------------------------ saved models
@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    tiny_model.save(path)
    return path


def _copy(saved, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(saved, out)
    return out


def test_truncated_saved_model(saved, tmp_path):
    path = _copy(saved, tmp_path)
    data = (path / "reference.safetensors").read_bytes()
    (path / "reference.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"reference\.safetensors is truncated or corrupt"):
        ComtipModel.load(path)


def test_corrupted_saved_model_config(saved, tmp_path):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    del meta["panel"]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config\.json is corrupt: it lacks the entries \['panel'\]"):
        ComtipModel.load(path)
    (path / "config.json").write_text((saved / "config.json").read_text()[:100])
    with pytest.raises(ValueError, match=r"config\.json is truncated or corrupt"):
        ComtipModel.load(path)


def test_model_saved_by_a_newer_format_version(saved, tmp_path):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    newer = FORMAT_VERSION + 1
    meta["format_version"], meta["comtip_sc_version"] = newer, "9.0.0"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"newer comtip_sc \(9\.0\.0\) in model format {newer}.*Upgrade"):
        ComtipModel.load(path)


# ------------------------------------------------------------------ stores and caches
def _chmod_tree(path: Path, writable: bool) -> None:
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_zarr_store(tiny_model, tmp_path):
    store = tmp_path / "ro.zarr"
    _toy(seed=3).write(store)
    _chmod_tree(store, writable=False)
    try:
        sdata = sd.read_zarr(store)
        cs.tl.comtip_embed(sdata, tiny_model)  # reading and computing in memory work
        with pytest.raises(PermissionError, match=rf"{re.escape(str(store))} is read-only"):
            cs.tl.comtip_predict(sdata, tiny_model, write=True)
        assert "comtip_pred" not in sdata.tables["table"].layers  # refused before any work
    finally:
        _chmod_tree(store, writable=True)


def test_write_needs_a_backed_spatialdata(tiny_model):
    with pytest.raises(ValueError, match=r"not backed by a zarr store"):
        cs.tl.comtip_embed(_toy(seed=3), tiny_model, write=True)


def test_tile_cache_of_another_tile_size(tmp_path):
    cs.pp.cache_tiles(_toy(), tmp_path / "c.zarr", tile_um=100, tile_px=16)
    with pytest.raises(ValueError, match=r"other settings or spots \(tile_um=100.0, tile_px=16"):
        cs.pp.cache_tiles(_toy(), tmp_path / "c.zarr", tile_um=100, tile_px=24)


def test_tile_cache_of_other_data(tmp_path):
    cs.pp.cache_tiles(_toy(seed=0), tmp_path / "c.zarr", tile_um=100, tile_px=16)
    # Same spot ids and settings, another section: the ids alone would let stale tiles through.
    with pytest.raises(ValueError, match=r"cut from other data"):
        cs.pp.cache_tiles(_toy(seed=1), tmp_path / "c.zarr", tile_um=100, tile_px=16)


def test_tile_cache_is_shared_by_trunks_with_the_same_tile_px(tmp_path):
    first = cs.pp.cache_tiles(_toy(), tmp_path / "c.zarr", tile_um=100, tile_px=16)
    again = cs.pp.cache_tiles(_toy(), tmp_path / "c.zarr", tile_um=100, tile_px=16)
    np.testing.assert_array_equal(first.take(), again.take())


# ------------------------------------------------------------------ the table in the docs
def _documented_ids() -> list[str]:
    text = (ROOT / "docs" / "bad_inputs.md").read_text()
    return re.findall(r"`(tests/[\w/]+\.py::[\w\[\].-]+)`", text)


def test_docs_table_names_existing_tests():
    ids = _documented_ids()
    assert len(ids) >= 25
    missing = []
    for node in ids:
        file, name = node.split("::")
        tree = ast.parse((ROOT / file).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name.split("[")[0] not in defined:
            missing.append(node)
    assert not missing, f"docs/bad_inputs.md names tests that do not exist: {missing}"
