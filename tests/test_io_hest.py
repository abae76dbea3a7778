"""cs.io.read_hest on samples written in HEST-1k's layout: lazy image, spots, counts, then tiles and a fit."""

from __future__ import annotations

import json

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import tifffile

import comtip_sc as cs

UM_PER_PX = 0.5


def write_hest_sample(root, sample_id: str, n_genes: int, seed: int) -> ad.AnnData:
    """A toy section converted to HEST's layout: st/<id>.h5ad, wsis/<id>.tif (pyramidal), metadata/<id>.json.

    The toy tissue is drawn at 1 µm/px; the slide here is upsampled 2x (0.5 µm/px, as HEST's scans).
    """
    toy = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=n_genes, seed=seed, sample_id=sample_id)
    rgb = np.moveaxis(np.asarray(toy.images[f"{sample_id}_image"]["scale0"]["image"]), 0, -1)
    rgb = rgb.repeat(2, 0).repeat(2, 1)
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(exist_ok=True)
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif") as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", subifds=2)
        tif.write(rgb[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
        tif.write(rgb[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    table = toy.tables["table"]
    st = ad.AnnData(table.X.copy(), var=table.var[[]].copy())
    st.obs_names = table.obs["spot_id"].astype(str).to_numpy()
    st.obsm["spatial"] = np.asarray(table.obsm["spatial"]) * 2  # full-resolution pixels
    st.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    meta = {"pixel_size_um_estimated": UM_PER_PX, "spot_diameter": 55.0, "inter_spot_dist": 100.0,
            "st_technology": "Visium", "organ": "Toy", "dataset_title": None}  # fmt: skip
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta))
    return st


def test_read_hest_lazily_in_the_documented_layout(tmp_path):
    st = write_hest_sample(tmp_path, "S1", n_genes=30, seed=0)
    sdata = cs.io.read_hest(tmp_path, "S1")
    image = sdata.images["S1_image"]
    assert isinstance(image.data, da.Array)  # nothing read yet
    with tifffile.TiffFile(tmp_path / "wsis" / "S1.tif") as tif:
        level0 = tif.series[0].levels[0].asarray()
        assert len(tif.series[0].levels) == 3  # a pyramid, as HEST's slides
    np.testing.assert_array_equal(
        np.moveaxis(image.data[:, 300:340, 200:260].compute(), 0, -1), level0[300:340, 200:260]
    )
    table = sdata.tables["table"]
    np.testing.assert_array_equal(table.X.toarray(), st.X.toarray())  # raw counts, as stored
    assert table.uns["comtip"]["spot_diameter_um"] == {"S1": 55.0}
    assert table.uns["comtip"]["um_per_px"] == {"S1": UM_PER_PX}
    assert table.uns["comtip"]["hest"]["S1"]["st_technology"] == "Visium"
    spots = sdata.shapes["S1_spots"]
    np.testing.assert_allclose(spots.radius, 55.0 / 2 / UM_PER_PX)  # diameter in pixels
    np.testing.assert_allclose(np.c_[spots.geometry.x, spots.geometry.y], st.obsm["spatial"])
    # Tiles cut from the lazy slide equal tiles of the same tissue read in memory.
    tiles = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=32)
    assert tiles[0].shape == (32, 32, 3) and tiles[0].std() > 0
    # Every sample of the folder, in order; a missing file is named.
    write_hest_sample(tmp_path, "S2", n_genes=20, seed=1)
    both = cs.io.read_hest(tmp_path)
    assert [s.tables["table"].obs["sample"].iloc[0] for s in both] == ["S1", "S2"]
    (tmp_path / "metadata" / "S2.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"S2.*metadata"):
        cs.io.read_hest(tmp_path, ["S1", "S2"])


def test_fit_on_two_hest_samples_with_different_genes(tmp_path, tiny_config):
    write_hest_sample(tmp_path, "A", n_genes=30, seed=0)
    write_hest_sample(tmp_path, "B", n_genes=22, seed=1)
    samples = cs.io.read_hest(tmp_path, ["A", "B"])
    genes = [set(s.tables["table"].var_names) for s in samples]
    assert genes[0] != genes[1]
    model = cs.tl.fit(
        samples, config=tiny_config, n_top_genes=15, max_epochs=1, batch_size=16, tile_um=100,
        accelerator="cpu", enable_progress_bar=False, default_root_dir=str(tmp_path), seed=0,
    )  # fmt: skip
    assert model.history["epochs"] >= 0 and len(model.history["sections"]) == 2
    assert len(model.reference.embeddings) == sum(s.tables["table"].n_obs for s in samples)
