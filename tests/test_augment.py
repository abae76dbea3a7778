import numpy as np
import pytest
import torch

from comtip_sc.model import ComtipConfig
from comtip_sc.pp._augment import HED_FROM_RGB, RGB_FROM_HED, colour_jitter, hed_jitter
from comtip_sc.train import TrainSettings
from comtip_sc.train._datamodule import SentenceCollate, SpotDataModule, SpotSentences

AUGMENTS = [hed_jitter, colour_jitter]


def _tiles(seed=0, b=4, size=16):
    """H&E-like tiles: two colours in a random spatial pattern, plus per-pixel noise."""
    rng = np.random.default_rng(seed)
    pink, purple = np.array([0.9, 0.6, 0.8]), np.array([0.45, 0.3, 0.65])
    pattern = rng.random((b, size, size)) < 0.4
    x = np.where(pattern[..., None], purple, pink) + rng.normal(0, 0.02, (b, size, size, 3))
    return torch.from_numpy(np.clip(x, 0, 1)).permute(0, 3, 1, 2).float()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_stain_matrix_is_ruifrok_johnston_as_in_skimage():
    skcolor = pytest.importorskip("skimage.color")
    np.testing.assert_allclose(RGB_FROM_HED.numpy(), skcolor.rgb_from_hed, atol=1e-12)
    np.testing.assert_allclose(HED_FROM_RGB.numpy(), skcolor.hed_from_rgb, atol=1e-10)


@pytest.mark.parametrize("augment", AUGMENTS)
def test_seeded_deterministic_in_range_and_changes_colour(augment):
    x = _tiles()
    a = augment(x, 0.2, generator=_gen(1))
    b = augment(x, 0.2, generator=_gen(1))
    c = augment(x, 0.2, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # Every tile's colour moves, and the tiles move differently (one draw per tile, not per batch).
    shift = (a - x).mean(dim=(2, 3))
    assert (shift.abs().amax(1) > 1e-3).all()
    assert not torch.allclose(shift[0], shift[1], atol=1e-4)


@pytest.mark.parametrize("augment", AUGMENTS)
def test_strength_zero_is_identity_and_negative_is_refused(augment):
    x = _tiles()
    assert torch.equal(augment(x, 0.0, generator=_gen(0)), x)
    with pytest.raises(ValueError, match=">= 0"):
        augment(x, -0.1)


@pytest.mark.parametrize("augment", AUGMENTS)
def test_colour_changes_but_geometry_does_not(augment):
    # Pixels of one colour stay one colour and the boundaries between colours stay where they were:
    # the jitter is a per-tile colour map, applied pixel by pixel.
    rng = np.random.default_rng(0)
    pink, purple = np.array([0.9, 0.6, 0.8]), np.array([0.45, 0.3, 0.65])
    pattern = rng.random((3, 16, 16)) < 0.4
    x = torch.from_numpy(np.where(pattern[..., None], purple, pink)).permute(0, 3, 1, 2).float()
    y = augment(x, 0.2, generator=_gen(3))
    for tile, mask in zip(y, pattern, strict=True):
        inside = tile[:, torch.from_numpy(mask)]
        outside = tile[:, torch.from_numpy(~mask)]
        assert torch.allclose(inside, inside[:, :1], atol=1e-6)
        assert torch.allclose(outside, outside[:, :1], atol=1e-6)
        assert not torch.allclose(inside[:, 0], outside[:, 0], atol=1e-2)
    assert not torch.allclose(y, x, atol=1e-3)


def test_hed_jitter_is_affine_in_each_stain_density():
    # Pixels mixed from known stain densities come back with each density scaled by a factor in
    # [1 - sigma, 1 + sigma] and shifted by at most sigma, the same for every pixel of the tile.
    sigma = 0.1
    rng = np.random.default_rng(0)
    conc = rng.uniform(0.3, 1.0, (64, 3))
    x = torch.from_numpy(np.exp(-conc @ RGB_FROM_HED.numpy())).T.reshape(1, 3, 8, 8)
    y = hed_jitter(x, sigma, generator=_gen(0))
    back = (-np.log(y.reshape(3, 64).T.numpy())) @ HED_FROM_RGB.numpy()
    for j in range(3):
        slope, intercept = np.polyfit(conc[:, j], back[:, j], 1)
        np.testing.assert_allclose(back[:, j], slope * conc[:, j] + intercept, atol=1e-8)
        assert 1 - sigma <= slope <= 1 + sigma and abs(intercept) <= sigma
        assert abs(slope - 1) > 1e-4


def _dataset(n=8):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return SpotSentences(tiles, rng.random((n, 5), dtype=np.float32), np.arange(5), group=0)


def test_jitter_only_on_training_batches():
    ds = _dataset()
    items = [ds[i] for i in range(len(ds))]
    dm = SpotDataModule([ds], batch_size=4, stain_jitter=0.1, colour_jitter=0.1)
    plain = SentenceCollate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(items)["image"]
    # Validation and prediction batches are the tiles as they are...
    assert torch.equal(dm.eval_collate(items)["image"], plain)
    assert torch.equal(dm.predict_loader(ds).collate_fn(items)["image"], plain)
    # ... training batches are jittered: their pixel multiset differs from every flip/rotation of the tile.
    torch.manual_seed(0)
    train = dm.train_collate(items)["image"]
    assert not torch.allclose(
        torch.sort(train.flatten(1)).values, torch.sort(plain.flatten(1)).values, atol=1e-3
    )
    # The same global seed (as lightning.seed_everything sets) gives the same batch.
    torch.manual_seed(0)
    assert torch.equal(dm.train_collate(items)["image"], train)


def test_training_collate_without_jitter_is_flip_rotation_only():
    ds = _dataset()
    items = [ds[i] for i in range(len(ds))]
    plain = SentenceCollate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(items)["image"]
    torch.manual_seed(0)
    train = SentenceCollate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment=True)(items)["image"]
    torch.testing.assert_close(torch.sort(train.flatten(1)).values, torch.sort(plain.flatten(1)).values)


def test_jitter_is_a_validated_data_setting_not_a_network_field():
    settings = TrainSettings(stain_jitter=0.05, colour_jitter=0.1)
    assert TrainSettings().stain_jitter == 0.0 and TrainSettings().colour_jitter == 0.0
    assert settings.to_dict()["stain_jitter"] == 0.05
    for bad in ({"stain_jitter": -0.1}, {"colour_jitter": 1.5}):
        with pytest.raises(ValueError, match="stain_jitter and colour_jitter"):
            TrainSettings(**bad)
    # The network config refuses it with a pointer to where it went.
    with pytest.raises(TypeError, match=r"data settings.*cs\.tl\.fit"):
        ComtipConfig.preset("cpu", stain_jitter=0.05)
    with pytest.raises(TypeError, match="data settings"):
        ComtipConfig().replace(colour_norm="section")
