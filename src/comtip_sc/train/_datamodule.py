"""Registration of SpatialData tables for training: spot tiles + gene sentences as torch batches.

One :class:`~comtip_sc.train.SpotSentences` per section group (a SpatialData table) pairs each spot's tile with its
gene sentence: the normalised values of that table's panel genes and their indices in the model's
gene vocabulary. Tables with different gene sets train together; :class:`SentenceCollate` pads
sentences to the longest in the batch and marks real tokens in ``mask``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, WeightedRandomSampler

from ..model._inference import normalise_tiles
from ..pp import _augment
from ..pp._feature_cache import CachedTokens


class TokenRow(NamedTuple):
    """Spot ``row`` of a trunk-token cache, read by :class:`SentenceCollate` together with its batch."""

    cache: CachedTokens
    row: int


class SpotSentences(Dataset):
    """Spots of one table: item ``i`` is ``(tile, values float32 (G,), gene_idx, group)``.

    The tile is ``uint8 (H, W, 3)`` from a tile reader, or a ``TokenRow`` (the cache and the row) when
    ``tiles`` is a :class:`~comtip_sc.pp.CachedTokens`: the collate gathers a batch's tokens in one read
    of the views it uses instead of copying all views of every spot.
    """

    def __init__(self, tiles, values: np.ndarray, gene_idx: np.ndarray, group: int) -> None:
        if len(tiles) != len(values):
            raise ValueError(f"{len(tiles)} tiles but {len(values)} expression rows.")
        self.tiles = tiles
        self.values = values
        self.gene_idx = np.asarray(gene_idx, dtype=np.int64)
        self.group = group

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int):
        tile = TokenRow(self.tiles, int(i)) if isinstance(self.tiles, CachedTokens) else self.tiles[i]
        return tile, self.values[i], self.gene_idx, self.group


@dataclass
class SentenceCollate:
    """Turn items of :class:`~comtip_sc.train.SpotSentences` into a model batch.

    Images are scaled to [0, 1], normalised with the backbone's mean/std and, for training,
    augmented with the symmetries of a histology tile (flips and 90° rotations), which change
    nothing biological, and, when ``stain_jitter`` / ``colour_jitter`` are positive, with the colour
    changes a slide from another laboratory brings (HED stain jitter and
    brightness/contrast/saturation jitter). Without ``augment`` the jitter is never applied.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool = False
    stain_jitter: float = 0.0
    colour_jitter: float = 0.0

    def __call__(self, items) -> dict[str, torch.Tensor]:
        arrs = [it[0] for it in items]  # uint8 [H, W, 3], or TokenRow of a trunk-token cache
        if isinstance(arrs[0], TokenRow):
            batch = {"tokens": self._tokens(arrs)}
        else:
            batch = {"image": self._images(arrs)}
        return {**batch, **self._sentences(items)}

    def _tokens(self, rows: list[TokenRow]) -> torch.Tensor:
        """Cached tokens: a random stored view per spot in training (the dihedral augmentation), else view 0."""
        n = len(rows)
        views = torch.randint(0, rows[0].cache.views, (n,)).numpy() if self.augment else np.zeros(n, np.int64)
        caches = list({id(r.cache): r.cache for r in rows}.values())
        if len(caches) == 1:
            return caches[0].take(np.array([r.row for r in rows]), views)
        # One read per cache: a batch can mix the sections of tables with caches of their own.
        out = None
        for cache in caches:
            at = np.array([j for j, r in enumerate(rows) if r.cache is cache])
            part = cache.take(np.array([rows[j].row for j in at]), views[at])
            if out is None:
                out = part.new_empty((n, *part.shape[1:]))
            out[torch.from_numpy(at).to(part.device, non_blocking=True)] = part
        return out  # float16 as cached; the vision branch widens it on its device

    def _images(self, arrs: list[np.ndarray]) -> torch.Tensor:
        if self.augment:
            # On the uint8 arrays (views, no copy) before the float conversion: 4x less memory traffic.
            ks = torch.randint(0, 4, (len(arrs),)).tolist()
            flips = (torch.rand(len(arrs)) < 0.5).tolist()
            arrs = [np.rot90(a, k, axes=(0, 1)) for a, k in zip(arrs, ks, strict=True)]
            arrs = [a[:, ::-1] if f else a for a, f in zip(arrs, flips, strict=True)]
        if not (self.augment and (self.stain_jitter > 0 or self.colour_jitter > 0)):
            return normalise_tiles(arrs, self.mean, self.std)
        tiles = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
        c = tiles.shape[1]  # 6 for a spot tile + a context tile (pp.ContextTiles)
        mean = torch.tensor(self.mean).repeat(c // 3).view(1, c, 1, 1)
        std = torch.tensor(self.std).repeat(c // 3).view(1, c, 1, 1)
        tiles = _augment.jitter_spot_tiles(tiles.div_(255.0), self.stain_jitter, self.colour_jitter)
        return tiles.sub_(mean).div_(std)

    @staticmethod
    def _sentences(items) -> dict[str, torch.Tensor]:
        first = items[0][2]
        if all(it[2] is first for it in items):  # one table's spots: one panel, no padding
            values = torch.from_numpy(
                np.stack([np.asarray(it[1]) for it in items]).astype(np.float32, copy=False)
            )
            gene_idx = torch.from_numpy(first).expand(len(items), -1).clone()
            return {
                "values": values,
                "gene_idx": gene_idx,
                "mask": torch.ones(values.shape, dtype=torch.bool),
            }
        g_max = max(len(it[1]) for it in items)
        values = torch.zeros(len(items), g_max)
        gene_idx = torch.zeros(len(items), g_max, dtype=torch.long)
        mask = torch.zeros(len(items), g_max, dtype=torch.bool)
        for b, (_, v, idx, _) in enumerate(items):
            values[b, : len(v)] = torch.from_numpy(np.asarray(v))
            gene_idx[b, : len(v)] = torch.from_numpy(idx)
            mask[b, : len(v)] = True
        return {"values": values, "gene_idx": gene_idx, "mask": mask}


def section_weights(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """Per-spot sampling weights that draw each section with probability ∝ ``n_spots ** alpha``.

    Every spot of a section of ``n`` spots gets weight ``n ** (alpha - 1)``, so the section's total weight
    is ``n ** alpha``. ``alpha=1``: every spot equally likely (plain shuffling, large sections dominate);
    ``alpha=0``: every section equally likely; ``alpha=0.5`` in between.

    Examples
    --------
    >>> w = section_weights([100, 25], 0.5)
    >>> float(round(w[:100].sum() / w.sum(), 3))  # 10 / (10 + 5)
    0.667

    """
    if not np.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"section_balance must be in [0, 1], got {alpha}.")
    sizes = np.asarray(sizes, dtype=np.int64)
    if (sizes <= 0).any():
        raise ValueError(f"Every section needs at least one spot, got sizes {sizes.tolist()}.")
    return np.repeat(sizes.astype(np.float64) ** (alpha - 1.0), sizes)


class SpotDataModule(L.LightningDataModule):
    """Train/validation loaders over one or several :class:`~comtip_sc.train.SpotSentences` datasets.

    Parameters
    ----------
    datasets
        One dataset per section, so that validation can be held out by section.
    val_sections
        Indices into ``datasets`` used for validation (empty: no validation).
    batch_size, num_workers
        Loader settings. With ``num_workers > 0`` the tile readers are pickled into the workers; they
        hold lazy dask arrays, not slides.
    mean, std
        Backbone normalisation.
    augment
        Flip and rotate training tiles (never validation or prediction tiles).
    stain_jitter, colour_jitter
        Strength of the HED stain jitter and of the brightness/contrast/saturation jitter of training
        tiles (``TrainSettings.stain_jitter`` / ``colour_jitter``; 0: off). Need ``augment``.
    section_balance
        ``None``: plain shuffling (each training spot once per epoch). A number ``alpha`` in [0, 1]: each
        batch position draws a section with probability ∝ ``n_spots ** alpha`` and a spot of it uniformly
        (:func:`~comtip_sc.train.section_weights`, with replacement; an epoch is still as many draws as training spots).

    """

    def __init__(
        self,
        datasets: list[Dataset],
        *,
        val_sections: Sequence[int] = (),
        batch_size: int = 32,
        num_workers: int = 0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        augment: bool = True,
        stain_jitter: float = 0.0,
        colour_jitter: float = 0.0,
        section_balance: float | None = None,
    ) -> None:
        super().__init__()
        if section_balance is not None:
            section_weights([1], section_balance)  # fail now on a bad value, not at the first epoch
        self.section_balance = section_balance
        self.datasets = datasets
        self.val_sections = list(val_sections)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_collate = SentenceCollate(
            tuple(mean), tuple(std), augment=augment, stain_jitter=stain_jitter, colour_jitter=colour_jitter
        )
        self.eval_collate = SentenceCollate(tuple(mean), tuple(std), augment=False)

    def _concat(self, which: list[int]) -> Dataset:
        parts = [self.datasets[i] for i in which]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    @property
    def train_dataset(self) -> Dataset:
        """Everything not held out."""
        return self._concat([i for i in range(len(self.datasets)) if i not in self.val_sections])

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset
        # InfoNCE needs at least two spots per batch; a final batch of one is dropped.
        drop_last = len(ds) % self.batch_size == 1
        sampler = None
        if self.section_balance is not None:
            sizes = [len(self.datasets[i]) for i in range(len(self.datasets)) if i not in self.val_sections]
            weights = torch.from_numpy(section_weights(sizes, self.section_balance))
            sampler = WeightedRandomSampler(weights, num_samples=len(ds), replacement=True)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.train_collate,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_sections:
            return []
        return DataLoader(
            self._concat(self.val_sections),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.eval_collate,
        )

    def predict_loader(self, dataset: Dataset) -> DataLoader:
        """An ordered, unaugmented loader over ``dataset`` (used for embedding and the reference bank)."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.eval_collate,
        )


def subset(dataset: Dataset, indices: np.ndarray) -> Subset:
    """A view of ``dataset`` restricted to ``indices``."""
    return Subset(dataset, [int(i) for i in indices])
