"""Example data: synthetic toy sections and loaders for public spatial transcriptomics sets."""

from __future__ import annotations

from ._public import her2st, mob
from ._toy import toy_tissue
from ._visium_hd import visium_hd_tissue

__all__ = ["her2st", "mob", "toy_tissue", "visium_hd_tissue"]
