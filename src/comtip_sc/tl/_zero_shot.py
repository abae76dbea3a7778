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
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..model._comtip_model import ComtipModel
from ..model._losses import candidate_values, expected_value
from ._evaluate import pearson_per_gene
from ._ridge import RIDGE_ALPHAS, spatial_folds

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


def _query_scores(
    img: np.ndarray, model: ComtipModel, genes: Sequence[str], n_candidates: int, chunk: int
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """``(columns, scores [N, q, M], candidates [q, M])`` for chunks of ``genes``: the query-sentence scores.

    For gene ``g`` the candidates ``v_1..v_M`` run from 0 to the gene's largest training value (the largest
    over the panel for a gene outside it); sentence ``m`` holds the single pair ``(g, v_m)`` (the sentences
    the value-query term trains on), and its score is its cosine similarity with the image embedding.
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
    cands = candidate_values(vmax, n_candidates)  # [Q, M]
    gene_idx = encoder.gene_index(list(genes)).to(device)
    img_t = torch.from_numpy(np.ascontiguousarray(img, np.float32)).to(device)
    with torch.no_grad():
        for lo in range(0, len(genes), chunk):
            sl = slice(lo, lo + chunk)
            chunk_cands = cands[sl].to(device)
            yield sl, net.query_scores(img_t, gene_idx[sl], chunk_cands, encoder), chunk_cands


def zero_shot_values(
    img: np.ndarray,
    model: ComtipModel,
    genes: Sequence[str],
    temperatures: Sequence[float],
    chunk: int = 64,
    n_candidates: int | None = None,
    calibrated: bool = True,
) -> list[np.ndarray]:
    """Zero-shot predictions ``(n_spots, n_genes)`` of ``genes``, one array per read-out temperature.

    The image embedding scores the ``M`` one-pair sentences of each gene (:func:`_query_scores`); the
    prediction is ``Σ_m softmax_m(score / T) · v_m`` (:meth:`~comtip_sc.model.ComtipNetwork.read_values`,
    read here at each temperature from one scoring). No reference spot is used: only the gene's name and
    the panel's value range. ``n_candidates`` is ``M`` (default :func:`readout_candidates`).

    With ``calibrated`` (default), genes that ``model.zero_shot_readout`` holds (the training panel, read
    on the same ``M`` candidates) are read by its linear map of their ``M`` scores instead, at every
    temperature alike (:func:`calibrate_zero_shot`); other genes keep the softmax.
    """
    m = n_candidates or readout_candidates(model)
    readout = model.zero_shot_readout if calibrated else None
    if readout is not None and int(readout["n_candidates"]) != m:
        readout = None  # fitted on another candidate grid
    at = {g: i for i, g in enumerate(readout["genes"])} if readout is not None else {}
    preds = [np.zeros((len(img), len(genes)), np.float32) for _ in temperatures]
    for sl, scores, cands in _query_scores(img, model, genes, m, chunk):
        for out, t in zip(preds, temperatures, strict=True):
            out[:, sl] = expected_value(scores, cands, 1.0 / t).cpu().numpy()
        cols = [(j, at[g]) for j, g in enumerate(genes[sl], start=sl.start) if g in at]
        if cols:
            local = np.array([j - sl.start for j, _ in cols])
            rows = np.array([r for _, r in cols])
            w = np.asarray(readout["weights"], np.float32)[rows]  # [q, M]
            lin = np.einsum("nqm,qm->nq", scores[:, local].cpu().numpy(), w)
            lin += np.asarray(readout["intercept"], np.float32)[rows]
            for out in preds:
                out[:, [j for j, _ in cols]] = lin
    return preds


def calibrate_zero_shot(model: ComtipModel, max_spots: int = CALIBRATION_SPOTS) -> float | None:
    """Calibrate the zero-shot read-out on the training spots; store it in the model.

    Two things, both fitted on (up to ``max_spots`` of) the reference bank's spots and their measured
    expression:

    1. The softmax temperature: :data:`READOUT_FACTORS` × the learned temperature, the one whose zero-shot
       predictions reach the highest PCC-ALL (``model.zero_shot_temperature``; every score in
       ``model.history["zero_shot_calibration"]``). The softmax reads genes outside the panel.
    2. For every panel gene, a linear map of its ``M`` candidate scores to its value
       (``model.zero_shot_readout``): ridge regression with one penalty for all genes, chosen by
       spatial-block CV (:func:`~comtip_sc.tl._ridge.spatial_folds`), as for the ``"head"``. The softmax
       expectation weighs the scores in a fixed way that fits the training patient and transfers badly
       (``docs/model.md``); the scores themselves carry what transfers. Skipped (softmax for every gene)
       when the bank records no spot centres.

    Called by :func:`comtip_sc.tl.fit`; a model without a bank with image embeddings, or trained without
    values, is left as it is (returns ``None``). Returns the temperature.

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
    genes = list(bank.genes)
    m = readout_candidates(model)
    parts = list(_query_scores(bank.image_embeddings[keep], model, genes, m, 64))
    scores = np.concatenate([part.cpu().numpy() for _, part, _ in parts], 1)  # [N, G, M]
    cands = torch.cat([c.cpu() for _, _, c in parts])
    true = bank.rows(keep)
    preds = [expected_value(torch.from_numpy(scores), cands, 1.0 / t).numpy() for t in temps]
    pcc = [_pcc_all(true, pred) for pred in preds]
    best = int(np.argmax(pcc))
    model.zero_shot_temperature = temps[best]
    model.history["zero_shot_calibration"] = {
        "learned_temperature": learned,
        "factors": list(READOUT_FACTORS),
        "train_pcc_all": pcc,
        "chosen_factor": READOUT_FACTORS[best],
        "n_spots": len(keep),
    }
    log.info(
        "Zero-shot read-out temperature %.3g (%g × learned); PCC-ALL on %d training spots by factor: %s.",
        temps[best],
        READOUT_FACTORS[best],
        len(keep),
        ", ".join(f"{f:g}: {s:.3f}" for f, s in zip(READOUT_FACTORS, pcc, strict=True)),
    )
    model.zero_shot_readout = _fit_readout(model, scores, true, keep, m)
    return temps[best]


def _fit_readout(
    model: ComtipModel, scores: np.ndarray, true: np.ndarray, keep: np.ndarray, m: int
) -> dict | None:
    """``model.zero_shot_readout`` from the bank spots ``keep``: their scores ``[N, G, M]`` and values."""
    bank = model.reference
    if bank.centres is None or not np.isfinite(bank.centres[keep]).all():
        log.info("The reference bank records no spot centres: zero-shot reads every gene by the softmax.")
        return None
    fitted = fit_score_readout(
        scores, true, spatial_folds(bank.centres[keep], np.asarray(bank.sections)[keep])
    )
    if fitted is None:
        return None
    weights, intercept, alpha, ok = fitted
    model.history["zero_shot_calibration"]["readout_alpha"] = alpha
    log.info(
        "Zero-shot read-out of %d panel genes: ridge on their %d candidate scores, penalty %.3g.",
        int(ok.sum()),
        m,
        alpha,
    )
    return {
        "genes": [g for g, k in zip(bank.genes, ok, strict=True) if k],
        "weights": weights[ok].tolist(),
        "intercept": intercept[ok].tolist(),
        "alpha": alpha,
        "n_candidates": m,
    }


def fit_score_readout(
    scores: np.ndarray, true: np.ndarray, folds: np.ndarray, alphas: np.ndarray = RIDGE_ALPHAS
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray] | None:
    """Per-gene ridge from candidate scores ``[N, G, M]`` to values ``[N, G]`` (NaN: not measured).

    Every gene gets its own weights over its own ``M`` scores; one penalty serves all genes, the one with
    the best held-out R² averaged over genes and then over ``folds`` (as :func:`~comtip_sc.tl._ridge.ridge_cv`
    scores). Returns ``(weights [G, M], intercept [G], alpha, fitted [G] bool)``, or ``None`` with fewer
    than two folds. Genes measured on fewer than ``M + 2`` spots are not fitted (``fitted`` False).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.normal(size=(60, 2, 3)); y = s[..., 0] - s[..., 2]
    >>> w, b, alpha, ok = fit_score_readout(s, y, np.arange(60) % 3)
    >>> bool(np.allclose(w, [[1, 0, -1], [1, 0, -1]], atol=0.05)), bool(ok.all())
    (True, True)

    """
    ok = np.isfinite(true).sum(0) >= scores.shape[2] + 2
    if len(np.unique(folds)) < 2 or not ok.any():
        return None
    observed = np.isfinite(true) & ok  # genes too rarely measured take no part, not even in the CV
    y = np.where(observed, true, 0.0).astype(np.float64)
    s = scores.astype(np.float64)
    r2 = np.zeros((len(alphas),))
    for f in np.unique(folds):
        train = observed & (folds != f)[:, None]
        test = observed & (folds == f)[:, None]
        coef, icpt = _ridge_path(s, y, train, alphas)  # [A, G, M], [A, G]
        pred = np.einsum("ngm,agm->agn", s, coef) + icpt[..., None]  # [A, G, N]
        n = test.sum(0)
        mean = (y * test).sum(0) / np.maximum(n, 1)
        tot = (((y - mean) ** 2) * test).sum(0)  # [G]
        res = (((y.T[None] - pred) ** 2) * test.T[None]).sum(-1)  # [A, G]
        use = (n > 1) & (tot > 0)
        if use.any():
            r2 += (1.0 - res[:, use] / tot[use]).mean(1)
    alpha = float(alphas[int(np.argmax(r2))])
    coef, icpt = _ridge_path(s, y, observed, np.array([alpha]))
    return coef[0].astype(np.float32), icpt[0].astype(np.float32), alpha, ok


def _ridge_path(
    s: np.ndarray, y: np.ndarray, rows: np.ndarray, alphas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights ``[A, G, M]`` and intercepts ``[A, G]`` of each gene on the spots ``rows [N, G]``."""
    w = rows.astype(np.float64)
    n = np.maximum(w.sum(0), 1.0)  # [G]
    ms = np.einsum("ng,ngm->gm", w, s) / n[:, None]
    my = (w * y).sum(0) / n
    a = (s - ms) * w[..., None]
    gram = np.einsum("ngm,ngk->gmk", a, s - ms)
    rhs = np.einsum("ngm,ng->gm", a, y - my)
    # One eigendecomposition per gene serves every penalty: (G + αI)⁻¹ = V diag(1 / (λ + α)) Vᵀ.
    lam, vec = np.linalg.eigh(gram)
    proj = np.einsum("gmk,gm->gk", vec, rhs)  # Vᵀ r
    coef = np.einsum("gmk,agk->agm", vec, proj[None] / (lam[None] + alphas[:, None, None]))
    icpt = my[None] - np.einsum("gm,agm->ag", ms, coef)
    return coef, icpt


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
