"""CoMTIP for scverse: one embedding space for H&E histology and spatial gene expression."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, pl, pp, tl

try:
    __version__ = version("comtip_sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "datasets", "io", "pl", "pp", "tl"]
