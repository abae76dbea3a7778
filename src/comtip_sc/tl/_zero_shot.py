"""Zero-shot read-out: a gene's expected value under the softmax over its candidate-value sentences.

The softmax needs a temperature. Training learns one (InfoNCE and the value-query term share it), but
that temperature is fitted for classification (pick the right spot, the right value bin), not for what the
prediction is scored on: how well the read values *rank* spots for each gene (Pearson). A cooler softmax
snaps to the nearest candidate; a warmer one reads a smoother, more linear function of the similarities.
:func:`calibrate_zero_shot` picks the read-out temperature once, at the end of training, from a small grid
of multiples of the learned one, by PCC-ALL of zero-shot predictions on the spots given to ``fit`` (the
reference bank's image embeddings and expression; validation sections, if any, are among them): no
held-out data is looked at.
"""

from __future__ import annotations

import copy as _copy
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..model._comtip_model import ComtipModel
from ..model._losses import candidate_values, expected_value
from ._evaluate import pearson_per_gene

log = logging.getLogger(__name__)

#: Read-out temperatures tried by :func:`calibrate_zero_shot`, as multiples of the learned temperature.
READOUT_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Training spots used for the calibration (evenly spaced when there are more); bounds its cost.
CALIBRATION_SPOTS = 2048


def readout_temperature(model: ComtipModel) -> float:
    """The temperature zero-shot prediction uses: the calibrated one, else the learned one.

    Examples
    --------
    >>> readout_temperature(model)  # doctest: +SKIP
    0.28

    """
    if model.zero_shot_temperature is not None:
        return float(model.zero_shot_temperature)
    return _learned(model)


def readout_candidates(model: ComtipModel) -> int:
    """Candidate values per gene in zero-shot prediction: the grid the value-query term trained on.

    Reading on the training grid (``config.value_query_candidates``, 8 by default) rather than a finer one
    scored higher on 6 of 8 benchmark fits (``docs/benchmarks.md``): the read-out was trained to place its
    probability on exactly these values.

    Examples
    --------
    >>> readout_candidates(model)  # doctest: +SKIP
    8

    """
    return int(model.config.value_query_candidates)


def _learned(model: ComtipModel) -> float:
    return 1.0 / float(model.network.logit_scale().detach())


@torch.no_grad()
def zero_shot_values(
    img: np.ndarray,
    model: ComtipModel,
    genes: Sequence[str],
    temperatures: Sequence[float],
    chunk: int = 64,
    n_candidates: int | None = None,
) -> list[np.ndarray]:
    """Zero-shot predictions ``(n_spots, n_genes)`` of ``genes``, one array per read-out temperature.

    For gene ``g`` the candidates ``v_1..v_M`` run from 0 to the gene's largest training value (the largest
    over the panel for a gene outside it); sentence ``m`` holds the single pair ``(g, v_m)``
    (the sentences the value-query term trains on). The image embedding scores the ``M`` sentences; the
    prediction is ``Σ_m softmax_m(score / T) · v_m`` (:meth:`~comtip_sc.model.ComtipNetwork.read_values`,
    read here at each temperature from one scoring). No reference spot is used: only the gene's name and
    the panel's value range. ``n_candidates`` is ``M`` (default :func:`readout_candidates`).
    """
    net = model.network
    encoder = net.gene_encoder
    known = set(net.gene_names)
    new = [g for g in genes if g not in known]
    if new:
        # A private copy: adding genes must not change the user's model.
        encoder = _copy.deepcopy(encoder)
        encoder.add_genes(new)
    device = next(net.parameters()).device
    maxes = {g: v for g, v in model.gene_stats.get("max", {}).items() if np.isfinite(v) and v > 0}
    global_max = max(maxes.values(), default=8.0)
    vmax = torch.tensor([maxes.get(g, global_max) for g in genes], dtype=torch.float32)
    cands = candidate_values(vmax, n_candidates or readout_candidates(model))  # [Q, M]
    gene_idx = encoder.gene_index(list(genes)).to(device)
    img_t = torch.from_numpy(np.ascontiguousarray(img, np.float32)).to(device)
    preds = [np.zeros((len(img), len(genes)), np.float32) for _ in temperatures]
    for lo in range(0, len(genes), chunk):
        sl = slice(lo, lo + chunk)
        chunk_cands = cands[sl].to(device)
        # Sentences encoded and scored once; each temperature only re-reads the softmax.
        scores = net.query_scores(img_t, gene_idx[sl], chunk_cands, encoder)
        for out, t in zip(preds, temperatures, strict=True):
            out[:, sl] = expected_value(scores, chunk_cands, 1.0 / t).cpu().numpy()
    return preds


def calibrate_zero_shot(model: ComtipModel, max_spots: int = CALIBRATION_SPOTS) -> float | None:
    """Choose the zero-shot read-out temperature on the training spots; store it in the model.

    Tries :data:`READOUT_FACTORS` × the learned temperature and keeps the one whose zero-shot predictions on
    (up to ``max_spots`` of) the reference bank's spots reach the highest PCC-ALL against their measured
    expression. Sets ``model.zero_shot_temperature`` and records every score in
    ``model.history["zero_shot_calibration"]``. Called by :func:`comtip_sc.tl.fit`; a model without a bank
    with image embeddings, or trained without values, is left as it is (returns ``None``).

    Examples
    --------
    >>> calibrate_zero_shot(model)  # doctest: +SKIP
    0.28

    """
    bank = model.reference
    if not model.config.use_values or bank is None or bank.image_embeddings is None or len(bank.genes) == 0:
        return None
    keep = np.unique(
        np.linspace(0, len(bank.embeddings) - 1, min(max_spots, len(bank.embeddings))).astype(int)
    )
    learned = _learned(model)
    temps = [f * learned for f in READOUT_FACTORS]
    preds = zero_shot_values(bank.image_embeddings[keep], model, bank.genes, temps)
    true = bank.rows(keep)
    scores = [_pcc_all(true, pred) for pred in preds]
    best = int(np.argmax(scores))
    model.zero_shot_temperature = temps[best]
    model.history["zero_shot_calibration"] = {
        "learned_temperature": learned,
        "factors": list(READOUT_FACTORS),
        "train_pcc_all": scores,
        "chosen_factor": READOUT_FACTORS[best],
        "n_spots": len(keep),
    }
    log.info(
        "Zero-shot read-out temperature %.3g (%g × learned); PCC-ALL on %d training spots by factor: %s.",
        temps[best],
        READOUT_FACTORS[best],
        len(keep),
        ", ".join(f"{f:g}: {s:.3f}" for f, s in zip(READOUT_FACTORS, scores, strict=True)),
    )
    return temps[best]


def _pcc_all(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-gene Pearson, each gene over the spots that measure it (a bank can join several panels)."""
    if not np.isnan(true).any():
        return float(pearson_per_gene(true, pred).mean())
    r = [
        pearson_per_gene(true[ok, j : j + 1], pred[ok, j : j + 1])[0]
        for j in range(true.shape[1])
        if (ok := ~np.isnan(true[:, j])).sum() > 1
    ]
    return float(np.mean(r)) if r else 0.0
