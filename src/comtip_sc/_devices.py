"""The one place that turns an ``accelerator`` argument into a torch device and a default precision."""

from __future__ import annotations

import os

import torch

#: The ``accelerator`` values the package's functions take (Lightning's names; ``"cuda"`` = ``"gpu"``).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def resolve_device(accelerator: str = "auto", *, per_process: bool = False) -> torch.device:
    """The device that ``accelerator`` names on this machine.

    Parameters
    ----------
    accelerator
        ``"auto"`` (the first CUDA device when torch sees one, else the CPU), ``"cpu"``, ``"gpu"`` or
        ``"cuda"`` (an error when torch sees no CUDA device).
    per_process
        Under a multi-process launch (DDP, torchrun, SLURM) pick this process's GPU (``LOCAL_RANK``)
        instead of the first.

    Returns
    -------
    The :class:`torch.device`.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')

    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}.")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"accelerator={accelerator!r} was asked for but torch sees no CUDA device.")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if per_process else 0)


def default_precision(accelerator: str = "auto") -> str:
    """Lightning precision ``fit`` uses unless told otherwise.

    ``"bf16-mixed"`` on CUDA devices that support bfloat16 (half the activation memory, tensor cores),
    ``"32-true"`` everywhere else (CPU autocast to bfloat16 is slower than float32 on most CPUs).

    Examples
    --------
    >>> default_precision("cpu")
    '32-true'

    """
    if resolve_device(accelerator).type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
