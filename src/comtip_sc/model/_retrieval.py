"""Top-k retrieval from a reference bank in chunks: memory bounded by the chunk, never queries × bank."""

from __future__ import annotations

import numpy as np
import torch

from ._bank import ReferenceBank

#: Most similarity scores held at once (``2**22`` float32: 16 MiB), whatever the bank's size.
MAX_SCORES = 2**22


def top_k_neighbours(
    queries: np.ndarray, bank: np.ndarray, k: int, *, max_scores: int = MAX_SCORES
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of the ``k`` rows of ``bank`` most similar (dot product) to each query.

    Queries are taken a chunk at a time and scored against the bank a chunk at a time into one reused
    buffer of at most ``max_scores`` floats; a running ``torch.topk`` keeps the best ``k`` of each query,
    updated only for the queries that a chunk can improve.

    Parameters
    ----------
    queries
        ``[n, d]`` query embeddings.
    bank
        ``[m, d]`` bank embeddings.
    k
        Neighbours per query (at most ``m``).
    max_scores
        Scores held at once; sets the chunk sizes.

    Returns
    -------
    ``(indices [n, k], scores [n, k])``, each row from the most to the least similar.

    Examples
    --------
    >>> bank = np.eye(3, dtype=np.float32)
    >>> top_k_neighbours(np.array([[0.1, 0.9, 0.0]], np.float32), bank, 2)[0]
    array([[1, 0]])

    """
    n, m = len(queries), len(bank)
    k = min(k, m)
    idx_out = np.zeros((n, k), np.int64)
    val_out = np.zeros((n, k), np.float32)
    if n == 0 or k == 0:
        return idx_out, val_out
    q_all = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    b_all = torch.from_numpy(np.ascontiguousarray(bank, np.float32))
    q_chunk = max(1, min(n, max_scores // max(k, 1), 1024))
    b_chunk = max(k, min(m, max_scores // q_chunk))
    # One buffer for every chunk's scores (a numpy allocation, so that memory tools see it).
    buffer = np.empty(q_chunk * b_chunk, np.float32)
    for q0 in range(0, n, q_chunk):
        q = q_all[q0 : q0 + q_chunk]
        best_val = best_idx = None
        for b0 in range(0, m, b_chunk):
            e = b_all[b0 : b0 + b_chunk]
            scores = torch.from_numpy(buffer[: len(q) * len(e)]).view(len(q), len(e))
            torch.mm(q, e.T, out=scores)
            if best_val is None:  # the first chunk holds at least k bank rows (b_chunk >= k)
                best_val, best_idx = torch.topk(scores, k, dim=1)
                best_idx += b0
                continue
            # Only a query whose best score here beats its k-th best so far can change: once a few chunks
            # are in, that is a small minority, and the row maximum costs far less than a top-k.
            rows = (scores.amax(1) > best_val[:, -1]).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            val, idx = torch.topk(scores.index_select(0, rows), min(k, len(e)), dim=1)
            val, pos = torch.topk(torch.cat([best_val[rows], val], 1), k, dim=1)
            best_idx[rows] = torch.cat([best_idx[rows], idx + b0], 1).gather(1, pos)
            best_val[rows] = val
        idx_out[q0 : q0 + len(q)] = best_idx.numpy()
        val_out[q0 : q0 + len(q)] = best_val.numpy()
    return idx_out, val_out


def retrieve(img: np.ndarray, bank: ReferenceBank, k: int, *, max_scores: int = MAX_SCORES) -> np.ndarray:
    """Mean expression ``[n, n_genes]`` of the ``k`` bank spots whose sentences best match each image.

    Per gene, the mean over the neighbours that measure it (0 where none does).

    Examples
    --------
    >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.array([[1.0], [3.0]]), ["g"])
    >>> retrieve(np.array([[1.0, 0.0]], np.float32), bank, 1)
    array([[1.]], dtype=float32)

    """
    out = np.zeros((len(img), len(bank.genes)), np.float32)
    # Queries in chunks here too, so that the neighbour table stays small.
    step = max(1, max_scores // max(k, len(bank.genes), 1))
    for lo in range(0, len(img), step):
        top, _ = top_k_neighbours(img[lo : lo + step], bank.embeddings, k, max_scores=max_scores)
        out[lo : lo + step] = bank.neighbour_mean(top)
    return out
