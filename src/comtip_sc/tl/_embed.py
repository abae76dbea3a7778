"""``cs.tl.comtip_embed``: image embeddings of spots in the shared CoMTIP space."""

from __future__ import annotations

import numpy as np
import torch
from spatialdata import SpatialData

from .._constants import EMBED_KEY, TABLE_KEY
from .._devices import resolve_device
from .._store import store_path, write_table
from .._tables import require_spatialdata
from ..model._comtip_model import ComtipModel
from ..model._inference import encode_tiles
from ._tta import DihedralMean
from ._utils import record, target


def image_embeddings(
    sdata: SpatialData,
    model: ComtipModel,
    *,
    table_key: str = TABLE_KEY,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: torch.device | None = None,
    spot_diameter_um: float | None = None,
    tta: bool = False,
) -> np.ndarray:
    """``(n_spots, embed_dim)`` L2-normalised image embeddings of the table's spots, in table order.

    ``tta``: each the mean over the tile's 8 dihedral views, scaled back to unit length.
    """
    tiles = model.tiles(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
    device = device or torch.device("cpu")
    if tta:
        network = DihedralMean(model.network)
        return encode_tiles(network, tiles, batch_size=batch_size, num_workers=num_workers, device=device)
    return model.encode_images(tiles, batch_size=batch_size, num_workers=num_workers, device=device)


def comtip_embed(
    sdata: SpatialData,
    model: ComtipModel,
    *,
    table_key: str = TABLE_KEY,
    key_added: str = EMBED_KEY,
    batch_size: int | None = None,
    num_workers: int | None = None,
    accelerator: str = "auto",
    spot_diameter_um: float | None = None,
    tta: bool = False,
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
    batch_size
        Spots per forward pass. Default: 64 on the CPU, 512 on a GPU.
    num_workers
        Processes that cut tiles from the images while the network runs, each with its own reader and cache
        of decoded image chunks. Default: 0 on the CPU (the network uses every core), ``min(8, cores - 2)``
        with a GPU.
    accelerator
        ``"auto"`` (GPU when available), ``"cpu"`` or ``"gpu"``. Inference runs on one device; on a GPU
        under bf16 autocast, with pinned batches copied asynchronously.
    spot_diameter_um
        Spot diameter in µm when the table does not record it (Visium: 55).
    tta
        Test-time augmentation: embed each tile's 8 dihedral views (its 4 rotations by 90°, each also
        mirrored) and keep their mean embedding, scaled back to unit length. 8 times the compute; memory
        stays that of one batch.
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
        tta=tta,
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
            "tta": tta,
        },
    )
    if write:
        write_table(out, table_key)
    return out if copy else None
