"""Token transformer: a small trainable transformer over a trunk's token grid.

It sits on top of any trunk (a ViT's patch tokens, a CNN's last feature map read as ``h·w`` tokens) and
is where Masked Feature Modeling runs when the trunk itself is frozen or is a CNN: the masked view drops
the hidden tokens right after the position embedding is added, so its blocks only see the visible ones.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.models.vision_transformer import Block
from torch import nn


class TokenTransformer(nn.Module):
    """Transformer blocks over ``N`` trunk tokens with a learned position embedding and a CLS or mean pool.

    Parameters
    ----------
    in_dim
        Width ``C`` of the trunk tokens.
    dim
        Width of the transformer.
    depth
        Number of transformer blocks (timm's ViT ``Block``).
    num_tokens
        Size ``N = h·w`` of the token grid (one learned position embedding per position).
    num_heads
        Attention heads (``dim`` must be divisible by it).
    pool
        ``"cls"``: a learned CLS token gives the global feature; ``"mean"``: the mean of the output tokens.
    mlp_ratio
        Hidden width of each block's MLP relative to ``dim``.

    Examples
    --------
    >>> tt = TokenTransformer(in_dim=48, dim=32, depth=1, num_tokens=16, num_heads=2)
    >>> g, z = tt(torch.randn(2, 16, 48))
    >>> g.shape, z.shape
    (torch.Size([2, 32]), torch.Size([2, 16, 32]))
    >>> tt(torch.randn(2, 16, 48), ids_keep=torch.arange(6).repeat(2, 1))[1].shape  # visible tokens only
    torch.Size([2, 6, 32])

    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_tokens: int,
        num_heads: int = 4,
        pool: Literal["cls", "mean"] = "cls",
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"token pool must be 'cls' or 'mean', got {pool!r}.")
        if dim % num_heads:
            raise ValueError(f"token transformer width {dim} is not divisible by its {num_heads} heads.")
        self.dim, self.num_tokens, self.pool = int(dim), int(num_tokens), pool
        # Frozen trunk features can be on any scale (a CNN's post-ReLU maps, a foundation model's tokens):
        # a LayerNorm before the projection puts them on one.
        self.embed = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.num_prefix = 1 if pool == "cls" else 0
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: torch.Tensor, ids_keep: torch.Tensor | None = None, *, visible_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks over all tokens, or over the visible ones only.

        Parameters
        ----------
        tokens
            ``[B, N, in_dim]`` trunk tokens on the full grid.
        ids_keep
            ``[B, n_keep]`` visible positions (``None``: all ``N``).
        visible_only
            ``tokens`` are already the ``[B, n_keep, in_dim]`` tokens at ``ids_keep`` (a trunk that masked
            its own input); ``ids_keep`` then only picks their position embeddings.

        Returns
        -------
        ``(global [B, dim], tokens [B, n, dim])``; ``tokens`` excludes the CLS token.

        """
        x = self.embed(tokens)
        pos = self.pos_embed.expand(x.shape[0], -1, -1)
        if ids_keep is not None:
            index = ids_keep[..., None].expand(-1, -1, self.dim)
            pos = pos.gather(1, index)
            if not visible_only:
                # The gather comes before any block, so hidden tokens can never reach the visible ones.
                x = x.gather(1, index)
        x = x + pos
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        patches = x[:, self.num_prefix :]
        pooled = x[:, 0] if self.pool == "cls" else patches.mean(1)
        return pooled, patches

    def forward_with_prefix(
        self, tokens: torch.Tensor, ids_keep: torch.Tensor | None = None, *, visible_only: bool = False
    ) -> torch.Tensor:
        """Like :meth:`forward` but return every output token, CLS first (``[B, prefix + n, dim]``)."""
        pooled, patches = self(tokens, ids_keep, visible_only=visible_only)
        if self.pool == "cls":
            return torch.cat([pooled[:, None], patches], dim=1)
        return patches
