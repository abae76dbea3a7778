"""The trunk-token cache: what it stores, when it is reused or rebuilt, and training on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import comtip_sc as cs
from comtip_sc.model._trunk import create_backbone
from comtip_sc.model._vision import VisionBranch
from comtip_sc.pp._feature_cache import DIHEDRAL_VIEWS, dihedral_view

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vision(seed: int = 0) -> VisionBranch:
    torch.manual_seed(seed)
    return VisionBranch(
        create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32, freeze="all"
    )


@pytest.fixture(scope="module")
def tiles():
    sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=4, n_genes=20, seed=0)
    return cs.pp.SpotTiles(sdata, tile_um=100, tile_px=64)


def test_cached_tokens_are_the_trunk_tokens_of_every_view(tiles, tmp_path) -> None:
    vb = _vision().eval()
    tok = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "t.zarr", mean=MEAN, std=STD, batch_size=5)
    assert len(tok) == len(tiles) and tok.views == DIHEDRAL_VIEWS
    stack = np.stack([tiles[i] for i in range(len(tiles))])
    for v in (0, 3, 5):
        x = torch.from_numpy(np.ascontiguousarray(dihedral_view(stack, v))).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            want = vb.trunk_tokens(x).numpy()
        got = np.stack([tok[i][v] for i in range(len(tok))]).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # float16 storage
    # The views differ: a rotated tile is not the same input.
    assert not np.allclose(tok[0][0], tok[0][1])


def test_cache_is_reused_only_for_the_same_trunk_tiles_and_spots(tiles, tmp_path) -> None:
    path = tmp_path / "t.zarr"
    vb = _vision()
    first = cs.pp.cache_trunk_tokens(tiles, vb, path, mean=MEAN, std=STD, views=2)
    before = first[0]  # read now: a CachedTokens reads whatever is at its path
    stamp = (path / "zarr.json").stat().st_mtime_ns
    again = cs.pp.cache_trunk_tokens(tiles, vb, path, mean=MEAN, std=STD, views=2)
    assert again.key == first.key and (path / "zarr.json").stat().st_mtime_ns == stamp
    # Other weights (one BatchNorm statistic changed): rebuilt, with another weights hash.
    other = _vision()
    with torch.no_grad():
        next(m for m in other.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean += 1
    rebuilt = cs.pp.cache_trunk_tokens(tiles, other, path, mean=MEAN, std=STD, views=2)
    assert rebuilt.key["weights"] != first.key["weights"]
    assert not np.array_equal(rebuilt[0], before)
    # Other views, other tiles (size) or other spots: each rebuilds.
    assert cs.pp.cache_trunk_tokens(tiles, vb, path, mean=MEAN, std=STD, views=3).views == 3
    sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=4, n_genes=20, seed=0)
    wide = cs.pp.SpotTiles(sdata, tile_um=150, tile_px=64)
    assert cs.pp.cache_trunk_tokens(wide, vb, path, mean=MEAN, std=STD, views=1).key["tile_um"] == 150
    fewer = cs.pp.SpotTiles(cs.pp.subset_sections(sdata, np.arange(12) < 6), tile_um=150, tile_px=64)
    assert len(cs.pp.cache_trunk_tokens(fewer, vb, path, mean=MEAN, std=STD, views=1)) == 6
    # Same spot ids and tile size, other pixels (another section): rebuilt.
    other_section = cs.pp.SpotTiles(
        cs.datasets.toy_tissue(n_rows=3, n_cols=4, n_genes=20, seed=1), tile_um=150, tile_px=64
    )
    assert list(other_section.obs_names) == list(wide.obs_names)
    before = cs.pp.cache_trunk_tokens(wide, vb, path, mean=MEAN, std=STD, views=1).key
    assert cs.pp.cache_trunk_tokens(other_section, vb, path, mean=MEAN, std=STD, views=1).key != before


def test_cache_needs_a_frozen_trunk(tiles, tmp_path) -> None:
    vb = VisionBranch(create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32)
    with pytest.raises(ValueError, match="frozen trunk"):
        cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "t.zarr", mean=MEAN, std=STD)


def test_fit_trains_on_cached_tokens_and_embeds_like_pixels(tmp_path, frozen_cnn_config, fit_quiet) -> None:
    sdata = cs.datasets.toy_tissue(n_rows=5, n_cols=5, n_genes=20, seed=0)
    model = fit_quiet(sdata, frozen_cnn_config(), max_epochs=2, tile_cache=str(tmp_path / "cache"))
    # The default for a frozen trunk under a token transformer: tokens cached beside the tiles.
    assert (tmp_path / "cache" / "dataset0_tokens.zarr").is_dir()
    assert model.history["global_steps"] == 2 * (25 // 8)
    # The bank's image embeddings (from cached view 0) match embedding the tiles through the trunk.
    cs.tl.comtip_embed(sdata, model, accelerator="cpu")
    emb = sdata.tables["table"].obsm["X_comtip"]
    np.testing.assert_allclose(emb, model.reference.image_embeddings, atol=5e-3)


def test_fit_feature_cache_refuses_what_it_cannot_cache(tmp_path, frozen_cnn_config) -> None:
    sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20, seed=0)
    kw = dict(tile_um=100, max_epochs=1, enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="frozen trunk"):
        cs.tl.fit(sdata, config=frozen_cnn_config(freeze_backbone="none"), feature_cache=True, **kw)


def test_token_cache_read_lazily_equals_in_memory(tiles, tmp_path) -> None:
    from comtip_sc.pp._tile_cache import CHUNK_LRU

    path = tmp_path / "t.zarr"
    cs.pp.cache_trunk_tokens(tiles, _vision().eval(), path, mean=MEAN, std=STD, views=2, batch_size=5)
    memory = cs.pp.CachedTokens(path, in_memory=True)
    disk = cs.pp.CachedTokens(path, in_memory=False)
    for i in np.random.default_rng(0).permutation(len(memory)):
        np.testing.assert_array_equal(disk[int(i)], memory[int(i)])
        assert len(disk._lru) <= CHUNK_LRU
    assert isinstance(memory._array, np.ndarray) and not isinstance(disk._array, np.ndarray)
    item = disk[3]
    item[:] = 0  # a caller's edit must not reach the decoded chunk
    np.testing.assert_array_equal(disk[3], memory[3])


def test_jittered_token_cache_keeps_view_0_and_jitters_the_others(tiles, tmp_path) -> None:
    vb = _vision().eval()
    plain = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "p.zarr", mean=MEAN, std=STD, views=3)
    kw = dict(mean=MEAN, std=STD, views=3, stain_jitter=0.1, colour_jitter=0.1)
    jit = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "j.zarr", **kw)
    assert jit.key["jitter"] == [0.1, 0.1, 0] and "jitter" not in plain.key
    for i in range(len(tiles)):
        np.testing.assert_array_equal(jit[i][0], plain[i][0])  # view 0: the tile as cut
        assert not np.allclose(jit[i][1:], plain[i][1:], atol=1e-2)
    # The same seed draws the same jitter; another seed is another cache.
    again = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "j2.zarr", **kw)
    np.testing.assert_array_equal(again[0], jit[0])
    other = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "j.zarr", seed=1, **kw)
    assert other.key["jitter"] == [0.1, 0.1, 1] and not np.array_equal(other[0][1], jit[0][1])
    with pytest.raises(ValueError, match="stain_jitter must be in"):
        cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "bad.zarr", mean=MEAN, std=STD, stain_jitter=1.5)


def test_fit_with_jitter_trains_on_a_jittered_token_cache(tmp_path, frozen_cnn_config, fit_quiet) -> None:
    sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20, seed=0)
    cfg = frozen_cnn_config()
    fit_quiet(
        sdata, cfg, stain_jitter=0.05, colour_jitter=0.1, max_epochs=1, tile_cache=str(tmp_path / "cache")
    )
    jittered = tmp_path / "cache" / "dataset0_sj0.05_cj0.1_tokens.zarr"
    assert jittered.is_dir() and not (tmp_path / "cache" / "dataset0_tokens.zarr").exists()
    assert cs.pp.CachedTokens(jittered).key["jitter"] == [0.05, 0.1, 0]


def test_a_batch_of_cached_tokens_is_read_in_one_gather(tiles, tmp_path) -> None:
    # The collate reads each spot's drawn view from the cache it belongs to, in the batch's order, from
    # memory and from disk alike, and draws the same views an item-by-item read drew.
    from torch.utils.data import ConcatDataset

    from comtip_sc.train import SentenceCollate, SpotSentences

    vb = _vision().eval()
    a = cs.pp.cache_trunk_tokens(tiles, vb, tmp_path / "a.zarr", mean=MEAN, std=STD, views=3, batch_size=5)
    b = cs.pp.cache_trunk_tokens(tiles, _vision(1).eval(), tmp_path / "b.zarr", mean=MEAN, std=STD, views=3)
    rng = np.random.default_rng(0)
    a.in_memory = True  # b stays on disk
    table_a = SpotSentences(a, rng.random((len(a), 4), dtype=np.float32), np.arange(4), group=0)
    table_b = SpotSentences(b, rng.random((len(b), 6), dtype=np.float32), np.arange(6), group=1)
    both = ConcatDataset([table_a, table_b])
    order = rng.permutation(len(both))
    items = [both[int(i)] for i in order]
    torch.manual_seed(5)
    batch = SentenceCollate(MEAN, STD, augment=True)(items)
    torch.manual_seed(5)
    views = torch.randint(0, 3, (len(order),)).tolist()
    want = [(a if i < len(a) else b)[int(i) % len(a)][v] for i, v in zip(order, views, strict=True)]
    assert batch["tokens"].dtype == torch.float16
    np.testing.assert_array_equal(batch["tokens"].numpy(), np.stack(want))
    # Sentences of the two panels are padded to the longer one.
    assert batch["values"].shape == (len(order), 6)
    assert batch["mask"].sum(1).tolist() == [4 if i < len(a) else 6 for i in order]
    eval_batch = SentenceCollate(MEAN, STD)(items[:3])
    np.testing.assert_array_equal(
        eval_batch["tokens"].numpy(),
        np.stack([(a if i < len(a) else b)[int(i) % len(a)][0] for i in order[:3]]),
    )


def test_a_cache_held_on_a_device_gives_the_same_batches(tiles, tmp_path) -> None:
    # hold_on(device) keeps the tokens as one tensor there (on a GPU: batches gathered without a copy
    # from the host); here the device is the CPU, the code path the same.
    import pickle

    from comtip_sc.train import SentenceCollate, SpotSentences

    path = tmp_path / "t.zarr"
    cs.pp.cache_trunk_tokens(tiles, _vision().eval(), path, mean=MEAN, std=STD, views=2, batch_size=5)
    plain = cs.pp.CachedTokens(path, in_memory=True)
    held = cs.pp.CachedTokens(path)
    held.hold_on("cpu")
    assert isinstance(held._held, torch.Tensor) and held._array is None
    values = np.random.default_rng(0).random((len(plain), 4), dtype=np.float32)
    batches = []
    for cache in (plain, held):
        ds = SpotSentences(cache, values, np.arange(4), group=0)
        torch.manual_seed(3)
        batches.append(SentenceCollate(MEAN, STD, augment=True)([ds[i] for i in (5, 0, 7, 7)]))
    assert torch.equal(batches[0]["tokens"], batches[1]["tokens"])
    np.testing.assert_array_equal(held[2], plain[2])
    assert pickle.loads(pickle.dumps(held))._held is None  # a loader worker reads from disk


@pytest.mark.parametrize(
    ("device_budget", "memory_budget", "where"),
    [(10**12, 10**12, "device"), (0, 10**12, "memory"), (0, 0, "disk")],
)
def test_token_caches_go_where_their_budget_allows(tiles, tmp_path, device_budget, memory_budget, where):
    from types import SimpleNamespace

    from comtip_sc.train import SpotSentences
    from comtip_sc.train._datamodule import subset
    from comtip_sc.train._registration import attach_token_caches

    ds = SpotSentences(tiles, np.zeros((len(tiles), 3), np.float32), np.arange(3), group=0)
    reg = SimpleNamespace(sections=[("s0", subset(ds, np.arange(len(tiles))))])
    attach_token_caches(
        [reg],
        _vision().eval(),
        str(tmp_path),
        MEAN,
        STD,
        torch.device("cpu"),
        memory_budget=memory_budget,
        device_budget=device_budget,
    )
    cache = ds.tiles
    assert isinstance(cache, cs.pp.CachedTokens)
    assert (cache._held is not None) == (where == "device")
    assert bool(cache.in_memory) == (where == "memory")
