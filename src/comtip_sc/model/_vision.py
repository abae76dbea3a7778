"""Vision branch: a timm trunk read as tokens, a full and a masked view, and the Mask Feature Generator (MFM).

*Tokens*: every trunk gives a grid of ``P`` tokens: a ViT its patch tokens, a CNN (ResNet, DenseNet,
EfficientNet, ConvNeXt, ...) the ``h·w`` positions of its last feature map (``B×C×h×w → B×(h·w)×C``).
An optional trainable :class:`~comtip_sc.model._tokens.TokenTransformer` sits on top.

*Full branch*: all ``P`` tokens; it returns the features ``Z`` (``B×P×D``) of the last stage (the token
transformer when there is one, else the trunk) and a global feature (the token transformer's CLS or mean;
without one, the trunk's own global token or pooled feature map).

*Masked branch*: per sample, a random fraction ``r`` of the ``P`` positions is hidden at the input of the
first trainable transformer, so the blocks only ever see the visible tokens (plus prefix/CLS tokens):
``H_O``.

- A ViT that trains (``freeze_backbone`` not ``"all"``): tokens are dropped after the ViT's patch and
  position embedding, before its blocks (as in the paper); hidden *pixels* cannot reach ``H_O``.
- A frozen trunk or a CNN: the trunk sees the whole tile and the hidden *tokens* are dropped at the input
  of the token transformer. A visible token's own trunk feature may depend on hidden pixels (a CNN's
  receptive field, a frozen ViT's attention); what MFM masks is feature-level context.

*Mask Feature Generator*: one cross-attention block. Each hidden position ``j`` gets a query
``m + p_j + e_j`` (a learnable mask query ``m`` shared by all positions, the position embedding ``p_j`` of
the stage that masks and a learnable generator position embedding ``e_j``), which attends to ``H_O``; an
MLP follows; the output is ``Ẑ_U``, regressed onto the (stop-gradient) full-branch features ``Z_U``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ._distributed import rand_rows
from ._freeze import check_freeze, freeze_trunk
from ._tokens import TokenTransformer
from ._trunk import create_backbone, is_vit

__all__ = ["MaskFeatureGenerator", "MaskedView", "VisionBranch", "build_vision", "create_backbone"]


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
    """A timm trunk read as tokens, with a full view (all tokens) and a masked view (visible tokens only).

    Parameters
    ----------
    backbone
        Trunk from :func:`create_backbone` (any timm model).
    mask_ratio
        Fraction of tokens hidden in the masked view.
    tile_px
        Input side in pixels; needed for trunks other than timm ViTs, to size their token grid.
    token_depth
        Blocks of the trainable token transformer on top of the trunk (0: none). A frozen trunk or a CNN
        needs one for MFM.
    token_dim
        Width of the token transformer (``None``: the trunk's).
    token_heads
        Its attention heads (``None``: ``max(1, token_dim // 64)``).
    token_pool
        Its global feature: ``"cls"`` token or ``"mean"`` of the output tokens.
    freeze
        ``"none"``, ``"all"`` or ``k`` (all but the last ``k`` blocks/stages; see
        ``comtip_sc.model._freeze.freeze_trunk``). Frozen parameters get ``requires_grad=False`` and
        their modules stay in eval mode (BatchNorm statistics, dropout) while the branch trains.
    context
        Inputs carry a context tile after the spot tile (6 channels: spot RGB, context RGB, see
        :class:`~comtip_sc.pp.ContextTiles`). The trunk reads each tile; the ``2P`` tokens (spot first)
        enter the token transformer together, which needs ``token_depth >= 1`` and no masking inside the
        trunk.

    Notes
    -----
    The branch splits into a frozen part and a trainable part. :meth:`trunk_tokens` runs the trunk
    (``[B, P, C]``); :meth:`forward_from_tokens` and :meth:`forward_masked_from_tokens` run the token
    transformer on such tokens. When :attr:`trunk_frozen` is true, ``trunk_tokens`` is a pure function of
    the images (no trainable parameter, eval mode, no autograd graph), so trunk tokens cached per tile and
    view can stand in for it: ``forward_full(x) == forward_from_tokens(trunk_tokens(x))`` and
    ``forward_masked(x, ids_keep) == forward_masked_from_tokens(trunk_tokens(x), ids_keep)``.

    Examples
    --------
    >>> vb = VisionBranch(create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1, embed_dim=32, num_heads=2))
    >>> g, z = vb.forward_full(torch.zeros(2, 3, 32, 32))
    >>> g.shape, z.shape
    (torch.Size([2, 32]), torch.Size([2, 16, 32]))
    >>> vb.forward_masked(torch.zeros(2, 3, 32, 32)).visible.shape  # CLS + 8 visible patches
    torch.Size([2, 9, 32])
    >>> cnn = VisionBranch(create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32, freeze="all")
    >>> cnn.num_patches, cnn.trunk_frozen, cnn.forward_full(torch.zeros(2, 3, 64, 64))[1].shape
    (4, True, torch.Size([2, 4, 32]))

    """

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.5,
        *,
        tile_px: int | None = None,
        token_depth: int = 0,
        token_dim: int | None = None,
        token_heads: int | None = None,
        token_pool: Literal["cls", "mean"] = "cls",
        freeze: str | int = "none",
        context: bool = False,
    ) -> None:
        super().__init__()
        self.context = bool(context)
        self.backbone = backbone
        self.mask_ratio = float(mask_ratio)
        self.freeze = check_freeze(freeze)
        self._frozen_modules = freeze_trunk(backbone, self.freeze)
        #: Whether no trunk parameter trains, so that trunk tokens are a fixed function of the images (cacheable).
        self.trunk_frozen = not any(p.requires_grad for p in backbone.parameters())
        self.is_vit = is_vit(backbone)
        self._trunk_prefix = int(getattr(backbone, "num_prefix_tokens", 0))
        if self.is_vit:
            self.num_patches, trunk_dim = int(backbone.patch_embed.num_patches), int(backbone.num_features)
        elif tile_px is None:
            raise ValueError(f"A {type(backbone).__name__} trunk needs tile_px to size its token grid.")
        else:
            self.num_patches, trunk_dim = self._probe(tile_px)
        #: Tokens of one tile; the branch's token grid holds two tiles' worth with a context tile.
        self.tile_tokens = self.num_patches
        if self.context:
            self.num_patches *= 2
        if self.num_patches < 2:
            raise ValueError(
                f"The {type(backbone).__name__} trunk gives {self.num_patches} token at tile_px={tile_px}; "
                "masking needs at least 2 (a CNN reducing 32x needs tile_px >= 64, 128 for a 4x4 grid)."
            )
        self.tokens: TokenTransformer | None = None
        if token_depth > 0:
            width = int(token_dim or trunk_dim)
            heads = token_heads or max(1, width // 64)
            self.tokens = TokenTransformer(trunk_dim, width, token_depth, self.num_patches, heads, token_pool)
        #: The masked view drops tokens inside the trunk (a ViT that trains) rather than after it.
        self.mask_in_trunk = self.is_vit and not self.trunk_frozen
        if self.context and (self.tokens is None or self.mask_in_trunk):
            raise ValueError(
                "A context tile needs a token transformer (token_depth >= 1) over a frozen trunk or a CNN: its "
                "tokens join the spot tile's there."
            )
        self.trunk_dim = trunk_dim
        self.dim = self.tokens.dim if self.tokens is not None else trunk_dim
        if self.tokens is not None:
            self.num_prefix = self.tokens.num_prefix
        else:
            self.num_prefix = self._trunk_prefix if self.is_vit else 0
        self.n_keep = max(1, min(self.num_patches - 1, round(self.num_patches * (1.0 - self.mask_ratio))))
        self.train(self.training)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def supports_mfm(self) -> bool:
        """Whether a masked view exists (a ViT that trains, or a token transformer)."""
        return self.mask_in_trunk or self.tokens is not None

    def train(self, mode: bool = True) -> VisionBranch:
        """Set train/eval mode; the frozen part of the trunk always stays in eval mode."""
        super().train(mode)
        for name in self._frozen_modules:
            self.backbone.get_submodule(name).eval()
        return self

    def _probe(self, tile_px: int) -> tuple[int, int]:
        """Token count and width of the trunk at ``tile_px`` (one forward pass of a blank tile)."""
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            tokens = self._as_tokens(self.backbone.forward_features(torch.zeros(1, 3, tile_px, tile_px)))
        self.backbone.train(was)
        return int(tokens.shape[1]), int(tokens.shape[2])

    def _as_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk output → ``[B, P, C]``: a feature map's positions, or a transformer's non-prefix tokens."""
        if features.ndim == 4:
            if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
                return features.flatten(1, 2)
            return features.flatten(2).transpose(1, 2)
        return features[:, self._trunk_prefix :]

    def patch_pos_embed(self) -> torch.Tensor | None:
        """Position embeddings ``[1, P, D]`` of the stage that masks (``None`` if it has none)."""
        if self.tokens is not None:
            return self.tokens.pos_embed
        pe = getattr(self.backbone, "pos_embed", None)
        if pe is None:
            return None
        return pe if getattr(self.backbone, "no_embed_class", False) else pe[:, self._trunk_prefix :]

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

    def _mask(
        self, b: int, device: torch.device, ids_keep: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if ids_keep is None:
            return self.random_mask(b, device, generator)
        keep = torch.zeros(b, self.num_patches, dtype=torch.bool, device=device)
        keep.scatter_(1, ids_keep, True)
        return ids_keep, (~keep).nonzero()[:, 1].view(b, -1)

    # -- the frozen part and the trainable part ----------------------------------------------------
    def trunk_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's tokens ``[B, P, C]`` (without autograd graph when :attr:`trunk_frozen`).

        With ``context``, ``images`` has 6 channels (spot tile, then context tile) and the tokens of
        both tiles are concatenated, the spot tile's first.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            if self.context:
                both = torch.cat([images[:, :3], images[:, 3:]])  # one trunk pass over both tiles
                spot, ctx = self._as_tokens(self.backbone.forward_features(both)).chunk(2)
                return torch.cat([spot, ctx], dim=1)
            return self._as_tokens(self.backbone.forward_features(images))

    def forward_from_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full view from trunk tokens ``[B, P, C]``: ``(global [B, D], features Z [B, P, D])``.

        Cached tokens arrive as float16 (half the bytes to copy to the device) and are widened here.
        """
        if self.tokens is None:
            raise ValueError("forward_from_tokens needs a token transformer (token_depth >= 1).")
        return self.tokens(tokens.float())

    def forward_masked_from_tokens(
        self,
        tokens: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskedView:
        """Masked view from trunk tokens ``[B, P, C]``: only the visible ones enter the token transformer."""
        if self.tokens is None:
            raise ValueError("forward_masked_from_tokens needs a token transformer (token_depth >= 1).")
        ids_keep, ids_hidden = self._mask(tokens.shape[0], tokens.device, ids_keep, generator)
        return MaskedView(self.tokens.forward_with_prefix(tokens.float(), ids_keep), ids_keep, ids_hidden)

    # -- views -------------------------------------------------------------------------------------
    def forward_full(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full view: ``(global [B, D], features Z [B, P, D])``."""
        if self.tokens is not None:
            return self.forward_from_tokens(self.trunk_tokens(images))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            features = self.backbone.forward_features(images)
            pooled = self.backbone.forward_head(features, pre_logits=True)
        return pooled, self._as_tokens(features)

    def forward_masked(
        self,
        images: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskedView:
        """Masked view: only the visible tokens (+ prefix tokens) enter the first trainable transformer.

        Parameters
        ----------
        images
            ``[B, 3, H, W]``.
        ids_keep
            Optional ``[B, n_keep]`` visible token positions (otherwise drawn with :meth:`random_mask`).
        generator
            Random generator for the mask.

        """
        if not self.mask_in_trunk:
            if self.tokens is None:
                raise ValueError(
                    "This trunk is frozen or not a ViT: its masked view needs a token transformer "
                    "(token_depth >= 1)."
                )
            return self.forward_masked_from_tokens(self.trunk_tokens(images), ids_keep, generator)
        bb = self.backbone
        ids_keep, ids_hidden = self._mask(images.shape[0], images.device, ids_keep, generator)
        # Position embeddings are added on the full grid first, so each kept token carries its own position;
        # the gather then removes hidden tokens before any block can mix information across tokens.
        x = bb._pos_embed(bb.patch_embed(images))
        prefix, patches = x[:, : self._trunk_prefix], x[:, self._trunk_prefix :]
        visible = patches.gather(1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
        h = self._run_blocks(torch.cat([prefix, visible], dim=1))
        if self.tokens is not None:
            h = self.tokens.forward_with_prefix(h[:, self._trunk_prefix :], ids_keep, visible_only=True)
        return MaskedView(visible=h, ids_keep=ids_keep, ids_hidden=ids_hidden)


def build_vision(config: Any) -> VisionBranch:
    """The vision branch a :class:`~comtip_sc.model.ComtipConfig` describes: trunk, freezing, token transformer.

    Examples
    --------
    >>> from comtip_sc.model import ComtipConfig
    >>> cfg = ComtipConfig(backbone="resnet10t", pretrained=False, tile_px=64, token_depth=1, token_dim=32)
    >>> vb = build_vision(cfg)
    >>> vb.trunk_frozen, vb.dim, vb.num_patches
    (True, 32, 4)

    """
    backbone = create_backbone(
        config.backbone,
        config.tile_px,
        pretrained=config.pretrained,
        checkpoint_path=config.checkpoint_path,
        **config.backbone_kwargs,
    )
    return VisionBranch(
        backbone,
        config.mask_ratio,
        tile_px=config.tile_px,
        token_depth=config.token_depth,
        token_dim=config.token_dim,
        token_heads=config.token_heads,
        token_pool=config.token_pool,
        freeze=config.freeze_backbone,
        context=config.context_tile,
    )


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
