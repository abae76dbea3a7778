"""Loss functions of CoMTIP, standalone (plain tensors in, scalar tensors out).

* :func:`info_nce`: symmetric image↔sentence InfoNCE; under ``torch.distributed`` the negatives of all
  processes are gathered *with* gradients.
* :func:`mfm_loss`: Masked Feature Modeling regression of generated onto full-branch features.
* :func:`paat_losses`: Pair-aware Adversarial Training terms (token-level mismatch detection BCE and the
  image-anchored ranking of the true sentence against its own corrupted copy).
* :class:`LogitScale`: CLIP-style learnable temperature.

Every mean over rows, tokens or entries is taken over the global batch under ``torch.distributed``
(:func:`~comtip_sc.model._distributed.mean_share`): the mean over processes of what each returns is the
loss one process computes on the whole batch, and DDP's gradient average is that loss's gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._distributed import gather_with_grad, global_count, mean_share

__all__ = ["gather_with_grad"]  # re-exported: it lived here before the collectives had their own module

MAX_LOGIT_SCALE = 100.0


class LogitScale(nn.Module):
    """Learnable inverse temperature ``exp(s)``, initialised at ``1 / T0`` and clamped to at most 100.

    Examples
    --------
    >>> round(float(LogitScale(0.07)().detach()), 3)
    14.286

    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = MAX_LOGIT_SCALE) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        """Current ``logit_scale`` (a scalar tensor)."""
        # Clamp in log space: the clamp passes no gradient once at the cap, as in CLIP.
        return self.log_scale.clamp(max=self.max_log).exp()


