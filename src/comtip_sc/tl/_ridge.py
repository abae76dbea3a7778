"""Ridge regression whose penalty is chosen by leaving out whole spatial blocks of spots.

Neighbouring spots share tissue, so leave-one-spot-out CV (sklearn's efficient ``RidgeCV`` default) keeps
a held-out spot's neighbours in the fit. It then measures interpolation within a section and picks a
weak penalty, which a new patient punishes (``docs/benchmarks.md``, "What we learned"). Here
each section's spots are split into ``n_blocks`` contiguous blocks by k-means on their centres, and fold
``f`` leaves out block ``f`` of every section: a fifth of each section's area at a time for the default
of 5, the usual choice for block CV (Roberts et al. 2017, *Ecography* 40:913).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Ridge penalties searched by the ``"head"`` method and by the benchmark's frozen-feature ridge: 0.01 to
#: 1.5e6 in steps of 5/11 decade. The head's unit-length embeddings want 0.01–30 on the benchmark's folds; the ridge on
#: standardised PCA components of a random-init backbone wants 1e3–1e4, and a grid that stopped at 1e3 held
#: that baseline back by up to 0.015 PCC-ALL (docs/benchmarks.md).
RIDGE_ALPHAS = np.logspace(-2, -2 + 18 * 5 / 11, 19)
#: Spatial blocks per section, and so CV folds, for choosing the penalty.
CV_BLOCKS = 5


def spatial_folds(centres: np.ndarray, sections: Sequence[str], n_blocks: int = CV_BLOCKS) -> np.ndarray:
    """Fold number of every spot: k-means of each section's spot centres into ``n_blocks`` blocks.

    Parameters
    ----------
    centres
        ``(n_spots, 2)`` spot centres in any unit that is consistent within a section (e.g. image pixels).
    sections
        Section of every spot; blocks are made within each section, so units may differ between sections.
    n_blocks
        Blocks per section (fewer for a section with fewer spots).

    Returns
    -------
    ``(n_spots,)`` integers in ``0 .. n_blocks - 1``; fold ``f`` is block ``f`` of every section.

    Examples
    --------
    >>> xy = np.array([[0, 0], [0, 1], [10, 0], [10, 1]], float)
    >>> folds = spatial_folds(xy, ["s"] * 4, n_blocks=2)
    >>> bool(folds[0] == folds[1] and folds[2] == folds[3] and folds[0] != folds[2])
    True

    """
    from sklearn.cluster import KMeans

    centres = np.asarray(centres, dtype=np.float64)
    sections = np.asarray(sections).astype(str)
    if centres.shape != (len(sections), 2):
        raise ValueError(f"centres must be (n_spots, 2) for {len(sections)} spots, got {centres.shape}.")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be at least 2, got {n_blocks}.")
    folds = np.zeros(len(sections), dtype=np.int64)
    for name in np.unique(sections):
        rows = np.flatnonzero(sections == name)
        k = min(n_blocks, len(rows))
        if k > 1:
            folds[rows] = KMeans(k, n_init=10, random_state=0).fit_predict(centres[rows])
    return folds


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: np.ndarray | None = None):
    """Fit ridge over ``RIDGE_ALPHAS`` (0.01 to 1.5e6), the penalty chosen by CV over ``folds``.

    Parameters
    ----------
    x, y
        Features ``(n_spots, n_features)`` and targets ``(n_spots, n_genes)``.
    folds
        Fold of every spot (:func:`spatial_folds`). The penalty with the best R², averaged over genes so
        that each gene counts equally as in PCC-ALL, wins. ``None``, or a single fold: leave-one-spot-out.

    Returns
    -------
    The fitted :class:`sklearn.linear_model.RidgeCV` (``alpha_`` is the chosen penalty).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 4)); y = x @ rng.normal(size=(4, 3))
    >>> float(ridge_cv(x, y, np.arange(40) % 4).alpha_) in RIDGE_ALPHAS
    True

    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import PredefinedSplit

    if folds is None or len(np.unique(folds)) < 2:
        return RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
    if len(folds) != len(x):
        raise ValueError(f"folds has {len(folds)} entries for {len(x)} spots.")
    return RidgeCV(alphas=RIDGE_ALPHAS, cv=PredefinedSplit(folds), scoring="r2").fit(x, y)
