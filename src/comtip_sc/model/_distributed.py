"""Collectives that make a DDP step compute the loss of the *global* batch.

Under ``torch.distributed`` every process holds a slice of the global batch. Anything that looks across
rows (InfoNCE negatives, the sentence-centring mean, a mean over a varying number of tokens or entries)
is computed here over all processes, with gradients flowing back to the rows that produced them:

* :func:`gather_with_grad`: all rows of every process (InfoNCE negatives).
* :func:`all_reduce_sum`: the sum over processes, autograd-aware (centring mean, loss numerators).
* :func:`mean_share`: this process's share of a global mean, such that the *mean over processes* of the
  shares is the global mean. DDP averages gradients over processes, so a process that returns its share
  contributes exactly its part of the global-batch gradient.
* :func:`rand_rows`: per-row random numbers for the local rows, cut from one draw for the global batch,
  so processes draw different masks while a DDP step reproduces the single-process step on the same
  global batch.

Without an initialised process group (or with one process) every helper reduces to the local computation.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rows(n: int, device: torch.device | str = "cpu") -> tuple[int, int, list[int]]:
    """``(offset, total, sizes)``: where this process's ``n`` rows start in the global batch, its size.

    Examples
    --------
    >>> local_rows(5)
    (0, 5, [5])

    """
    if not is_distributed():
        return 0, n, [n]
    mine = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    sizes_l = [int(s.item()) for s in sizes]
    return sum(sizes_l[: dist.get_rank()]), sum(sizes_l), sizes_l


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x [n_local, d]`` from every process, keeping the autograd graph.

    Local batch sizes may differ (rows are padded for the collective and trimmed after).

    Returns
    -------
    ``(x_all [N, d], offset)`` where ``offset`` is the row of this process's first local row in ``x_all``.
    Without an initialised process group (or with one process) returns ``(x, 0)``.

    Examples
    --------
    >>> x = torch.ones(3, 2)
    >>> gather_with_grad(x)[0] is x
    True

    """
    if not is_distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    offset, _, sizes = local_rows(x.shape[0], x.device)
    n_max = max(sizes)
    padded = F.pad(x, (0, 0, 0, n_max - x.shape[0])) if x.shape[0] < n_max else x
    # torch.distributed.nn's all_gather sums the incoming gradients back onto each process's rows (also
    # on gloo, through all-to-all). torch 2.14 flags it deprecated in favour of a private module; it is
    # the public autograd-aware collective, so keep it and silence the notice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)], dim=0), offset


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over processes; the gradient of every process's result flows back to every input.

    Examples
    --------
    >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])

    """
    if not is_distributed():
        return x
    if not x.requires_grad:
        x = x.clone()
        dist.all_reduce(x)
        return x
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x.contiguous())


def global_count(n: torch.Tensor | float, device: torch.device | str | None = None) -> torch.Tensor:
    """Sum over processes of a count (no gradient), a float32 scalar on ``n``'s device (or ``device``).

    A Python number becomes a tensor by a fill on ``device``, not by a copy from the host: on a GPU a
    blocking copy would make the host wait for every kernel queued before it.

    Examples
    --------
    >>> global_count(3.0)
    tensor(3.)

    """
    if torch.is_tensor(n):
        n = n.detach().to(torch.float32).clone()
    else:
        n = torch.full((), float(n), dtype=torch.float32, device=device)
    if is_distributed():
        dist.all_reduce(n)
    return n


def mean_share(
    total: torch.Tensor, count: torch.Tensor | float, *, summed: torch.Tensor | None = None
) -> torch.Tensor:
    """The share ``W · total / global_count`` of this process of the global mean ``Σ total / Σ count``.

    The mean of the shares over the ``W`` processes is the global mean (what one process computes on the
    global batch), and so is the mean of their gradients, which DDP takes. A zero global count gives a
    zero that still belongs to the graph. ``summed``: the global count when the caller already has it
    (then ``count`` is not reduced again).

    Examples
    --------
    >>> mean_share(torch.tensor(6.0), 3)
    tensor(2.)

    """
    n = (global_count(count, total.device) if summed is None else summed).to(total.device, total.dtype)
    return total * world_size() / n.clamp(min=1.0)


def broadcast_from_first(x: torch.Tensor) -> torch.Tensor:
    """The first process's ``x`` on every process (same shape on all of them), without gradient.

    Examples
    --------
    >>> broadcast_from_first(torch.arange(3))
    tensor([0, 1, 2])

    """
    if not is_distributed():
        return x
    x = x.detach().clone().contiguous()
    dist.broadcast(x, src=0)
    return x


def rand_rows(
    n: int,
    width: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform random numbers ``[n, width]`` for this process's rows of the global batch.

    Every process draws the ``[N_global, width]`` block and keeps its own rows. Processes whose random
    streams agree (the usual case: the same seed, or torch's default seed, on every process) thus draw
    different rows, not the same masks on every process, and a DDP step draws exactly the masks one
    process would draw for the global batch. Streams that disagree still give independent draws.

    Examples
    --------
    >>> rand_rows(2, 3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3])

    """
    offset, total, _ = local_rows(n, device)
    return torch.rand(total, width, device=device, generator=generator)[offset : offset + n]
