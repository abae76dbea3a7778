"""Scanpy-style figure handling shared by the plotting functions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Resolution of saved figures: sharp on screen, small on disk.
SAVE_DPI = 150


def finish(
    fig: Figure,
    *,
    show: bool | None,
    save: str | os.PathLike | None,
    return_fig: bool,
    axes: Axes | Sequence[Axes] | None = None,
):
    """Save, show or hand back ``fig`` the way scanpy's plotting functions do.

    ``save`` writes the figure. ``return_fig=True`` returns the :class:`~matplotlib.figure.Figure`;
    ``show=False`` returns the axes (``axes``, or the figure's) and leaves the figure open so the caller
    can draw on or save it; ``show=None`` shows the figure unless it was saved (notebooks display it,
    scripts that save do not pop windows). A figure that was saved and is not handed back is closed.
    """
    if save is not None:
        fig.savefig(save, dpi=SAVE_DPI, bbox_inches="tight")
    if return_fig:
        return fig
    if show is False:
        if axes is None:
            axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        if isinstance(axes, Axes):
            return axes
        axes = list(axes)
        return axes[0] if len(axes) == 1 else axes
    if show or save is None:
        plt.show()
    if save is not None:
        plt.close(fig)
    return None


def finish_ax(
    ax: Axes,
    owned: bool,
    *,
    show: bool | None,
    save: str | os.PathLike | None,
    return_fig: bool,
) -> Figure | Axes | None:
    """:func:`finish` for functions taking ``ax=``.

    A figure made here (``owned``) is handled by ``finish``. A caller's axes are never closed: like
    scanpy, ``show=False`` returns them so the caller can keep drawing.
    """
    fig = ax.figure
    if owned:
        return finish(fig, show=show, save=save, return_fig=return_fig, axes=ax)
    if save is not None:
        fig.savefig(save, dpi=SAVE_DPI, bbox_inches="tight")
    if show:
        plt.show()
    if return_fig:
        return fig
    return ax if show is False else None
