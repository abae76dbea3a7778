"""The ridge read-outs' shared core: ridge from reference-spot features to their expression.

Reference banks built from datasets with different gene sets measure each gene on some spots only; genes
measured on the same spots share one multi-output ridge fit, its penalty chosen by spatial-block CV
within the reference sections (:mod:`~comtip_sc.tl._ridge`).
"""

from __future__ import annotations

import numpy as np

from ..model._bank import ReferenceBank
from ._ridge import ridge_cv, spatial_folds


def bank_folds(bank: ReferenceBank, cv_blocks: int | None) -> np.ndarray | None:
    """Spatial CV fold of every bank spot, or ``None`` (leave-one-spot-out).

    ``None`` when ``cv_blocks`` is ``None`` or the bank has no finite spot centres (banks saved by earlier
    versions).
    """
    if cv_blocks is None or bank.centres is None or not np.isfinite(bank.centres).all():
        return None
    return spatial_folds(bank.centres, bank.sections, cv_blocks)


def pattern_ridge(
    train_x: np.ndarray, expression: np.ndarray, folds: np.ndarray | None, query_x: np.ndarray
) -> tuple[np.ndarray, list[float], float]:
    """Ridge predictions of ``query_x`` from ``train_x`` → ``expression`` (NaN = gene not measured).

    Parameters
    ----------
    train_x, query_x
        Features of the reference spots and of the spots to predict.
    expression
        ``(n_reference, n_genes)`` reference expression, NaN where a spot does not measure a gene.
    folds
        CV fold of every reference spot, or ``None`` (leave-one-spot-out).

    Returns
    -------
    ``(predictions (n_query, n_genes), penalty of each fit, CV score)``: the score is the fits' best CV
    score (R² with ``folds``) averaged over genes, comparable between calls on the same spots and folds.
    Genes measured on fewer than 2 reference spots are predicted as 0.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 3)); y = x @ rng.normal(size=(3, 2))
    >>> pred, alphas, score = pattern_ridge(x, y, np.arange(40) % 4, x[:5])
    >>> pred.shape, len(alphas), score > 0.9
    ((5, 2), 1, True)

    """
    pred = np.zeros((len(query_x), expression.shape[1]), np.float32)
    alphas, scores, weights = [], [], []
    observed = ~np.isnan(expression)
    patterns, group = np.unique(observed.T, axis=0, return_inverse=True)
    for p, rows in enumerate(patterns):
        cols = np.flatnonzero(group.ravel() == p)
        if rows.sum() < 2:
            continue
        ridge = ridge_cv(train_x[rows], expression[rows][:, cols], None if folds is None else folds[rows])
        pred[:, cols] = ridge.predict(query_x)
        alphas.append(float(ridge.alpha_))
        scores.append(float(ridge.best_score_))
        weights.append(len(cols))
    score = float(np.average(scores, weights=weights)) if scores else float("nan")
    return pred, alphas, score
