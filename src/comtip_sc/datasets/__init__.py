"""Example data: a synthetic toy section and loaders for public spatial transcriptomics sets."""

from __future__ import annotations

from ._public import her2st, mob
from ._toy import toy_tissue

__all__ = ["her2st", "mob", "toy_tissue"]
