"""Gene-Text Encoder: all gene sentences of a batch as one ``[B, G, d]`` tensor, linear cost in ``G``.

A spot's *gene sentence* is a set of ``(gene, value)`` tokens. Token ``i`` of spot ``b`` (gene ``g``,
value ``v``) is

.. math::
    n_g = \\mathrm{LN}\\big(W(t_g - \\bar t) + r_g\\big), \\qquad
    [f(v), a(v)] = \\mathrm{MLP}(v), \\qquad
    x_{bi} = \\underbrace{n_g}_{\\text{name}} + \\underbrace{\\mathrm{LN}(f(v))}_{\\text{value}}
             + \\underbrace{n_g \\odot a(v)}_{\\text{pair}}

with ``t_g`` the frozen, cached text embedding of the gene's name, ``t̄`` its mean over the training panel
(a saved buffer: symbol embeddings share a large common direction that says nothing about which gene it
is), ``W`` a learned projection, ``r_g`` a learned per-gene residual (zero-initialised; genes added after
training keep ``r_g = 0``) and one small MLP on the continuous normalised log1p value giving the additive
value embedding ``f`` and the gate ``a``.

Why an MLP and not scGPT-style value bins: values arrive already normalised (1e4 + log1p) and are
continuous; bins would quantise them (per-spot rank bins also discard magnitudes shared across spots),
whereas a smooth MLP interpolates between values, which the zero-shot predictor relies on when it scores
the same gene at a grid of candidate values and reads an expected value off the softmax.

Why the pair term: pooling ``name + value`` alone gives pooled names plus pooled values, blind to which
value sits on which gene. ``n_g ⊙ a(v)`` is gene-specific from the start (summed over genes it contains a
learned linear map of the expression vector, as in BLEEP), and the per-token MLP that follows binds name
and value further. Then:

1. attention pooling with ``K`` learned queries (masked softmax over the real tokens) → a context vector;
2. the context is broadcast back to every token and mixed in by a second per-token MLP (contextual token
   states, used by PAAT's discriminator);
3. attention pooling again → LayerNorm → :class:`SentenceCentering` → sentence embedding.

Every step is per-token or queries×tokens with ``K`` fixed, so memory and time are ``O(B·G·d)``; there is
no token×token attention.

``use_names=False`` (BLEEP-like) replaces ``n_g`` by a learned identity vector per panel gene (no text);
``use_values=False`` (OmiCLIP-like) keeps only ``n_g`` and restricts each sentence to its ``top_k_names``
most expressed genes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ._distributed import all_reduce_sum, rand_rows
from ._gene_names import embed_gene_names


class _MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class AttentionPool(nn.Module):
    """Multi-head attention pooling of a padded token set onto ``K`` learned queries (linear in ``G``).

    Parameters
    ----------
    dim
        Token width.
    n_queries
        Number of learned queries ``K``.
    n_heads
        Attention heads.

    Examples
    --------
    >>> pool = AttentionPool(16, n_queries=2, n_heads=4)
    >>> pool(torch.randn(3, 10, 16), torch.ones(3, 10, dtype=torch.bool)).shape
    torch.Size([3, 2, 16])

    """

    def __init__(self, dim: int, n_queries: int = 4, n_heads: int = 4) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.queries = nn.Parameter(torch.randn(n_queries, dim))
        self.norm = nn.LayerNorm(dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``tokens [B, G, d]`` where ``mask [B, G]`` is True → ``[B, K, d]``; empty rows give zeros."""
        b, g, d = tokens.shape
        h, dh = self.n_heads, d // self.n_heads
        x = self.norm(tokens)
        k = self.k(x).view(b, g, h, dh)
        v = self.v(x).view(b, g, h, dh)
        q = self.queries.view(-1, h, dh)
        scores = torch.einsum("khd,bghd->bhkg", q, k) / dh**0.5  # [B, h, K, G]: K fixed, so linear in G
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row without real tokens pools to zero
        out = torch.einsum("bhkg,bghd->bkhd", attn, v).reshape(b, -1, d)
        return self.o(out)


