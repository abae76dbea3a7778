"""The one reader of weight files: safetensors, or torch files read without unpickling arbitrary objects."""

from __future__ import annotations

import os
from typing import Any

import torch


def read_weights(file: str | os.PathLike, *, key: str | None = None, map_location: str = "cpu") -> Any:
    """Read a weights or checkpoint file safely.

    ``.safetensors`` files are read with :func:`safetensors.torch.load_file`; anything else (``.pth``,
    ``.bin``, ``.pt``, Lightning ``.ckpt``) with ``torch.load(weights_only=True)``, which rebuilds
    tensors, numbers, strings and containers only and refuses any other pickled object instead of
    running its code.

    Parameters
    ----------
    file
        The file.
    key
        Return ``content[key]`` (e.g. ``"state_dict"`` of a Lightning checkpoint) instead of the whole.
    map_location
        Device the tensors are loaded onto.

    Returns
    -------
    The file's content (or its ``key`` entry).

    Examples
    --------
    >>> import tempfile, torch
    >>> f = tempfile.NamedTemporaryFile(suffix=".pth", delete=False).name
    >>> torch.save({"w": torch.ones(2)}, f)
    >>> read_weights(f, key="w")
    tensor([1., 1.])

    """
    file = os.fspath(file)
    if not os.path.exists(file):
        raise FileNotFoundError(f"Weights file {file!r} does not exist.")
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        content: Any = load_file(file, device=map_location)
    else:
        try:
            content = torch.load(file, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises UnpicklingError (or RuntimeError) naming the refused global
            if "weights_only" not in str(err) and "Unsupported global" not in str(err):
                raise
            raise ValueError(
                f"{file!r} holds Python objects other than tensors and plain containers; it is not read, "
                "because unpickling them could run arbitrary code. Save the weights as a state dict "
                f"(torch.save(model.state_dict(), ...)) or as .safetensors. ({type(err).__name__}: "
                f"{str(err).splitlines()[0]})"
            ) from None
    if key is None:
        return content
    if not isinstance(content, dict) or key not in content:
        raise KeyError(f"{file!r} has no entry {key!r}.")
    return content[key]
