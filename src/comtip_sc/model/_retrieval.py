"""Top-k retrieval from a reference bank in chunks: memory bounded by the chunk, never queries × bank.

The same chunked code runs on the CPU and on a GPU (``device``). On the CPU the scores go into one reused
numpy buffer and only the queries a bank chunk can improve are re-ranked (the check is free there); on a
GPU the bank is copied to the device once, the chunks are larger and every query is merged every chunk,
so that no step waits for the host.
"""

from __future__ import annotations

import numpy as np
import torch

from ._bank import BankTensors, ReferenceBank

#: Most similarity scores held at once on the CPU (``2**22`` float32: 16 MiB), whatever the bank's size.
MAX_SCORES = 2**22
#: The same on a GPU (``2**27`` float32: 512 MiB): fewer, larger matrix products and top-k's.
DEVICE_MAX_SCORES = 2**27
#: Most queries scored at once.
MAX_QUERY_CHUNK = 1024


def _max_scores(device: torch.device, max_scores: int | None) -> int:
    if max_scores is not None:
        return int(max_scores)
    return MAX_SCORES if device.type == "cpu" else DEVICE_MAX_SCORES


def top_k_tensors(
    queries: torch.Tensor, bank: torch.Tensor, k: int, *, max_scores: int, filter_rows: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and scores ``[n, k]`` of the best ``k`` bank rows per query, on the tensors' device.

    ``filter_rows``: re-rank only the queries whose best score in a chunk beats their k-th best so far
    (cheap on the CPU; on a GPU the test needs the host and every query is merged instead). Both give the
    same neighbours.
    """
    n, m = len(queries), len(bank)
    device = queries.device
    q_chunk = max(1, min(n, max_scores // max(k, 1), MAX_QUERY_CHUNK))
    b_chunk = max(k, min(m, max_scores // q_chunk))
    if device.type == "cpu":
        # A numpy allocation, so that memory tools see it.
        buffer = torch.from_numpy(np.empty(q_chunk * b_chunk, np.float32))
    else:
        buffer = torch.empty(q_chunk * b_chunk, dtype=torch.float32, device=device)
    idx_out = torch.empty((n, k), dtype=torch.int64, device=device)
    val_out = torch.empty((n, k), dtype=torch.float32, device=device)
    for q0 in range(0, n, q_chunk):
        q = queries[q0 : q0 + q_chunk]
        best_val = best_idx = None
        for b0 in range(0, m, b_chunk):
            e = bank[b0 : b0 + b_chunk]
            scores = buffer[: len(q) * len(e)].view(len(q), len(e))
            torch.mm(q, e.T, out=scores)
            if best_val is None:  # the first chunk holds at least k bank rows (b_chunk >= k)
                best_val, best_idx = torch.topk(scores, k, dim=1)
                best_idx += b0
                continue
            if not filter_rows:
                val, idx = torch.topk(scores, min(k, len(e)), dim=1)
                best_val, pos = torch.topk(torch.cat([best_val, val], 1), k, dim=1)
                best_idx = torch.cat([best_idx, idx + b0], 1).gather(1, pos)
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
        idx_out[q0 : q0 + len(q)] = best_idx
        val_out[q0 : q0 + len(q)] = best_val
    return idx_out, val_out


def top_k_neighbours(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    max_scores: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of the ``k`` rows of ``bank`` most similar (dot product) to each query.

    Queries are taken a chunk at a time and scored against the bank a chunk at a time into one reused
    buffer of at most ``max_scores`` floats; a running ``torch.topk`` keeps the best ``k`` of each query.

    Parameters
    ----------
    queries
        ``[n, d]`` query embeddings.
    bank
        ``[m, d]`` bank embeddings.
    k
        Neighbours per query (at most ``m``).
    max_scores
        Scores held at once; sets the chunk sizes. Default: ``MAX_SCORES`` on the CPU,
        ``DEVICE_MAX_SCORES`` on a GPU.
    device
        Where the scores are computed (``"cpu"``, ``"cuda"``, a :class:`torch.device`); the bank is copied
        there once.

    Returns
    -------
    ``(indices [n, k], scores [n, k])`` as numpy arrays, each row from the most to the least similar.

    Examples
    --------
    >>> bank = np.eye(3, dtype=np.float32)
    >>> top_k_neighbours(np.array([[0.1, 0.9, 0.0]], np.float32), bank, 2)[0]
    array([[1, 0]])

    """
    dev = torch.device(device)
    n, m = len(queries), len(bank)
    k = min(k, m)
    if n == 0 or k == 0:
        return np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(dev)
    b = torch.from_numpy(np.ascontiguousarray(bank, np.float32)).to(dev)
    idx, val = top_k_tensors(q, b, k, max_scores=_max_scores(dev, max_scores), filter_rows=dev.type == "cpu")
    return idx.cpu().numpy(), val.cpu().numpy()


def retrieve(
    img: np.ndarray,
    bank: ReferenceBank,
    k: int,
    *,
    max_scores: int | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Mean expression ``[n, n_genes]`` of the ``k`` bank spots whose sentences best match each image.

    Per gene, the mean over the neighbours that measure it (0 where none does). On a GPU ``device`` the
    bank (embeddings and sparse expression) is copied there once and both the top-k and the mean run there.

    Examples
    --------
    >>> bank = ReferenceBank(np.eye(2, dtype=np.float32), np.array([[1.0], [3.0]]), ["g"])
    >>> retrieve(np.array([[1.0, 0.0]], np.float32), bank, 1)
    array([[1.]], dtype=float32)

    """
    dev = torch.device(device)
    budget = _max_scores(dev, max_scores)
    out = np.zeros((len(img), len(bank.genes)), np.float32)
    k = min(k, len(bank.embeddings))
    if len(img) == 0 or k == 0:
        return out
    if dev.type == "cpu":
        # Queries in chunks here too, so that the neighbour table stays small.
        step = max(1, budget // max(k, len(bank.genes), 1))
        for lo in range(0, len(img), step):
            top, _ = top_k_neighbours(img[lo : lo + step], bank.embeddings, k, max_scores=budget)
            out[lo : lo + step] = bank.neighbour_mean(top)
        return out
    return retrieve_with(img, BankTensors(bank, dev), k, max_scores=budget, filter_rows=False)


def retrieve_with(
    img: np.ndarray, bank: BankTensors, k: int, *, max_scores: int, filter_rows: bool
) -> np.ndarray:
    """:func:`retrieve` against a bank already on its device (``bank.device``), in torch throughout."""
    out = np.zeros((len(img), len(bank.genes)), np.float32)
    # Each chunk's neighbour mean gathers k × (stored values per spot) entries per query.
    per_query = max(k * bank.mean_nnz, len(bank.genes), 1)
    step = max(1, max_scores // (8 * per_query))
    for lo in range(0, len(img), step):
        q = torch.from_numpy(np.ascontiguousarray(img[lo : lo + step], np.float32)).to(bank.device)
        top, _ = top_k_tensors(q, bank.embeddings, k, max_scores=max_scores, filter_rows=filter_rows)
        out[lo : lo + step] = bank.neighbour_mean(top).cpu().numpy()
    return out
