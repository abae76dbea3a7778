"""The retrieval reference bank: embeddings of reference spots and their expression, stored sparse.

Expression is kept as a CSR matrix of the normalised log1p values (zeros implicit) and, for banks built
from datasets with different gene sets, which genes each spot measures: spots share a few measurement
patterns (one per dataset), so a ``[n_patterns, n_genes]`` mask and a pattern index per spot say what a
dense ``spots × genes`` array would say with NaN, at a fraction of its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


class ReferenceBank:
    """Gene-sentence embeddings and expression of reference spots, for retrieval prediction.

    Parameters
    ----------
    embeddings
        ``(n_spots, embed_dim)`` L2-normalised gene-sentence embeddings (no image involved).
    expression
        ``(n_spots, n_genes)`` expression on the normalised log1p scale: a dense array (NaN where a spot
        does not measure a gene) or a scipy sparse matrix (then ``observed`` tells what is measured).
    genes
        Column names of ``expression``.
    obs_names
        Spot ids of the rows.
    image_embeddings
        ``(n_spots, embed_dim)`` image embeddings of the same spots (for the ``"head"`` predictor), or
        ``None``.
    sections
        Section of every spot (the ``"head"`` predictor's spatial CV folds are made within sections), or
        empty.
    centres
        ``(n_spots, 2)`` spot centres in their image's pixels, or ``None`` (banks saved by earlier versions:
        the head then chooses its penalty by leave-one-spot-out CV).
    colour
        ``(n_spots, 108)`` colour statistics of the spots' tiles (:func:`~comtip_sc.pp.colour_features`:
        spot tile, then 3× context tile; NaN rows for spots without them), for the ``"hybrid"`` predictor,
        or ``None`` (banks saved by earlier versions, or built without them).
    observed
        With a sparse ``expression``: ``(patterns [n_patterns, n_genes] bool, pattern [n_spots] int)``, the
        genes measured by each pattern and the pattern of each spot. ``None``: every spot measures every
        gene.

    Examples
    --------
    >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.array([[1.0, np.nan], [0.0, 2.0]]), ["a", "b"])
    >>> bank.rows([0])
    array([[ 1., nan]], dtype=float32)
    >>> bank.values.nnz, bank.patterns.shape
    (2, (2, 2))

    """

    def __init__(
        self,
        embeddings: np.ndarray,
        expression: np.ndarray | sp.spmatrix | sp.sparray,
        genes: Sequence[str],
        obs_names: Sequence[str] = (),
        image_embeddings: np.ndarray | None = None,
        sections: Sequence[str] = (),
        centres: np.ndarray | None = None,
        *,
        colour: np.ndarray | None = None,
        observed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.genes = list(genes)
        self.obs_names = list(obs_names)
        self.image_embeddings = image_embeddings
        self.sections = list(sections)
        self.centres = centres
        n = len(self.embeddings)
        self.colour = None if colour is None else np.asarray(colour, dtype=np.float32)
        if self.colour is not None and (self.colour.ndim != 2 or len(self.colour) != n):
            raise ValueError(
                f"colour must be (n_spots, n_features) for the {n} spots, got {self.colour.shape}."
            )
        if sp.issparse(expression):
            self.values = sp.csr_matrix(expression, dtype=np.float32)
            if observed is None:
                observed = (np.ones((1, len(self.genes)), bool), np.zeros(n, np.int64))
            self.patterns = np.asarray(observed[0], dtype=bool)
            self.pattern = np.asarray(observed[1], dtype=np.int64)
        else:
            dense = np.asarray(expression, dtype=np.float32)
            measured = ~np.isnan(dense)
            self.patterns, pattern = np.unique(measured, axis=0, return_inverse=True)
            self.pattern = np.asarray(pattern, dtype=np.int64).ravel()
            self.values = sp.csr_matrix(np.where(measured, dense, 0.0).astype(np.float32))
        self.values.eliminate_zeros()
        if self.values.shape != (n, len(self.genes)):
            raise ValueError(
                f"The bank's expression has shape {self.values.shape}; its {n} embeddings and "
                f"{len(self.genes)} genes need ({n}, {len(self.genes)})."
            )
        if self.patterns.shape[1:] != (len(self.genes),) or self.pattern.shape != (n,):
            raise ValueError("observed must be (patterns [n_patterns, n_genes], pattern [n_spots]).")

    def subset(self, idx: np.ndarray) -> ReferenceBank:
        """A new bank of the spots ``idx`` (integer positions or a boolean mask); arrays are copied.

        Examples
        --------
        >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.array([[1.0], [3.0]]), ["g"], ["s0", "s1"])
        >>> bank.subset(np.array([1])).obs_names
        ['s1']

        """
        idx = np.flatnonzero(idx) if np.asarray(idx).dtype == bool else np.asarray(idx, dtype=np.int64)

        def pick(x):
            return None if x is None else np.asarray(x)[idx]

        return ReferenceBank(
            self.embeddings[idx],
            self.values[idx],
            self.genes,
            [self.obs_names[i] for i in idx] if self.obs_names else [],
            pick(self.image_embeddings),
            [self.sections[i] for i in idx] if self.sections else [],
            pick(self.centres),
            colour=pick(self.colour),
            observed=(self.patterns, self.pattern[idx]),
        )

    def rows(self, idx: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Dense expression of the spots ``idx`` (NaN where a spot does not measure a gene)."""
        out = self.values[idx].toarray()
        out[~self.patterns[self.pattern[idx]]] = np.nan
        return out

    @property
    def expression(self) -> np.ndarray:
        """The whole ``(n_spots, n_genes)`` expression as a dense array (NaN = not measured).

        Materialised on every access: use :meth:`rows` or ``values`` on large banks.
        """
        return self.rows(slice(None))

    def neighbour_mean(self, neighbours: np.ndarray) -> np.ndarray:
        """Mean expression ``[n, n_genes]`` over each row of spot indices ``neighbours [n, k]``.

        Per gene, the mean over the neighbours that measure it (0 where none does); computed with a sparse
        ``[n, n_spots]`` selection matrix, so nothing of size ``n × k × n_genes`` is formed.
        """
        n, k = neighbours.shape
        select = sp.csr_matrix(
            (np.ones(n * k, np.float32), neighbours.ravel(), np.arange(0, n * k + 1, k)),
            shape=(n, len(self.embeddings)),
        )
        total = np.asarray((select @ self.values).todense())
        # How many of each row's neighbours fall in each pattern, then which genes those patterns measure.
        per_pattern = np.zeros((n, len(self.patterns)), np.float32)
        np.add.at(per_pattern, (np.repeat(np.arange(n), k), self.pattern[neighbours.ravel()]), 1.0)
        count = per_pattern @ self.patterns.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, 0.0).astype(np.float32)

    def cone(self) -> dict[str, float]:
        """Length of the mean sentence and image embedding of the bank's spots.

        Contrastive embeddings crowd into a cone. When it closes (length near 1) every spot's embedding
        points the same way and retrieval ranks the bank by noise; healthy fits in the benchmark measured
        0.68–0.93 and a collapsed one 1.00 (``docs/benchmarks.md``).

        Examples
        --------
        >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.zeros((2, 1)), ["g"])
        >>> round(bank.cone()["sentence"], 3)
        0.707

        """
        out = {"sentence": float(np.linalg.norm(self.embeddings.mean(0)))}
        if self.image_embeddings is not None:
            out["image"] = float(np.linalg.norm(self.image_embeddings.mean(0)))
        return out


