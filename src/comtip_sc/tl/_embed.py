"""``cs.tl.comtip_embed``: image embeddings of spots in the shared CoMTIP space."""

from __future__ import annotations

import numpy as np
import torch
from spatialdata import SpatialData
from torch.utils.data import DataLoader, Dataset

from .._constants import EMBED_KEY, TABLE_KEY
from .._store import store_path, write_table
from .._tables import require_spatialdata
from ..model._comtip_model import ComtipModel
from ._datamodule import SentenceCollate
from ._inference import encode_images
from ._utils import record, resolve_device, target


class _TileItems(Dataset):
    """Tiles shaped as the items :class:`~comtip_sc.tl._datamodule.SentenceCollate` expects."""

    def __init__(self, tiles) -> None:
        self.tiles = tiles
        self._empty = np.zeros(0, np.float32)
        self._idx = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        return self.tiles[i], self._empty, self._idx, 0


def image_embeddings(
    sdata: SpatialData,
    model: ComtipModel,
    *,
    table_key: str = TABLE_KEY,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | None = None,
    spot_diameter_um: float | None = None,
) -> np.ndarray:
    """``(n_spots, embed_dim)`` L2-normalised image embeddings of the table's spots, in table order."""
    tiles = model.tiles(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
    mean, std = model.network.image_mean, model.network.image_std
    loader = DataLoader(
        _TileItems(tiles),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=SentenceCollate(mean, std, augment=False),
    )
    network = model.network.to(device or torch.device("cpu"))
    return encode_images(network, loader)


def comtip_embed(
    sdata: SpatialData,
    model: ComtipModel,
    *,
    table_key: str = TABLE_KEY,
    key_added: str = EMBED_KEY,
    batch_size: int = 64,
    num_workers: int = 0,
    accelerator: str = "auto",
    spot_diameter_um: float | None = None,
    copy: bool = False,
    write: bool = False,
) -> SpatialData | None:
    """Embed every spot's image tile into the shared CoMTIP space.

    Works on sections the model never saw and on tables spanning several sections: each spot's tile
    is cut at the model's ``tile_um`` / ``tile_px`` from the image of its own section.

    Parameters
    ----------
    sdata
        SpatialData with images, spot shapes and a table annotating them.
    model
        A trained :class:`~comtip_sc.model.ComtipModel`.
    table_key
        Table whose spots are embedded.
    key_added
        ``obsm`` key of the embedding.
    batch_size, num_workers
        Inference loader settings.
    accelerator
        ``"auto"`` (GPU when available), ``"cpu"`` or ``"gpu"``. Inference runs on one device.
    spot_diameter_um
        Spot diameter in µm when the table does not record it (Visium: 55).
    write
        Also write the updated table into the zarr store backing ``sdata`` (:func:`comtip_sc.io.write_table`:
        a process killed part-way leaves the stored table as it was). Checked before any work: a SpatialData
        that is not backed, or a read-only store, raises at once.
    copy
        Return a new SpatialData (with copied tables) instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the new SpatialData when ``copy=True``. Writes L2-normalised embeddings to
    ``table.obsm[key_added]`` and the settings to ``table.uns["comtip"]["embed"][key_added]``. The embedding
    feeds ``sc.pp.neighbors(table, use_rep=key_added)`` directly.

    Examples
    --------
    >>> import comtip_sc as cs, scanpy as sc
    >>> cs.tl.comtip_embed(sdata, model)  # doctest: +SKIP
    >>> sc.pp.neighbors(sdata.tables["table"], use_rep="X_comtip")  # doctest: +SKIP

    """
    require_spatialdata(sdata, "cs.tl.comtip_embed")
    if write:
        if copy:
            raise ValueError(
                "write=True writes into the store of sdata, which copy=True promises to leave alone."
            )
        store_path(sdata)  # fail before the work, not after it
    out, table = target(sdata, table_key, copy)
    emb = image_embeddings(
        out,
        model,
        table_key=table_key,
        batch_size=batch_size,
        num_workers=num_workers,
        device=resolve_device(accelerator),
        spot_diameter_um=spot_diameter_um,
    )
    table.obsm[key_added] = emb.astype(np.float32)
    record(
        table,
        "embed",
        key_added,
        {
            "n_spots": len(emb),
            "dim": int(emb.shape[1]),
            "tile_um": model.tile_um,
            "tile_px": model.tile_px,
            "backbone": model.config.backbone,
        },
    )
    if write:
        write_table(out, table_key)
    return out if copy else None
