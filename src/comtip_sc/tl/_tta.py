"""Test-time augmentation: image embeddings averaged over the 8 symmetries of a square tile.

A histology tile has no up, down, left or right: its 4 rotations by 90° and their mirror images (the
dihedral group of the square) show the same tissue. Training shows the network all 8 at random; at
embedding time the mean of the 8 views' embeddings removes what is left of the orientation's noise. It
costs 8 forward passes per tile.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: The views of a tile: its 4 rotations by 90°, each also mirrored.
N_VIEWS = 8


def dihedral_views(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 dihedral views of a batch of square images ``[B, C, H, W]``, the identity first.

    Examples
    --------
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> views = [v.flatten().tolist() for v in dihedral_views(x)]
    >>> len(views), len({tuple(v) for v in views}), views[0]
    (8, 8, [0.0, 1.0, 2.0, 3.0])

    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"Test-time augmentation needs square images [B, C, H, W], got {tuple(images.shape)}."
        )
    for k in range(4):
        turned = torch.rot90(images, k, dims=(-2, -1))
        yield turned
        yield turned.flip(-1)


class DihedralMean(nn.Module):
    """A network whose image embedding is the mean over the 8 dihedral views, scaled to unit length.

    Wraps a :class:`~comtip_sc.model.ComtipNetwork` for the package's encoders (it has the attributes they
    read); the views of a batch are encoded one after another into a running sum, so memory stays that
    of one batch (plus one view) whatever the number of tiles.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @property
    def config(self):
        return self.network.config

    @property
    def image_mean(self):
        return self.network.image_mean

    @property
    def image_std(self):
        return self.network.image_std

    def encode_batch_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "image" not in batch:
            raise ValueError("Test-time augmentation needs image tiles, not cached trunk tokens.")
        total = None
        for view in dihedral_views(batch["image"]):
            emb = self.network.encode_batch_images({"image": view}).float()
            total = emb if total is None else total + emb
        return F.normalize(total / N_VIEWS, dim=-1)
