"""Pair-aware Adversarial Training (PAAT): mismatched gene–value sentences and their discriminator.

Corruption
    In each sentence a fraction ``ρ`` (``paat_corrupt_frac``) of the real tokens is chosen at random and
    their values are permuted among themselves by a cyclic shift of a random order (a derangement), so
    every chosen token receives the value of another chosen gene of the *same* spot. The corrupted
    sentence keeps the gene set and the multiset of values; only the pairing is wrong. A token is labelled
    *mismatched* when its value actually changed (two genes both at 0 swap to no effect and stay
    negatives, which matters for sparse expression).

Formulation (as implemented)
    With ``h̃`` the encoder's contextual token states of the corrupted sentence, ``D`` a token-level
    2-layer MLP and ``y`` the mismatch labels,

    * ``L_bce = BCE_balanced(D(h̃), y)`` is minimised by **both** ``D`` and the encoder
      (cooperative, "pair-aware"): the encoder has to keep in its token states the information that
      tells whether a value belongs to its gene in this context;
    * ``L_rank = -log softmax_0(s·[i·t, i·t̃])`` uses the corrupted sentence embedding ``t̃`` as an
      adversarial hard negative for the image ``i`` (same temperature ``s`` as InfoNCE): the sentence
      embedding must move when pairs are broken, i.e. it must depend on the pairing, not only on the bag
      of names and the bag of values;
    * ``L_PAAT = L_bce + L_rank``.

    Why not the GAN-style min–max (encoder maximises the discriminator's loss)? There, the encoder wins by
    making true and mismatched sentences indistinguishable — exactly by discarding the gene–value binding
    that PAAT is meant to preserve. The adversarial element is kept where it helps: the corruption is a
    hard negative built to be confusable (same genes, same values), and the encoder is trained against it.
    The paper's text (Qian et al., 2025) describes PAAT as preserving correct gene–value associations with
    mismatched pairs as negatives; no released code specifies the exact objective, hence this choice.
"""

from __future__ import annotations

import torch
from torch import nn

from ._distributed import rand_rows


def corrupt_pairs(
    values: torch.Tensor,
    mask: torch.Tensor,
    frac: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the values of a random fraction of each sentence's real tokens among themselves.

    Parameters
    ----------
    values
        ``[B, G]`` values.
    mask
        ``[B, G]`` bool, real tokens.
    frac
        Fraction of real tokens to corrupt per sentence (at least 2 when the sentence has 2 tokens).
    generator
        Random generator.

    Returns
    -------
    ``(corrupted_values [B, G], mismatched [B, G] bool)``; padding is never touched nor labelled.

    Examples
    --------
    >>> v = torch.arange(10.0).repeat(2, 1)
    >>> cv, lab = corrupt_pairs(v, torch.ones(2, 10, dtype=torch.bool), 0.5, torch.Generator().manual_seed(0))
    >>> lab.sum(1).tolist(), bool((cv.sort(1).values == v).all())
    ([5, 5], True)

    """
    mask = mask.bool()
    b, g = values.shape
    n_real = mask.sum(1)
    n_corrupt = (n_real.float() * frac).round().long().clamp(min=2)
    n_corrupt = torch.minimum(n_corrupt, n_real)
    n_corrupt = torch.where(
        n_corrupt < 2, torch.zeros_like(n_corrupt), n_corrupt
    )  # one token: nothing to swap
    # Random order of the real tokens (padding last); the first n_corrupt of it are the chosen tokens.
    noise = rand_rows(b, g, device=values.device, generator=generator).masked_fill(~mask, 2.0)
    order = noise.argsort(dim=1)
    rank = torch.arange(g, device=values.device).expand(b, g)
    chosen = rank < n_corrupt[:, None]
    # Chosen rank r takes the value of chosen rank (r + 1) mod n: a cyclic shift, so no token keeps its own.
    src_rank = torch.where(chosen, (rank + 1) % n_corrupt.clamp(min=1)[:, None], rank)
    in_order = values.gather(1, order)
    shifted = in_order.gather(1, src_rank)
    corrupted = torch.empty_like(values).scatter_(1, order, shifted)
    mismatched = (corrupted != values) & mask
    return corrupted, mismatched


class PairDiscriminator(nn.Module):
    """Token-level 2-layer MLP: logit that a token's gene–value pair is mismatched.

    Parameters
    ----------
    dim
        Width of the encoder's token states.
    hidden
        Hidden width (default ``dim``).

    Examples
    --------
    >>> PairDiscriminator(16)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5])

    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, G, d]`` token states → ``[B, G]`` logits."""
        return self.net(tokens).squeeze(-1)
