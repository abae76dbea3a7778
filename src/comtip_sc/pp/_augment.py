"""Stain and colour augmentation of training tiles: HED-space jitter and brightness/contrast/saturation jitter.

Both work on a batch of RGB tiles ``[B, 3, H, W]`` in ``[0, 1]`` and draw one set of factors per tile.
They change colour only, never geometry: every output pixel depends on the same input pixel alone, except
for contrast, which blends a tile with its own mean grey.

HED jitter follows Tellez et al. (2018, *IEEE TMI* 37:2126): the tile is unmixed into haematoxylin, eosin
and residual (DAB) optical densities by colour deconvolution with the stain vectors of Ruifrok & Johnston
(2001, *Anal. Quant. Cytol. Histol.* 23:291) — the matrix ``skimage.color.rgb_from_hed`` — each density is
scaled by ``U(1 - σ, 1 + σ)`` and shifted by ``U(-σ, σ)`` (in optical-density units), and the tile is
mixed back. It mimics differences in staining protocol and scanner between laboratories, which a
new patient's slide brings and which a flip or a rotation cannot.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB; unit optical-density vectors over
#: R, G, B, to two decimals), the same matrix as ``skimage.color.rgb_from_hed``.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
#: Its inverse: optical density → stain concentrations.
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: Floor on intensities before the logarithm (a black pixel would have infinite optical density).
_MIN_INTENSITY = 1e-6


def _uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def hed_jitter(
    tiles: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Perturb each tile's haematoxylin, eosin and residual stain densities (Tellez et al. 2018).

    Parameters
    ----------
    tiles
        ``[B, 3, H, W]`` RGB in ``[0, 1]``.
    sigma
        Strength: per tile and stain, the density is scaled by ``U(1 - sigma, 1 + sigma)`` and shifted by
        ``U(-sigma, sigma)`` optical-density units. ``0`` returns ``tiles`` unchanged; 0.05 is mild.
    generator
        Random generator (default: torch's global one, seeded by :func:`lightning.seed_everything`).

    Returns
    -------
    A new ``[B, 3, H, W]`` tensor in ``[0, 1]``.

    Examples
    --------
    >>> x = torch.rand(2, 3, 8, 8)
    >>> y = hed_jitter(x, 0.05, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool(y.min() >= 0 and y.max() <= 1)
    (torch.Size([2, 3, 8, 8]), True)

    """
    if sigma < 0:
        raise ValueError(f"stain jitter sigma must be >= 0, got {sigma}.")
    if sigma == 0:
        return tiles
    b = tiles.shape[0]
    alpha = _uniform((b, 3), 1 - sigma, 1 + sigma, generator).to(tiles)
    beta = _uniform((b, 3), -sigma, sigma, generator).to(tiles)
    od = -torch.log(tiles.clamp_min(_MIN_INTENSITY))
    # Density -> stains, perturb, stains -> density; one 3x3 matrix per tile, so a single einsum.
    hed_from_rgb, rgb_from_hed = HED_FROM_RGB.to(tiles), RGB_FROM_HED.to(tiles)
    mix = torch.einsum("ij,bj,jk->bik", hed_from_rgb, alpha, rgb_from_hed)
    shift = torch.einsum("bj,jk->bk", beta, rgb_from_hed)
    od = torch.einsum("bchw,bcd->bdhw", od, mix) + shift[:, :, None, None]
    return torch.exp(-od).clamp(0.0, 1.0)


def colour_jitter(
    tiles: torch.Tensor, strength: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-tile brightness, contrast and saturation jitter (torchvision's ``ColorJitter`` operations).

    Each factor is drawn from ``U(max(0, 1 - strength), 1 + strength)``, as
    ``torchvision.transforms.v2.ColorJitter(strength, strength, strength)`` draws it, but per tile (the
    transform draws one set per call, i.e. per batch) and from ``generator``.

    Parameters
    ----------
    tiles
        ``[B, 3, H, W]`` RGB in ``[0, 1]``.
    strength
        Jitter range; ``0`` returns ``tiles`` unchanged, 0.1 is mild.
    generator
        Random generator (default: torch's global one).

    Returns
    -------
    A new ``[B, 3, H, W]`` tensor in ``[0, 1]``.

    Examples
    --------
    >>> x = torch.rand(2, 3, 8, 8)
    >>> colour_jitter(x, 0.1, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 8, 8])

    """
    if strength < 0:
        raise ValueError(f"colour jitter strength must be >= 0, got {strength}.")
    if strength == 0:
        return tiles
    factors = _uniform((tiles.shape[0], 3), max(0.0, 1 - strength), 1 + strength, generator).tolist()
    out = []
    for tile, (bright, contrast, sat) in zip(tiles, factors, strict=True):
        tile = TF.adjust_brightness(tile, bright)
        tile = TF.adjust_contrast(tile, contrast)
        out.append(TF.adjust_saturation(tile, sat))
    return torch.stack(out)


def jitter_spot_tiles(
    tiles: torch.Tensor, stain: float, colour: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stain then colour jitter of a batch of spot tiles ``[B, C, H, W]`` in ``[0, 1]`` (C = 3, or 6 with context).

    With a context tile (:class:`~comtip_sc.pp.ContextTiles`) a spot's two tiles are jittered side by side as
    one image, so both get the same stain and colour draw.

    Examples
    --------
    >>> x = torch.rand(2, 6, 8, 8)
    >>> y = jitter_spot_tiles(x, 0.05, 0.1, generator=torch.Generator().manual_seed(0))
    >>> y.shape
    torch.Size([2, 6, 8, 8])

    """
    b, c, h, w = tiles.shape
    side = tiles.reshape(b, c // 3, 3, h, w).permute(0, 2, 3, 1, 4).reshape(b, 3, h, -1)
    side = colour_jitter(hed_jitter(side, stain, generator=generator), colour, generator=generator)
    return side.reshape(b, 3, h, c // 3, w).permute(0, 3, 1, 2, 4).reshape(b, c, h, w)
