"""CoMTIP for scverse: one embedding space for H&E histology and spatial gene expression."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ._logging import quiet_tqdm_auto

try:
    __version__ = version("comtip_sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

#: Subpackages, imported on first use: ``import comtip_sc`` alone loads no torch, so the ``comtip``
#: command answers ``--help`` at once. ``cs.tl``, ``cs.pl`` ... work as attributes as usual.
_SUBPACKAGES = ("constants", "datasets", "io", "model", "pl", "pp", "tl", "train")

quiet_tqdm_auto()

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, io, pl, pp, tl


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["__version__", "datasets", "io", "pl", "pp", "tl"]