class SentenceCentering(nn.Module):
    """Remove the common component of sentence embeddings (batch mean in training, running mean in eval).

    Spots of one tissue share most genes and much of their expression, so pooled sentences start out
    nearly identical (cosine ≈ 0.998 between random spots at initialisation) and InfoNCE then tends to
    collapse both branches onto one point. Subtracting the mean sentence, as BatchNorm does without the
    scaling, keeps the spot-to-spot differences that contrastive learning needs. Like BatchNorm: training
    uses the batch mean (gradients flow through it) and updates a running mean that evaluation uses;
    under DDP the mean is that of the global batch (summed over processes), so every process centres and
    updates its running mean alike.

    Parameters
    ----------
    dim
        Feature width.
    momentum
        Weight of the batch mean in the running-mean update.

    Examples
    --------
    >>> c = SentenceCentering(3)
    >>> x = torch.randn(8, 3) + 5
    >>> bool(c(x).mean(0).abs().max() < 1e-5)
    True

    """

    def __init__(self, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, n_ref: int | None = None, running: bool = False) -> torch.Tensor:
        """Centre ``x [B, d]``; in training the mean is taken over the first ``n_ref`` rows (default all).

        ``running=True`` subtracts the running mean even in training (and leaves it unchanged): for sentences
        that are not a sample of spots, such as the zero-shot query sentences.
        """
        if running or not self.training:
            return x - self.running_mean
        ref = x if n_ref is None else x[:n_ref]
        # Sum and count over the global batch (one collective under DDP; gradients flow back to every
        # process's rows), so every process centres on the same mean, that of the single-process step.
        stats = all_reduce_sum(
            torch.cat([ref.float().sum(0), ref.new_full((1,), ref.shape[0], dtype=torch.float32)])
        )
        # Decided on the device, not the host: reading the count back would make the host wait for the GPU
        # at every step. Fewer than 2 sentences fall back to the running mean and leave it unchanged.
        n = stats[-1].detach()
        enough = n >= 2
        mean = stats[:-1] / n.clamp(min=1.0)
        with torch.no_grad():
            # The first batch's mean replaces the zero start; later ones move it by ``momentum``.
            weight = torch.where(self.num_batches_tracked == 0, 1.0, self.momentum)
            moved = self.running_mean.lerp(mean.detach(), weight)
            self.running_mean.copy_(torch.where(enough, moved, self.running_mean))
            self.num_batches_tracked += enough.long()
        return x - torch.where(enough, mean, self.running_mean).to(x.dtype)