class BankTensors:
    """A :class:`ReferenceBank`'s embeddings and sparse expression as torch tensors on one ``device``.

    What retrieval on a GPU reads: copied once, then every query chunk's top-k and neighbour mean run on the
    device. Also runs on the CPU, where it gives what :meth:`ReferenceBank.neighbour_mean` gives.

    Examples
    --------
    >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.array([[1.0, np.nan], [3.0, 2.0]]), ["a", "b"])
    >>> BankTensors(bank, "cpu").neighbour_mean(torch.tensor([[0, 1]]))
    tensor([[2., 2.]])

    """

    def __init__(self, bank: ReferenceBank, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.genes = bank.genes
        values = bank.values
        self.embeddings = torch.from_numpy(np.ascontiguousarray(bank.embeddings)).to(self.device)
        self.indptr = torch.from_numpy(values.indptr.astype(np.int64)).to(self.device)
        self.indices = torch.from_numpy(values.indices.astype(np.int64)).to(self.device)
        self.data = torch.from_numpy(values.data.astype(np.float32)).to(self.device)
        self.pattern = torch.from_numpy(bank.pattern).to(self.device)
        self.patterns = torch.from_numpy(bank.patterns.astype(np.float32)).to(self.device)
        #: Stored values per spot, rounded up (sizes the query chunks).
        self.mean_nnz = -(-values.nnz // max(values.shape[0], 1))

    def neighbour_mean(self, neighbours: torch.Tensor) -> torch.Tensor:
        """Mean expression ``[n, n_genes]`` over each row of spot indices ``neighbours [n, k]`` (on the device).

        The stored values of every neighbour are gathered from the CSR arrays and summed per query and gene
        with one indexed accumulation; per gene the sum is divided by the neighbours that measure it.
        """
        n, k = neighbours.shape
        rows = neighbours.reshape(-1)
        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        total_nnz = int(length.sum())  # the one wait for the host per chunk: it sizes what follows
        # Position of every gathered value in the CSR arrays: its row's start plus its rank in the row.
        first = torch.cumsum(length, 0) - length
        rank = torch.arange(total_nnz, device=self.device) - first.repeat_interleave(
            length, output_size=total_nnz
        )
        pos = start.repeat_interleave(length, output_size=total_nnz) + rank
        query = (
            torch.arange(n, device=self.device)
            .repeat_interleave(k)
            .repeat_interleave(length, output_size=total_nnz)
        )
        total = torch.zeros(n, len(self.genes), device=self.device)
        total.index_put_((query, self.indices[pos]), self.data[pos], accumulate=True)
        per_pattern = torch.zeros(n, len(self.patterns), device=self.device)
        per_pattern.index_put_(
            (torch.arange(n, device=self.device).repeat_interleave(k), self.pattern[rows]),
            torch.ones(n * k, device=self.device),
            accumulate=True,
        )
        count = per_pattern @ self.patterns
        return torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros((), device=self.device))
