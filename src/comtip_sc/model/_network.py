"""The CoMTIP network: vision branch + MFM, Gene-Text Encoder + PAAT, projection heads, InfoNCE."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._config import ComtipConfig
from ._distributed import broadcast_from_first
from ._gene_names import resolve_text_encoder
from ._gene_text import GeneTextEncoder
from ._losses import (
    LogitScale,
    candidate_values,
    expected_value,
    info_nce,
    mfm_loss,
    paat_losses,
    value_query_loss,
)
from ._paat import PairDiscriminator, corrupt_pairs
from ._vision import MaskFeatureGenerator, build_vision

log = logging.getLogger(__name__)


class ProjectionHead(nn.Module):
    """Map a branch's embedding into the shared space: ``p = Wx``, ``out = p + W₂ GELU(p)`` (BLEEP-style).

    Parameters
    ----------
    d_in, d_out
        Input and shared-space widths.
    dropout
        Dropout on the residual branch.

    Examples
    --------
    >>> ProjectionHead(8, 4)(torch.randn(2, 8)).shape
    torch.Size([2, 4])

    """

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.fc = nn.Sequential(nn.GELU(), nn.Linear(d_out, d_out), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[B, d_in]`` → ``[B, d_out]`` (not normalised)."""
        p = self.proj(x)
        return p + self.fc(p)


