"""Section-balanced sampling: each training section is drawn with probability ∝ n_spots ** alpha."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from comtip_sc.train._datamodule import SpotDataModule, section_weights


class _Section(Dataset):
    """Items that name their section, so that draws can be counted per section."""

    def __init__(self, n: int, section: int) -> None:
        self.n, self.section = n, section

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.section


SIZES = [400, 100, 25, 300]  # the last one is held out for validation


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sections_are_drawn_in_proportion_to_size_to_the_alpha(alpha):
    dm = SpotDataModule(
        [_Section(n, s) for s, n in enumerate(SIZES)], val_sections=[3], batch_size=8, section_balance=alpha
    )
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    assert loader.sampler.num_samples == sum(SIZES[:3])  # an epoch is as long as with shuffling
    torch.manual_seed(0)
    draws = np.concatenate([[dm.train_dataset[i] for i in loader.sampler] for _ in range(40)])
    assert 3 not in draws  # never the validation section
    n = len(draws)
    share = np.bincount(draws, minlength=3)[:3] / n
    expected = np.asarray(SIZES[:3], float) ** alpha
    expected /= expected.sum()
    # Each share is a binomial proportion: within 5 standard errors of the rule.
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(share - expected) < 5 * se), (share, expected)


def test_without_balance_every_spot_is_drawn_once_per_epoch():
    dm = SpotDataModule([_Section(n, s) for s, n in enumerate(SIZES)], val_sections=[3], batch_size=8)
    loader = dm.train_dataloader()
    assert not isinstance(loader.sampler, WeightedRandomSampler)
    assert sorted(loader.sampler) == list(range(sum(SIZES[:3])))


def test_section_weights_rule_and_bad_values():
    w = section_weights([4, 1], 0.5)
    np.testing.assert_allclose(w, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(section_weights([3, 2], 1.0), np.ones(5))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="section_balance"):
            SpotDataModule([_Section(3, 0)], section_balance=bad)
