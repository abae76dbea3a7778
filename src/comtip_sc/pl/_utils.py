"""Scanpy-style figure handling shared by the plotting functions."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def finish(fig: Figure, *, show: bool | None, save: str | os.PathLike | None, return_fig: bool):
    """Save and/or show ``fig`` the way scanpy's plotting functions do.

    ``show=None`` shows the figure only when nothing else asked for it (no ``save``, no
    ``return_fig``), so notebooks display it and scripts that save do not pop windows.
    """
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = save is None and not return_fig
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        plt.close(fig)
    return None