class ComtipNetwork(nn.Module):
    """CoMTIP: image and gene-sentence encoders aligned in one L2-normalised space.

    Build it with :func:`build_network`. The batch dict holds ``image`` (``[B, 3, H, W]``, normalised with
    :attr:`image_mean` / :attr:`image_std`), ``gene_idx`` (``[B, G]`` long, indices into
    :attr:`gene_names`), ``values`` (``[B, G]`` float, normalised log1p) and ``mask`` (``[B, G]`` bool).

    Attributes
    ----------
    config
        The config, with ``text_encoder`` resolved to the backend actually used (save this one).
    vision
        :class:`~comtip_sc.model._vision.VisionBranch`.
    gene_encoder
        :class:`~comtip_sc.model._gene_text.GeneTextEncoder`.
    mfm_generator
        The Mask Feature Generator; present only when ``config.mfm``.
    discriminator
        The PAAT pair discriminator; present only when ``config.paat``.

    Examples
    --------
    >>> cfg = ComtipConfig.preset("vit-tiny", tile_px=32, embed_dim=16, gene_dim=16,
    ...     text_encoder="char-ngram", n_heads_gene=2,
    ...     backbone_kwargs=dict(patch_size=8, depth=1, embed_dim=32, num_heads=2))
    >>> net = build_network(cfg, ["CD3E", "EPCAM", "ALB"])
    >>> batch = {"image": torch.randn(2, 3, 32, 32), "gene_idx": torch.tensor([[0, 1, 2]] * 2),
    ...          "values": torch.rand(2, 3), "mask": torch.ones(2, 3, dtype=torch.bool)}
    >>> sorted(net(batch))
    ['info_nce', 'logit_scale', 'loss', 'mfm', 'paat', 'paat_acc', 'paat_bce', 'paat_rank']
    >>> net.encode_image(batch["image"]).shape
    torch.Size([2, 16])

    """

    def __init__(self, config: ComtipConfig, gene_names: Sequence[str]) -> None:
        super().__init__()
        self.config = config
        self.vision = build_vision(config)
        d_vis = self.vision.dim
        if config.mfm and not self.vision.supports_mfm:
            raise ValueError(
                f"mfm=True with backbone {config.backbone!r} (a CNN or a frozen trunk) needs token_depth >= 1: "
                "MFM masks the tokens at the input of the token transformer."
            )
        if config.mfm:
            heads = config.mfm_heads or max(1, d_vis // 64)
            self.mfm_generator = MaskFeatureGenerator(d_vis, self.vision.num_patches, heads)
        self.gene_encoder = GeneTextEncoder(
            gene_names,
            config.gene_dim,
            text_encoder=config.text_encoder,
            use_names=config.use_names,
            use_values=config.use_values,
            top_k_names=config.top_k_names,
            n_pool_queries=config.n_pool_queries,
            n_heads=config.n_heads_gene,
            value_hidden=config.value_hidden,
            char_ngram_dim=config.char_ngram_dim,
        )
        if config.paat:
            self.discriminator = PairDiscriminator(config.gene_dim)
        self.image_head = ProjectionHead(d_vis, config.embed_dim, config.dropout)
        self.gene_head = ProjectionHead(config.gene_dim, config.embed_dim, config.dropout)
        self.logit_scale = LogitScale(config.init_temperature)
        # Largest normalised value of each vocabulary gene in the training data (NaN = unknown): the range of
        # the value-query candidates. Not part of the weights: fit sets it from its data, ComtipModel from
        # the saved gene_stats.
        self.register_buffer("stat_max", torch.full((len(gene_names),), float("nan")), persistent=False)

    # -- vocabulary & preprocessing facts ----------------------------------------------------------
    @property
    def gene_names(self) -> list[str]:
        """The gene vocabulary (training panel, then genes added by :meth:`add_genes`)."""
        return list(self.gene_encoder.gene_names)

    def gene_index(self, names: Sequence[str], missing: int | None = None) -> torch.LongTensor:
        """Vocabulary indices of ``names`` (see :meth:`GeneTextEncoder.gene_index`)."""
        return self.gene_encoder.gene_index(names, missing)

    def add_genes(
        self, names: Sequence[str], descriptions: Sequence[str | None] | None = None
    ) -> torch.LongTensor:
        """Add genes outside the panel (embedded from their names); returns their indices."""
        idx = self.gene_encoder.add_genes(names, descriptions)
        grow = len(self.gene_names) - len(self.stat_max)
        if grow > 0:  # new genes have no training values: their range is unknown
            self.stat_max = torch.cat([self.stat_max, self.stat_max.new_full((grow,), float("nan"))])
        return idx

    def set_gene_max(self, vmax: Sequence[float]) -> None:
        """Set the largest training value of each vocabulary gene (NaN where unknown)."""
        if len(vmax) != len(self.gene_names):
            raise ValueError(f"gene_max needs one entry per vocabulary gene ({len(self.gene_names)}).")
        self.stat_max = torch.as_tensor(vmax, dtype=torch.float32, device=self.stat_max.device).clone()

    def query_sentences(
        self, genes: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero-shot query sentences: one sentence per (gene, candidate value), holding that single pair.

        ``genes`` are vocabulary indices ``[Q]``, ``candidates`` their values ``[Q, M]``; returns
        ``(gene_idx, values, mask)`` of ``Q·M`` one-token sentences, query-major. A one-pair sentence makes
        the score depend on that gene's value alone (in a sentence of the whole panel, one token among
        hundreds barely moves the pooled embedding) and costs one token, so every training step can query
        the whole panel.
        """
        m = candidates.shape[1]
        idx = genes.repeat_interleave(m)[:, None]
        val = candidates.reshape(-1, 1).to(torch.float32)
        return idx, val, torch.ones_like(idx, dtype=torch.bool)

    def read_values(
        self,
        img: torch.Tensor,
        genes: torch.Tensor,
        candidates: torch.Tensor,
        encoder: GeneTextEncoder | None = None,
        logit_scale: float | None = None,
    ) -> torch.Tensor:
        """Zero-shot read-out: expected value of each gene under the softmax over its candidate sentences.

        Parameters
        ----------
        img
            L2-normalised image embeddings ``[N, embed_dim]``.
        genes
            Vocabulary indices ``[Q]`` (of ``encoder``'s vocabulary when given).
        candidates
            Candidate values ``[Q, M]`` (see :func:`~comtip_sc.model.candidate_values`).
        encoder
            Gene-Text Encoder to use instead of the network's own (e.g. a copy with genes added).
        logit_scale
            Inverse temperature of the softmax (default: the learned one; see
            :func:`comtip_sc.tl.comtip_predict`'s ``temperature``).

        Returns
        -------
        ``[N, Q]``: ``Σ_m softmax_m(s · img·t_{qm}) · c_{qm}`` with inverse temperature ``s``.

        """
        scores = self.query_scores(img, genes, candidates, encoder)
        return expected_value(scores, candidates, self.logit_scale() if logit_scale is None else logit_scale)

    def query_scores(
        self,
        img: torch.Tensor,
        genes: torch.Tensor,
        candidates: torch.Tensor,
        encoder: GeneTextEncoder | None = None,
    ) -> torch.Tensor:
        """Cosine similarities ``[N, Q, M]`` of images ``[N, embed_dim]`` to the :meth:`query_embeddings`.

        :meth:`read_values` turns them into values at one temperature; scoring once and reading at several
        (:func:`~comtip_sc.model.expected_value`) encodes the query sentences once.
        """
        txt = self.query_embeddings(genes, candidates, encoder)
        return torch.einsum("nd,qmd->nqm", img, txt.to(img.dtype))

    def query_embeddings(
        self, genes: torch.Tensor, candidates: torch.Tensor, encoder: GeneTextEncoder | None = None
    ) -> torch.Tensor:
        """L2-normalised embeddings ``[Q, M, embed_dim]`` of the :meth:`query_sentences` of ``genes``.

        The one place query sentences are encoded, for the value-query term in training and for
        :meth:`read_values` in prediction: centred on the running mean of training sentences in both (a set
        of query sentences is not a sample of spots), without names-only token selection (one token each).
        """
        encoder = self.gene_encoder if encoder is None else encoder
        idx, val, mask = self.query_sentences(genes, candidates)
        sent = encoder(idx, val, mask, select=False, running_center=True)["sentence"]
        return F.normalize(self.gene_head(sent), dim=-1).view(*candidates.shape, -1)

    @property
    def image_mean(self) -> tuple[float, ...]:
        """Per-channel mean the backbone expects (from its timm pretrained config)."""
        return tuple(self.vision.backbone.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))

    @property
    def image_std(self) -> tuple[float, ...]:
        """Per-channel std the backbone expects."""
        return tuple(self.vision.backbone.pretrained_cfg.get("std", (0.5, 0.5, 0.5)))

    # -- embeddings --------------------------------------------------------------------------------
    def encode_image(
        self, images: torch.Tensor | None = None, *, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L2-normalised image embedding ``[B, embed_dim]`` (full branch global token → projection).

        Give either ``images`` ``[B, 3, H, W]`` or, for a frozen trunk, its cached ``tokens`` ``[B, P, C]``
        (:func:`~comtip_sc.pp.cache_trunk_tokens`).
        """
        if tokens is not None:
            pooled, _ = self.vision.forward_from_tokens(tokens)
        else:
            pooled, _ = self.vision.forward_full(images)
        return F.normalize(self.image_head(pooled), dim=-1)

    def encode_batch_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`encode_image` of a collated batch, which holds ``"image"`` or cached ``"tokens"``."""
        if "tokens" in batch:
            return self.encode_image(tokens=batch["tokens"])
        return self.encode_image(batch["image"])

    def encode_genes(self, gene_idx: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised gene-sentence embedding ``[B, embed_dim]`` (all real genes; top-k in names-only)."""
        out = self.gene_encoder(gene_idx, values, mask)
        return F.normalize(self.gene_head(out["sentence"]), dim=-1)

    # -- training objective ------------------------------------------------------------------------
    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Compute the losses of one batch.

        Returns
        -------
        dict with ``loss`` (total), ``info_nce``, ``logit_scale`` and, when enabled, ``mfm`` and
        ``paat``/``paat_bce``/``paat_rank``/``paat_acc``. Disabled terms are neither computed nor present.

        """
        cfg = self.config
        images = batch.get("image")
        vision = self.vision
        # Cached trunk tokens stand in for a frozen trunk's pass; otherwise, when masking happens after the
        # trunk, both views share one trunk pass.
        tokens = batch.get("tokens")
        if tokens is None and not vision.mask_in_trunk and vision.tokens is not None:
            tokens = vision.trunk_tokens(images)
        pooled, patches = (
            vision.forward_full(images) if tokens is None else vision.forward_from_tokens(tokens)
        )
        img = F.normalize(self.image_head(pooled), dim=-1)

        gene_idx, values, mask = self.gene_encoder.select_tokens(
            batch["gene_idx"],
            batch["values"],
            batch["mask"].bool(),
            max_genes=cfg.gene_subsample if self.training else None,
            generator=generator,
        )
        b = values.shape[0]
        if cfg.paat:
            # The mismatched copies go through the encoder in the same pass, stacked after the true
            # sentences; the centring statistics come from the true sentences only (n_ref).
            bad_values, labels = corrupt_pairs(values, mask, cfg.paat_corrupt_frac, generator)
            enc = self.gene_encoder(
                gene_idx.repeat(2, 1),
                torch.cat([values, bad_values]),
                mask.repeat(2, 1),
                select=False,
                n_ref=b,
            )
        else:
            enc = self.gene_encoder(gene_idx, values, mask, select=False)
        txt_all = F.normalize(self.gene_head(enc["sentence"]), dim=-1)
        txt = txt_all[:b]

        scale = self.logit_scale()
        out: dict[str, Any] = {"logit_scale": scale.detach()}
        out["info_nce"] = info_nce(img, txt, scale)
        loss = out["info_nce"]

        if cfg.mfm:
            if tokens is None:
                view = vision.forward_masked(images, generator=generator)
            else:
                view = vision.forward_masked_from_tokens(tokens, generator=generator)
            pred = self.mfm_generator(view.visible, view.ids_hidden, self.vision.patch_pos_embed())
            target = patches.gather(1, view.ids_hidden[..., None].expand(-1, -1, patches.shape[-1]))
            out["mfm"] = mfm_loss(pred, target, cfg.mfm_loss)
            loss = loss + cfg.lambda_mfm * out["mfm"]

        if cfg.paat:
            logits = self.discriminator(enc["tokens"][b:])
            out.update(paat_losses(logits, labels, mask, img, txt, txt_all[b:], scale))
            loss = loss + cfg.lambda_paat * out["paat"]

        query = self._sample_queries(batch, generator) if cfg.value_query else None
        if query is not None:
            cands = query["candidates"]
            # One-token sentences: a pass of their own (stacked with the full sentences they would be padded
            # to the panel's width).
            q_txt = self.query_embeddings(query["genes"], cands)
            # The temperature is InfoNCE's; this term trains the embeddings to use it, not the other way.
            out["value_query"] = value_query_loss(
                img, q_txt, cands, query["true"], query["valid"], scale.detach()
            )
            loss = loss + cfg.lambda_value_query * out["value_query"]

        out["loss"] = loss
        return out

    def _known_genes(self) -> torch.Tensor:
        """Vocabulary indices with a panel maximum, recomputed only when ``stat_max`` changes.

        ``nonzero`` reads a tensor back to the host (on a GPU the host waits for every queued kernel); the
        statistics change with ``set_gene_max``/``add_genes``/``to()`` only, so once per change is enough.
        """
        stats = self.stat_max
        # The tensor itself (kept alive, so never confused with a later one) and its in-place version.
        if getattr(self, "_known_of", None) is not stats or self._known_version != stats._version:
            self._known = torch.nonzero(torch.isfinite(stats) & (stats > 0)).squeeze(1)
            self._known_of, self._known_version = stats, stats._version
        return self._known

    def _sample_queries(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> dict[str, torch.Tensor] | None:
        """Pick the value-query genes of one step and read their true values off the batch."""
        known = self._known_genes()
        if known.numel() == 0:  # stats not set (a bare network outside fit): no term
            return None
        cfg = self.config
        n = min(cfg.value_query_genes, known.numel())
        pick = torch.randperm(known.numel(), generator=generator, device="cpu")[:n]
        pick = pick.to(known.device, non_blocking=True)  # a blocking copy would wait for the GPU
        pick = broadcast_from_first(pick)  # one set of query genes for the global batch under DDP
        genes = known[pick]
        # Spot × vocabulary tables by scatter-add (padding adds zeros), then the queried columns: O(B·(G+V)).
        real = batch["mask"].bool()
        idx = batch["gene_idx"].clamp(min=0)
        dense = torch.zeros(len(idx), len(self.stat_max), device=idx.device)
        dense.scatter_add_(1, idx, batch["values"].float() * real)
        seen = torch.zeros_like(dense).scatter_add_(1, idx, real.float())
        return {
            "genes": genes,
            "candidates": candidate_values(self.stat_max[genes], cfg.value_query_candidates),
            "true": dense[:, genes],
            "valid": seen[:, genes] > 0,
        }


def build_network(config: ComtipConfig | dict[str, Any], gene_names: Sequence[str]) -> ComtipNetwork:
    """Build a :class:`~comtip_sc.model.ComtipNetwork` from a config and the gene vocabulary.

    ``config.text_encoder="auto"`` is resolved here (MiniLM when installed, else character n-grams) and
    the resolved name is stored in ``network.config``, so a saved ``network.config.to_dict()`` rebuilds the
    same architecture elsewhere.

    Parameters
    ----------
    config
        :class:`ComtipConfig` or its dict.
    gene_names
        Gene vocabulary: the training panel, or ``network.gene_names`` of a saved model (to reload weights).

    Returns
    -------
    The network (random init, or with local pretrained backbone weights if configured).

    Examples
    --------
    >>> cfg = ComtipConfig.preset("vit-tiny", text_encoder="char-ngram", mfm=False, paat=False,
    ...     backbone_kwargs=dict(depth=1))
    >>> build_network(cfg, ["CD3E", "EPCAM"]).gene_names
    ['CD3E', 'EPCAM']

    """
    if isinstance(config, dict):
        config = ComtipConfig.from_dict(config)
    if config.use_names and config.text_encoder == "auto":
        config = config.replace(text_encoder=resolve_text_encoder("auto"))
        log.info(
            "Gene-name text encoder: %r (text_encoder='auto' takes MiniLM when installed; results differ "
            "between the two, so set text_encoder= to fix the choice).",
            config.text_encoder,
        )
    return ComtipNetwork(config, gene_names)