def info_nce(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of ``img`` and ``txt`` (both L2-normalised ``[B, d]``).

    .. math::
        \\mathcal L = \\tfrac12\\big[\\mathrm{CE}(s\\,I T^\\top, y) + \\mathrm{CE}(s\\,T I^\\top, y)\\big]

    Under ``torch.distributed`` every process scores its local rows against the rows of *all* processes
    (gathered with gradients) and the targets are offset by the rows of lower ranks (``rank·B`` with equal
    batches). Each process returns its share of the global mean, so the mean of the per-process losses
    equals the single-process loss on the global batch (also with unequal local batches), and DDP's
    gradient averaging yields that loss's gradient.

    Parameters
    ----------
    img, txt
        ``[B, d]`` embeddings; row ``i`` of each forms a positive pair.
    logit_scale
        Inverse temperature (e.g. :class:`LogitScale` output).

    Returns
    -------
    Scalar loss.

    Examples
    --------
    >>> x = F.normalize(torch.randn(4, 8), dim=-1)
    >>> bool(info_nce(x, x, 100.0) < info_nce(x, x.roll(1, 0), 100.0))
    True

    """
    img_all, offset = gather_with_grad(img)
    txt_all, _ = gather_with_grad(txt)
    labels = torch.arange(img.shape[0], device=img.device) + offset
    logits_img = logit_scale * img @ txt_all.t()
    logits_txt = logit_scale * txt @ img_all.t()
    total = F.cross_entropy(logits_img, labels, reduction="sum") + F.cross_entropy(
        logits_txt, labels, reduction="sum"
    )
    return 0.5 * mean_share(total, img.shape[0])


def mfm_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Masked Feature Modeling loss between generated ``Ẑ_U`` and full-branch ``Z_U`` (``[B, n, D]``).

    The target is detached here (stop-gradient), so the full branch is never pulled toward the
    generator's guess; only the masked branch and the generator learn from this term.

    Parameters
    ----------
    pred
        Generated features of hidden patches.
    target
        Full-branch features at the same positions.
    kind
        ``"mse"`` (mean squared error over all elements) or ``"cosine"`` (mean ``1 - cos`` per token).

    Examples
    --------
    >>> z = torch.randn(2, 3, 4)
    >>> float(mfm_loss(z, z))
    0.0

    """
    target = target.detach()
    if kind == "mse":
        return mean_share(F.mse_loss(pred, target, reduction="sum"), pred.numel())
    if kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(pred, target, dim=-1)
        return mean_share(per_token.sum(), per_token.numel())
    raise ValueError(f"Unknown MFM loss {kind!r}.")


def pair_detection_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced token BCE and balanced accuracy of the mismatch discriminator.

    Positives (mismatched tokens) are a minority (about ``paat_corrupt_frac``); averaging the BCE of the
    two classes separately keeps the discriminator from settling on "never mismatched", and makes the
    chance level of the balanced accuracy 0.5 whatever the corruption fraction.

    Parameters
    ----------
    logits
        ``[B, G]`` discriminator logits (mismatch = positive).
    labels
        ``[B, G]`` bool, True where the token's value was swapped for a different one.
    mask
        ``[B, G]`` bool, real tokens.

    Returns
    -------
    ``(bce, balanced_accuracy)``; the accuracy is detached.

    """
    labels = labels.to(logits.dtype)
    per_tok = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    pos = mask & (labels > 0.5)
    neg = mask & (labels < 0.5)
    terms, accs, present = [], [], []
    pred = logits > 0
    for sel, target in ((pos, True), (neg, False)):
        # Counts over the global batch: one process may hold no mismatched token while another does.
        n = global_count(sel.sum()).to(logits.device)
        terms.append(mean_share(torch.where(sel, per_tok, 0.0).sum(), sel.sum(), summed=n))
        accs.append(global_count(((pred == target) & sel).sum()).to(logits.device) / n.clamp(min=1.0))
        present.append(n > 0)
    # The mean over the classes present, weighted on the device: a host-side "if n > 0" would make the host
    # wait for the GPU at every step. No real token at all gives a zero in the graph and chance accuracy.
    weight = torch.stack(present).to(logits.dtype)
    k = weight.sum()
    bce = (torch.stack(terms) * weight).sum() / k.clamp(min=1.0)
    acc = torch.where(k > 0, (torch.stack(accs) * weight).sum() / k.clamp(min=1.0), 0.5)
    return bce, acc.detach()


def pair_ranking_loss(
    img: torch.Tensor, txt: torch.Tensor, txt_corrupt: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Image-anchored 2-way softmax: each image must prefer its true sentence over its corrupted copy.

    .. math:: \\mathcal L_{rank} = -\\log \\frac{e^{s\\,i\\cdot t}}{e^{s\\,i\\cdot t} + e^{s\\,i\\cdot \\tilde t}}

    The corrupted sentence has the same genes and the same multiset of values as the true one, so this
    negative is only separable through the gene-value pairing.

    Examples
    --------
    >>> i = F.normalize(torch.randn(3, 8), dim=-1)
    >>> bool(pair_ranking_loss(i, i, -i, 10.0) < pair_ranking_loss(i, -i, i, 10.0))
    True

    """
    pos = (img * txt).sum(-1)
    neg = (img * txt_corrupt).sum(-1)
    logits = logit_scale * torch.stack([pos, neg], dim=-1)
    target = torch.zeros(img.shape[0], dtype=torch.long, device=img.device)
    return mean_share(F.cross_entropy(logits, target, reduction="sum"), img.shape[0])


def paat_losses(
    disc_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    img: torch.Tensor,
    txt: torch.Tensor,
    txt_corrupt: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """All PAAT terms: ``paat_bce``, ``paat_rank``, their sum ``paat`` and ``paat_acc`` (balanced accuracy).

    Parameters
    ----------
    disc_logits, labels, mask
        Token-level discriminator logits, mismatch labels and real-token mask of the corrupted sentences.
    img, txt, txt_corrupt
        L2-normalised image, true-sentence and corrupted-sentence embeddings ``[B, d]``.
    logit_scale
        Shared inverse temperature of InfoNCE.

    Examples
    --------
    >>> e = F.normalize(torch.randn(2, 4), dim=-1)
    >>> out = paat_losses(torch.zeros(2, 3), torch.rand(2, 3) > 0.5, torch.ones(2, 3, dtype=torch.bool), e, e, -e, 10.0)
    >>> sorted(out)
    ['paat', 'paat_acc', 'paat_bce', 'paat_rank']

    """
    bce, acc = pair_detection_loss(disc_logits, labels, mask)
    rank = pair_ranking_loss(img, txt, txt_corrupt, logit_scale)
    return {"paat": bce + rank, "paat_bce": bce, "paat_rank": rank, "paat_acc": acc}


def candidate_values(vmax: torch.Tensor, n: int) -> torch.Tensor:
    """The value grid of the zero-shot read-out: ``n`` evenly spaced values from 0 to ``vmax`` per gene.

    Training (:func:`value_query_loss`) and prediction (``cs.tl.comtip_predict(method="zero_shot")``) use
    this one definition and the same ``value_query_candidates`` points (8 by default), so the read-out is
    read on exactly the values it was trained on.

    Examples
    --------
    >>> candidate_values(torch.tensor([2.0, 4.0]), 3)
    tensor([[0., 1., 2.],
            [0., 2., 4.]])

    """
    steps = torch.linspace(0.0, 1.0, n, device=vmax.device, dtype=vmax.dtype)
    return vmax[:, None].clamp(min=1e-6) * steps


def expected_value(
    scores: torch.Tensor, candidates: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """The zero-shot read-out: ``Σ_m softmax_m(s · score_{nqm}) · c_{qm}``, shape ``[N, Q]``.

    ``scores`` are cosine similarities ``[N, Q, M]`` of images to the candidate-value sentences of each
    query gene, ``candidates`` their values ``[Q, M]``, ``logit_scale`` the inverse temperature ``s``.

    Examples
    --------
    >>> c = torch.tensor([[0.0, 1.0, 2.0]])
    >>> expected_value(torch.tensor([[[0.0, 0.0, 1.0]]]), c, 100.0).round(decimals=3)
    tensor([[2.]])

    """
    probs = torch.softmax(logit_scale * scores, dim=-1)
    return (probs * candidates.to(probs.dtype)).sum(-1)


def value_query_loss(
    img: torch.Tensor,
    query_txt: torch.Tensor,
    candidates: torch.Tensor,
    true_values: torch.Tensor,
    valid: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """Train the zero-shot read-out: each image picks the candidate value of a gene nearest its true value.

    For query gene ``q`` the sentences ``t_{q1..qM}`` each hold the single pair ``(q, c_{qm})``, one per
    candidate value ``c_{q1..qM}``. Image ``i`` scores them, ``p_{iqm} = softmax_m(s · i·t_{qm})``, and is
    trained towards a Gaussian soft target centred on its true value ``x_{iq}`` (bandwidth = the grid
    step), i.e. cross-entropy ``−Σ_m y_{iqm} log p_{iqm}``. This is exactly the quantity zero-shot
    prediction reads (``Σ_m p_{iqm} c_{qm}``), so the contrastive space learns to answer it.

    Parameters
    ----------
    img
        L2-normalised image embeddings ``[B, d]``.
    query_txt
        L2-normalised query-sentence embeddings ``[Q, M, d]``.
    candidates
        Candidate values ``[Q, M]`` (increasing, evenly spaced; see :func:`candidate_values`).
    true_values
        ``[B, Q]`` value of each query gene at each spot.
    valid
        ``[B, Q]`` False where a spot does not measure the gene (its term is skipped).
    logit_scale
        Inverse temperature (the shared InfoNCE one, so prediction reads the same softmax).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> t = F.normalize(torch.randn(1, 3, 8), dim=-1)
    >>> c = torch.tensor([[0.0, 1.0, 2.0]])
    >>> ok = torch.ones(1, 1, dtype=torch.bool)
    >>> right = value_query_loss(t[:, 2], t, c, torch.tensor([[2.0]]), ok, 20.0)
    >>> wrong = value_query_loss(t[:, 0], t, c, torch.tensor([[2.0]]), ok, 20.0)
    >>> bool(right < wrong)
    True

    """
    logits = logit_scale * torch.einsum("bd,qmd->bqm", img, query_txt)
    step = (candidates[:, 1:] - candidates[:, :-1]).mean(-1).clamp(min=1e-6)  # [Q]
    dist = (candidates[None] - true_values[..., None]) / step[None, :, None]  # [B, Q, M]
    target = torch.softmax(-0.5 * dist.square(), dim=-1)
    nll = -(target * torch.log_softmax(logits.float(), dim=-1)).sum(-1)  # [B, Q]
    # No valid entry in the global batch gives a zero that still belongs to the graph.
    return mean_share(torch.where(valid, nll, 0.0).sum(), valid.sum())
