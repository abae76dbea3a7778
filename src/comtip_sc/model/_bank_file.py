"""The reference bank of a saved model: its arrays in one safetensors file, its names in ``config.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._bank import ReferenceBank


def write_bank(ref: ReferenceBank, file: Path) -> dict[str, Any]:
    """Write the bank's arrays to ``file``; return the names that go into ``config.json``."""
    arrays = {"embeddings": ref.embeddings, "values_data": ref.values.data}
    if ref.image_embeddings is not None:
        arrays["image_embeddings"] = ref.image_embeddings
    if ref.colour is not None:
        arrays["colour"] = ref.colour
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in arrays.items()}
    tensors["values_indices"] = torch.from_numpy(ref.values.indices.astype(np.int32))
    tensors["values_indptr"] = torch.from_numpy(ref.values.indptr.astype(np.int64))
    tensors["observed_patterns"] = torch.from_numpy(np.ascontiguousarray(ref.patterns))
    tensors["observed_pattern"] = torch.from_numpy(ref.pattern.astype(np.int64))
    if ref.centres is not None:
        # Full precision: float32 would move pixel centres of large images, and with them the head's
        # spatial CV blocks, between a model and its reloaded copy.
        tensors["centres"] = torch.from_numpy(np.ascontiguousarray(ref.centres, np.float64))
    save_file(tensors, str(file))
    return {"genes": ref.genes, "obs_names": ref.obs_names, "sections": ref.sections}


def read_bank(file: Path, names: dict[str, Any], map_location: str) -> ReferenceBank:
    """The bank written by :func:`write_bank` (or by format 1), with its ``names`` from ``config.json``."""
    tensors = read_safetensors(file, map_location)
    return ReferenceBank(
        embeddings=tensors["embeddings"].numpy(),
        expression=_bank_expression(tensors, len(names["genes"])),
        observed=(tensors["observed_patterns"].numpy(), tensors["observed_pattern"].numpy())
        if "observed_patterns" in tensors
        else None,
        genes=names["genes"],
        obs_names=names.get("obs_names", []),
        image_embeddings=tensors["image_embeddings"].numpy() if "image_embeddings" in tensors else None,
        sections=names.get("sections", []),
        centres=tensors["centres"].numpy() if "centres" in tensors else None,
        # Optional: older models have none (the "hybrid" read-out then needs reference=).
        colour=tensors["colour"].numpy() if "colour" in tensors else None,
    )


def _bank_expression(tensors: dict[str, torch.Tensor], n_genes: int) -> Any:
    """The bank's expression: CSR arrays (format 2) or the dense array of format 1."""
    if "expression" in tensors:  # format 1
        return tensors["expression"].numpy()
    import scipy.sparse as sp

    indptr = tensors["values_indptr"].numpy()
    return sp.csr_matrix(
        (tensors["values_data"].numpy(), tensors["values_indices"].numpy(), indptr),
        shape=(len(indptr) - 1, n_genes),
    )


def read_safetensors(file: Path, map_location: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of a saved model, with a clear error when missing or corrupt."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing from the saved model.")
    try:
        return load_file(str(file), device=map_location)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{file} is truncated or corrupt and cannot be read: {err}") from err