class GeneTextEncoder(nn.Module):
    """Encode gene sentences ``(gene_idx, values, mask)`` into token states and a sentence embedding.

    Parameters
    ----------
    gene_names
        Vocabulary (the training panel); row ``i`` of every lookup table belongs to ``gene_names[i]``.
    dim
        Token / sentence width (``gene_dim``).
    text_encoder
        Resolved text backend (``"minilm"``, ``"char-ngram"`` or a local model path); unused if
        ``use_names=False``.
    use_names, use_values
        Ablation flags (see :class:`~comtip_sc.model.ComtipConfig`).
    top_k_names
        Sentence length of the names-only mode.
    n_pool_queries, n_heads
        Attention-pooling queries and heads.
    value_hidden
        Hidden width of the value MLP.
    char_ngram_dim
        Dimension of the n-gram text backend.
    descriptions
        Optional gene descriptions for the text model.

    Examples
    --------
    >>> enc = GeneTextEncoder(["CD3E", "EPCAM", "ALB"], dim=16, text_encoder="char-ngram", n_heads=2)
    >>> idx = torch.tensor([[0, 1, 2], [2, 0, -1]])  # -1 = padding
    >>> out = enc(idx, torch.rand(2, 3), idx >= 0)
    >>> out["tokens"].shape, out["sentence"].shape
    (torch.Size([2, 3, 16]), torch.Size([2, 16]))

    """

    def __init__(
        self,
        gene_names: Sequence[str],
        dim: int = 256,
        *,
        text_encoder: str = "char-ngram",
        use_names: bool = True,
        use_values: bool = True,
        top_k_names: int = 50,
        n_pool_queries: int = 4,
        n_heads: int = 4,
        value_hidden: int = 64,
        char_ngram_dim: int = 256,
        descriptions: Sequence[str | None] | None = None,
    ) -> None:
        super().__init__()
        if len(set(gene_names)) != len(gene_names):
            raise ValueError("gene_names must be unique.")
        self.gene_names: list[str] = [str(g) for g in gene_names]
        self._index = {g: i for i, g in enumerate(self.gene_names)}
        self.dim = dim
        self.text_encoder = text_encoder
        self.char_ngram_dim = char_ngram_dim
        self.use_names = use_names
        self.use_values = use_values
        self.top_k_names = top_k_names
        v = len(self.gene_names)

        if use_names:
            emb = embed_gene_names(self.gene_names, text_encoder, descriptions, char_ngram_dim=char_ngram_dim)
            # Persistent buffer: saved weights carry the exact text embeddings they were trained with.
            self.register_buffer("name_emb", torch.from_numpy(np.ascontiguousarray(emb)).float())
            # Text embeddings of gene symbols share a large common direction (all are short, symbol-like
            # strings); removing the panel's mean leaves what tells genes apart. The mean is a saved buffer,
            # so genes added later are centred with the training panel's mean.
            self.register_buffer("name_mean", self.name_emb.mean(0) if v else torch.zeros(emb.shape[1]))
            self.name_proj = nn.Linear(emb.shape[1], dim)
            self.gene_residual = nn.Embedding(v, dim)
            nn.init.zeros_(self.gene_residual.weight)
        else:
            # BLEEP-like: a learned identity vector per panel gene and no text at all.
            self.gene_identity = nn.Embedding(v, dim)
            nn.init.normal_(self.gene_identity.weight, std=0.02)
        if use_values:
            # One MLP gives both the additive value embedding f(v) and the gate g(v) of the interaction term.
            self.value_mlp = _MLP(1, value_hidden, 2 * dim)
        self.name_norm = nn.LayerNorm(dim)
        if use_values:
            self.value_norm = nn.LayerNorm(dim)
        self.token_norm = nn.LayerNorm(dim)
        self.bind_norm = nn.LayerNorm(dim)
        self.bind_mlp = _MLP(dim, 2 * dim, dim)
        self.pool_ctx = AttentionPool(dim, n_pool_queries, n_heads)
        self.ctx_proj = nn.Linear(n_pool_queries * dim, dim)
        self.mix_norm = nn.LayerNorm(dim)
        self.mix_mlp = _MLP(dim, 2 * dim, dim)
        self.pool_out = AttentionPool(dim, n_pool_queries, n_heads)
        self.out_proj = nn.Linear(n_pool_queries * dim, dim)
        self.out_norm = nn.LayerNorm(dim)
        self.center = SentenceCentering(dim)

    # -- vocabulary --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of genes in the vocabulary."""
        return len(self.gene_names)

    def gene_index(self, names: Sequence[str], missing: int | None = None) -> torch.LongTensor:
        """Vocabulary indices of ``names``; unknown names raise ``KeyError`` unless ``missing`` is given."""
        if missing is None:
            unknown = [n for n in names if n not in self._index]
            if unknown:
                raise KeyError(f"Genes not in the vocabulary: {unknown[:10]} (use add_genes).")
        return torch.tensor([self._index.get(n, missing) for n in names], dtype=torch.long)

    @torch.no_grad()
    def add_genes(
        self, names: Sequence[str], descriptions: Sequence[str | None] | None = None
    ) -> torch.LongTensor:
        """Append genes (e.g. outside the training panel) to the vocabulary; return the indices of ``names``.

        New genes get their text embedding and a zero residual, so their token is ``W t_g + f(v)``: the name
        alone decides it. Names already present are left untouched. Call this after training (new rows are
        new parameters the optimiser does not know).
        """
        if not self.use_names:
            raise ValueError("use_names=False (values-only) has no way to embed genes outside the panel.")
        new = list(dict.fromkeys(str(n) for n in names if str(n) not in self._index))
        if new:
            descs = None
            if descriptions is not None:
                d_of = dict(zip((str(n) for n in names), descriptions, strict=True))
                descs = [d_of[n] for n in new]
            emb = embed_gene_names(new, self.text_encoder, descs, char_ngram_dim=self.char_ngram_dim)
            dev = self.name_emb.device
            self.name_emb = torch.cat([self.name_emb, torch.from_numpy(emb).to(dev, self.name_emb.dtype)])
            w = self.gene_residual.weight
            grown = nn.Embedding(w.shape[0] + len(new), w.shape[1]).to(w.device, w.dtype)
            grown.weight.zero_()
            grown.weight[: w.shape[0]] = w
            self.gene_residual = grown
            for n in new:
                self._index[n] = len(self.gene_names)
                self.gene_names.append(n)
        return self.gene_index([str(n) for n in names])

    # -- sentence selection ------------------------------------------------------------------------
    def select_tokens(
        self,
        gene_idx: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        max_genes: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the tokens the sentence is made of, per spot, as a narrower padded batch.

        Names-only mode (``use_values=False``) keeps the ``top_k_names`` most expressed real genes of each spot.
        ``max_genes`` (training-time ``gene_subsample``) then keeps a uniform random subset of at most that many
        real tokens. Both are a ``topk`` over ``G``: linear cost.
        """
        if not self.use_values:
            gene_idx, values, mask = _topk_tokens(
                values.masked_fill(~mask, float("-inf")), gene_idx, values, mask, self.top_k_names
            )
        if max_genes is not None and max_genes < gene_idx.shape[1]:
            noise = rand_rows(*values.shape, device=values.device, generator=generator)
            gene_idx, values, mask = _topk_tokens(
                noise.masked_fill(~mask, -1.0), gene_idx, values, mask, max_genes
            )
        return gene_idx, values, mask

    # -- encoding ----------------------------------------------------------------------------------
    def name_table(self) -> torch.Tensor:
        """``[V, d]`` name part of every vocabulary gene."""
        if self.use_names:
            return self.name_proj(self.name_emb - self.name_mean) + self.gene_residual.weight
        return self.gene_identity.weight

    def name_part(self, idx: torch.Tensor) -> torch.Tensor:
        """Name part of the tokens ``idx`` (``[B, G]`` valid indices) → ``[B, G, d]``."""
        if not self.use_names:
            return self.gene_identity(idx)
        if idx.numel() < self.vocab_size:  # few tokens: project only those
            return self.name_proj(self.name_emb[idx] - self.name_mean) + self.gene_residual(idx)
        return self.name_table()[idx]  # many tokens: project the vocabulary once, then gather

    def forward(
        self,
        gene_idx: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        select: bool = True,
        n_ref: int | None = None,
        running_center: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode a batch of sentences.

        Parameters
        ----------
        gene_idx
            ``[B, G]`` vocabulary indices; padded positions may hold any value (e.g. ``-1``).
        values
            ``[B, G]`` normalised log1p values.
        mask
            ``[B, G]`` True for real tokens.
        select
            Apply :meth:`select_tokens` (names-only top-k) first; callers that already selected pass False.
        n_ref
            In training, centre sentences on the mean of the first ``n_ref`` rows only (PAAT stacks the
            corrupted copies after the true sentences, which must not shift the centre).
        running_center
            Centre on the running mean of training sentences even in training (zero-shot query sentences).

        Returns
        -------
        dict with ``tokens`` (``[B, G', d]`` contextual token states, zero at padding), ``sentence``
        (``[B, d]``), ``mask`` (``[B, G']``) and ``gene_idx`` (``[B, G']``) of the tokens actually used.

        """
        mask = mask.bool()
        if select:
            gene_idx, values, mask = self.select_tokens(gene_idx, values, mask)
        idx = gene_idx.clamp(min=0)
        x = self.name_norm(self.name_part(idx))  # [B, G, d]
        if self.use_values:
            f, gate = self.value_mlp(values.to(x.dtype).unsqueeze(-1)).chunk(2, dim=-1)
            x = x + self.value_norm(f) + x * gate  # name part + value part + their interaction
        x = self.token_norm(x)
        x = x + self.bind_mlp(self.bind_norm(x))  # per-token non-linearity binds each name to its value
        ctx = self.ctx_proj(self.pool_ctx(x, mask).flatten(1))  # [B, d] summary of the whole sentence
        x = x + self.mix_mlp(self.mix_norm(x + ctx[:, None, :]))  # token states now see the spot's context
        x = x * mask[..., None].to(x.dtype)
        sentence = self.center(
            self.out_norm(self.out_proj(self.pool_out(x, mask).flatten(1))), n_ref, running_center
        )
        return {"tokens": x, "sentence": sentence, "mask": mask, "gene_idx": gene_idx}


def _topk_tokens(
    score: torch.Tensor, gene_idx: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = min(k, score.shape[1])
    top = score.topk(k, dim=1).indices
    return gene_idx.gather(1, top), values.gather(1, top), mask.gather(1, top)
