"""Vision branch: a timm ViT with a full and a masked view, and the Mask Feature Generator (MFM).

*Full branch*: all ``P`` patch tokens go through the ViT; it returns the patch features ``Z`` (``B×P×D``)
and the backbone's own global token (CLS, or the mean for ``global_pool="avg"`` models).

*Masked branch*: per sample, a random fraction ``r`` of the patch tokens is dropped **after** the patch
embedding and position embedding are added and **before** the transformer blocks, so the blocks only ever
see the visible tokens (plus the prefix/CLS tokens): ``H_O``. Hidden pixels cannot leak into ``H_O``.

*Mask Feature Generator*: one cross-attention block. Each hidden position ``j`` gets a query
``m + p_j + e_j`` (a learnable mask query ``m`` shared by all positions, the backbone's position embedding
``p_j`` and a learnable generator position embedding ``e_j``), which attends to ``H_O``; an MLP follows;
the output is ``Ẑ_U``, regressed onto the (stop-gradient) full-branch features ``Z_U``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ._distributed import rand_rows


def _local_hub_weights(name: str) -> str | None:
    """Path of ``name``'s default weights in the local Hugging Face cache, or ``None`` (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for fname in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str):
            return hit
    return None


def create_backbone(
    name: str,
    tile_px: int,
    *,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm ViT without classifier, at ``img_size=tile_px``, loading weights only from local files.

    Parameters
    ----------
    name
        timm model name (must be a ``VisionTransformer``-style model).
    tile_px
        Input side in pixels.
    pretrained
        Load weights: from ``checkpoint_path`` if given, else from the local Hugging Face cache; raises
        ``FileNotFoundError`` rather than downloading.
    checkpoint_path
        Local timm weights file (``.safetensors``/``.pth``/``.bin``); implies ``pretrained``. It goes
        through timm's pretrained loader (``pretrained_cfg_overlay=dict(file=...)``), which drops the
        classifier and resamples position embeddings to ``tile_px``.
    **kwargs
        Passed to :func:`timm.create_model` (e.g. ``depth=2, embed_dim=64``).

    Returns
    -------
    The backbone module.

    Examples
    --------
    >>> m = create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    >>> m.patch_embed.num_patches
    16

    """
    if checkpoint_path is not None or pretrained:
        file = checkpoint_path or _local_hub_weights(name)
        if file is None:
            raise FileNotFoundError(
                f"pretrained=True but no local weights for {name!r}: pass checkpoint_path=<local timm weights> "
                "(comtip_sc never downloads weights)."
            )
        if not Path(file).is_file():
            raise FileNotFoundError(f"checkpoint_path {file!r} does not exist.")
        kwargs = {**kwargs, "pretrained": True, "pretrained_cfg_overlay": {"file": str(file)}}
    model = timm.create_model(name, img_size=tile_px, num_classes=0, **kwargs)
    missing = [
        a
        for a in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens")
        if not hasattr(model, a)
    ]
    if missing:
        raise TypeError(f"{name!r} is not a timm VisionTransformer-style model (lacks {missing}).")
    return model


@dataclass
class MaskedView:
    """Output of the masked branch.

    Attributes
    ----------
    visible
        ``H_O``: ``[B, n_prefix + n_keep, D]`` features of the prefix tokens and the visible patches.
    ids_keep
        ``[B, n_keep]`` patch indices (0..P-1) that were visible, in the order of ``visible``.
    ids_hidden
        ``[B, n_hidden]`` patch indices that were hidden.

    """

    visible: torch.Tensor
    ids_keep: torch.Tensor
    ids_hidden: torch.Tensor


class VisionBranch(nn.Module):
    """A timm ViT exposing a full view (all patches) and a masked view (visible patches only).

    Parameters
    ----------
    backbone
        Module from :func:`create_backbone`.
    mask_ratio
        Fraction of patch tokens hidden in the masked view.

    Examples
    --------
    >>> vb = VisionBranch(create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1, embed_dim=32, num_heads=2))
    >>> g, z = vb.forward_full(torch.zeros(2, 3, 32, 32))
    >>> g.shape, z.shape
    (torch.Size([2, 32]), torch.Size([2, 16, 32]))
    >>> vb.forward_masked(torch.zeros(2, 3, 32, 32)).visible.shape  # CLS + 8 visible patches
    torch.Size([2, 9, 32])

    """

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_ratio = float(mask_ratio)
        self.num_patches = int(backbone.patch_embed.num_patches)
        self.num_prefix = int(backbone.num_prefix_tokens)
        self.dim = int(backbone.num_features)
        self.n_keep = max(1, min(self.num_patches - 1, round(self.num_patches * (1.0 - self.mask_ratio))))

    # -- helpers -----------------------------------------------------------------------------------
    def patch_pos_embed(self) -> torch.Tensor | None:
        """The backbone's position embeddings of the patch tokens, ``[1, P, D]`` (``None`` if it has none)."""
        pe = getattr(self.backbone, "pos_embed", None)
        if pe is None:
            return None
        return pe if getattr(self.backbone, "no_embed_class", False) else pe[:, self.num_prefix :]

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        x = bb.norm_pre(x)
        if getattr(bb, "grad_checkpointing", False) and torch.is_grad_enabled():
            from timm.models._manipulate import checkpoint_seq

            x = checkpoint_seq(bb.blocks, x)
        else:
            x = bb.blocks(x)
        return bb.norm(x)

    def random_mask(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw an independent random mask per sample.

        Returns
        -------
        ``(ids_keep [B, n_keep], ids_hidden [B, P - n_keep])``, each sorted ascending.

        """
        # Rows of the global batch under DDP, so that processes do not all draw the same masks.
        noise = rand_rows(batch, self.num_patches, device=device, generator=generator)
        order = noise.argsort(dim=1)
        ids_keep = order[:, : self.n_keep].sort(dim=1).values
        ids_hidden = order[:, self.n_keep :].sort(dim=1).values
        return ids_keep, ids_hidden

    # -- views -------------------------------------------------------------------------------------
    def forward_full(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full view: ``(global [B, D], patch features Z [B, P, D])``."""
        bb = self.backbone
        tokens = bb.forward_features(images)
        pooled = bb.forward_head(tokens, pre_logits=True)
        return pooled, tokens[:, self.num_prefix :]

    def forward_masked(
        self,
        images: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskedView:
        """Masked view: only the visible patch tokens (+ prefix tokens) enter the transformer blocks.

        Parameters
        ----------
        images
            ``[B, 3, H, W]``.
        ids_keep
            Optional ``[B, n_keep]`` visible patch indices (otherwise drawn with :meth:`random_mask`).
        generator
            Random generator for the mask.

        """
        bb = self.backbone
        b = images.shape[0]
        if ids_keep is None:
            ids_keep, ids_hidden = self.random_mask(b, images.device, generator)
        else:
            keep = torch.zeros(b, self.num_patches, dtype=torch.bool, device=images.device)
            keep.scatter_(1, ids_keep, True)
            ids_hidden = (~keep).nonzero()[:, 1].view(b, -1)
        # Position embeddings are added on the full grid first, so each kept token carries its own position;
        # the gather then removes hidden tokens before any block can mix information across tokens.
        x = bb._pos_embed(bb.patch_embed(images))
        prefix, patches = x[:, : self.num_prefix], x[:, self.num_prefix :]
        visible = patches.gather(1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
        h = self._run_blocks(torch.cat([prefix, visible], dim=1))
        return MaskedView(visible=h, ids_keep=ids_keep, ids_hidden=ids_hidden)


class MaskFeatureGenerator(nn.Module):
    """One cross-attention block predicting hidden-patch features from the visible ones.

    Parameters
    ----------
    dim
        Backbone feature width ``D``.
    num_patches
        Number of patch positions ``P``.
    num_heads
        Attention heads (``dim`` must be divisible by it).
    mlp_ratio
        Hidden width of the MLP relative to ``dim``.

    Examples
    --------
    >>> gen = MaskFeatureGenerator(32, 16, num_heads=2)
    >>> gen(torch.randn(2, 9, 32), torch.arange(8).repeat(2, 1)).shape
    torch.Size([2, 8, 32])

    """

    def __init__(self, dim: int, num_patches: int, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.mask_query = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.mask_query, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.out = nn.Linear(dim, dim)

    def forward(
        self, visible: torch.Tensor, ids_hidden: torch.Tensor, backbone_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict ``Ẑ_U [B, n_hidden, D]`` from ``H_O`` (``visible``) for the positions ``ids_hidden``."""
        b, n_hidden = ids_hidden.shape
        pos = self.pos if backbone_pos is None else self.pos + backbone_pos
        pos = pos.expand(b, -1, -1).gather(1, ids_hidden[..., None].expand(-1, -1, pos.shape[-1]))
        q = self.mask_query.expand(b, n_hidden, -1) + pos
        kv = self.norm_kv(visible)
        x = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return self.out(x)
