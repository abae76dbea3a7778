"""A montage of spot tiles: what the model will see."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from spatialdata import SpatialData

from .._constants import DEFAULT_TILE_PX, DEFAULT_TILE_UM, TABLE_KEY
from .._tables import get_table
from ..pp._tiles import extract_tiles
from ._utils import finish


def tiles(
    sdata: SpatialData,
    *,
    spots: list[str] | None = None,
    n: int = 16,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int = DEFAULT_TILE_PX,
    table_key: str = TABLE_KEY,
    spot_diameter_um: float | None = None,
    colour_norm: str | None = None,
    color: str | None = None,
    ncols: int = 8,
    seed: int = 0,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
):
    """Draw a montage of spot tiles labelled with their spot ids.

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table.
    spots
        ``obs_names`` to draw. ``None`` draws ``n`` spots chosen at random (with ``seed``).
    n
        Number of random spots when ``spots`` is ``None``.
    tile_um, tile_px
        Physical tile side in µm and its resampled side in pixels, as used for training.
    table_key
        Table whose rows are the spots.
    spot_diameter_um
        Spot diameter in µm when the table does not record it (Visium: 55), as in
        :func:`~comtip_sc.pp.extract_tiles`.
    colour_norm
        ``"section"`` shows the tiles colour-standardised per section, as a model trained with
        ``fit(..., colour_norm="section")`` sees them (see :class:`~comtip_sc.pp.SpotTiles`).
    color
        Optional ``obs`` column appended to each title (e.g. a tissue annotation).
    ncols
        Tiles per row.
    seed
        Seed of the random spot choice.
    show, save, return_fig
        As in scanpy: show the figure, save it to a path, or return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure when ``return_fig`` is true; with ``show=False`` the tile axes, the figure left open; else
    ``None``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=4, n_cols=4, n_genes=20)
    >>> fig = cs.pl.tiles(sdata, n=4, tile_um=100, tile_px=32, return_fig=True, show=False)

    """
    table = get_table(sdata, table_key)
    if spots is None:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(table.n_obs, size=min(n, table.n_obs), replace=False))
        spots = table.obs_names[pick].tolist()
    if color is not None and color not in table.obs:
        raise KeyError(f"color={color!r} is not an obs column of table {table_key!r}.")
    images = extract_tiles(
        sdata,
        tile_um=tile_um,
        tile_px=tile_px,
        table_key=table_key,
        spots=spots,
        spot_diameter_um=spot_diameter_um,
        colour_norm=colour_norm,
    )
    ncols = max(1, min(ncols, len(spots)))
    nrows = int(np.ceil(len(spots) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, spot, img in zip(axes.ravel(), spots, images, strict=False):
        ax.imshow(img)
        title = spot if color is None else f"{spot}\n{table.obs.loc[spot, color]}"
        ax.set_title(title, fontsize=7)
    colour = ", colour standardised per section" if colour_norm == "section" else ""
    fig.suptitle(f"{len(spots)} tiles, {tile_um:g} µm → {tile_px} px{colour}", fontsize=9)
    return finish(fig, show=show, save=save, return_fig=return_fig)
