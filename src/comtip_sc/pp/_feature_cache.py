"""A zarr cache of a frozen trunk's tokens per spot tile and view, so epochs read tokens, not pixels.

With a frozen trunk (``ComtipConfig.freeze_backbone="all"``) the trunk is a fixed function of the tile, so
its tokens can be computed once: for every tile and for each of the 8 dihedral views (4 rotations × an
optional flip, the augmentations :class:`~comtip_sc.train._datamodule.SentenceCollate` draws from). Training
then runs only the trainable token transformer on top. The cache lives beside the tile cache and records
what it was computed from (trunk, a hash of its weights, tile size in µm and px, colour handling, views and
the spots); any mismatch rebuilds it.

Stain and colour jitter (``TrainSettings.stain_jitter`` / ``colour_jitter``) are precomputed the same way:
views 1-7 of a jittered cache each carry their own random stain and colour draw (view 0 stays as cut, for
validation), so training on it sees 7 stain variants of every tile instead of a new one each step.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from .._atomic import atomic_path
from .._heap import keep_freed_memory
from .._logging import tqdm
from ._tile_cache import LazyZarrArray

logger = logging.getLogger(__name__)

#: Rotations by 0/90/180/270° (views 0-3), then the same after a left-right flip (views 4-7).
DIHEDRAL_VIEWS = 8


def dihedral_view(tiles: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7) of a stack of tiles ``[N, H, W, 3]``: ``view % 4`` quarter turns, flipped from 4 on.

    Examples
    --------
    >>> t = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    >>> dihedral_view(t, 0)[0, ..., 0].tolist(), dihedral_view(t, 4)[0, ..., 0].tolist()
    ([[0, 1], [2, 3]], [[1, 0], [3, 2]])

    """
    if not 0 <= view < DIHEDRAL_VIEWS:
        raise ValueError(f"view must be in 0..{DIHEDRAL_VIEWS - 1}, got {view}.")
    out = np.rot90(tiles, view % 4, axes=(1, 2))
    return out[:, :, ::-1] if view >= 4 else out


def weights_hash(module: nn.Module) -> str:
    """SHA-1 of a module's parameters and buffers (names, shapes, dtypes and bytes), 16 hex digits.

    Examples
    --------
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> weights_hash(a) == weights_hash(b)
    True

    """
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _spots_hash(tiles: Any) -> str:
    """Hash of the spot ids and of a few evenly spaced tiles' pixels (ids alone miss a re-cut image)."""
    h = hashlib.sha1("\n".join(map(str, tiles.obs_names)).encode())
    for i in np.unique(np.linspace(0, len(tiles) - 1, 4).astype(int)) if len(tiles) else []:
        h.update(np.ascontiguousarray(tiles[int(i)]).tobytes())
    return h.hexdigest()[:16]


class CachedTokens(LazyZarrArray):
    """Trunk tokens read back from :func:`~comtip_sc.pp.cache_trunk_tokens`: item ``i`` is ``float16 [views, P, C]``.

    Like :class:`~comtip_sc.pp.CachedTiles`, the store opens lazily in each process (cheap to pickle into
    data-loader workers) and is read one spot's zarr chunk at a time (caches written before sharding: 16
    spots) through a small per-process LRU of decoded chunks; a cache up to ``IN_MEMORY_MAX_BYTES`` is read whole into
    memory at first access instead.

    Parameters
    ----------
    path
        Folder of the zarr cache.
    in_memory
        ``True``: always load the whole cache into memory; ``False``: always read chunks from disk; ``None``
        (default): load it when it is at most ``IN_MEMORY_MAX_BYTES``.

    """

    def __init__(self, path: str | os.PathLike, in_memory: bool | None = None) -> None:
        self.path = str(path)
        self.in_memory = in_memory
        group = zarr.open_group(self.path, mode="r")
        self.key: dict[str, Any] = dict(group.attrs["key"])
        self.views = int(self.key["views"])
        self.n = int(group["tokens"].shape[0])
        self._array = None

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Size of the cached tokens in memory (what ``in_memory=True`` loads)."""
        return int(zarr.open_group(self.path, mode="r")["tokens"].nbytes)

    _held: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_held"] = None  # a loader worker reads its own copy, never a device tensor
        return state

    def __getitem__(self, i: int) -> np.ndarray:
        if self._held is not None:
            return self._held[int(i)].cpu().numpy()
        # A copy: a cached array or decoded chunk must not change under a caller that modifies the item.
        return np.array(self._item("tokens", int(i)))

    def hold_on(self, device: torch.device | str) -> None:
        """Keep the whole cache as one tensor on ``device``; :meth:`take` then gathers batches there.

        On a GPU a batch is then one gather on the device: no copy from the host, no host memory.
        """
        self._held = torch.from_numpy(np.asarray(self._load("tokens")[:])).to(device)
        self._array, self._lru = None, None

    def take(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Tokens of spots ``rows``, spot ``rows[j]`` in its view ``views[j]``: a new ``float16 [n, P, C]``.

        From memory it is one gather of the chosen views (an item is all ``views`` of a spot, 8× the bytes
        a training step uses), on the device the cache is held on (:meth:`hold_on`) or on the host; from
        disk, spot by spot through the chunk LRU.
        """
        if self._held is not None:
            # Indices cross without blocking: a blocking copy would make the host wait for the GPU.
            rows_t, views_t = (
                torch.from_numpy(np.asarray(a, dtype=np.int64)).to(self._held.device, non_blocking=True)
                for a in (rows, views)
            )
            return self._held[rows_t, views_t]
        rows, views = np.asarray(rows, dtype=np.int64), np.asarray(views, dtype=np.int64)
        arr = self._load("tokens")
        if isinstance(arr, np.ndarray):
            return torch.from_numpy(arr[rows, views])
        return torch.from_numpy(
            np.stack([self._item("tokens", int(i))[v] for i, v in zip(rows, views, strict=True)])
        )


def token_cache_key(
    tiles: Any,
    vision: nn.Module,
    views: int = DIHEDRAL_VIEWS,
    jitter: tuple[float, float, int] = (0.0, 0.0, 0),
) -> dict[str, Any]:
    """What a token cache of ``tiles`` through ``vision``'s trunk depends on; a cache matches only if equal.

    ``jitter`` is ``(stain_jitter, colour_jitter, seed)`` of the jittered views (zeros: none).
    """
    backbone = vision.backbone
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    return {
        "trunk": str(cfg.get("architecture") or type(backbone).__name__),
        "weights": weights_hash(backbone),
        "tile_um": float(tiles.tile_um),
        "tile_px": int(tiles.tile_px),
        "context_um": getattr(tiles, "context_um", None),
        "colour_norm": getattr(tiles, "colour_norm", None),
        "views": int(views),
        "spots": _spots_hash(tiles),
        "n_spots": len(tiles),
        # Only a jittered cache records its jitter, so caches written before jitter existed still match.
        **(
            {"jitter": [float(jitter[0]), float(jitter[1]), int(jitter[2])]} if jitter[0] or jitter[1] else {}
        ),
    }


def cache_trunk_tokens(
    tiles: Any,
    vision: nn.Module,
    path: str | os.PathLike,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    views: int = DIHEDRAL_VIEWS,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    stain_jitter: float = 0.0,
    colour_jitter: float = 0.0,
    seed: int = 0,
) -> CachedTokens:
    """Compute a frozen trunk's tokens for every tile and dihedral view once, and store them at ``path``.

    An existing cache with the same key (``token_cache_key``) is reused; any other one is rebuilt.
    The cache is written to a temporary folder beside ``path`` and renamed into place.

    Parameters
    ----------
    tiles
        A tile reader (:class:`~comtip_sc.pp.SpotTiles` or :class:`~comtip_sc.pp.CachedTiles`).
    vision
        The :class:`~comtip_sc.model._vision.VisionBranch` whose frozen trunk makes the tokens.
    path
        Folder of the zarr cache.
    mean, std
        The trunk's input normalisation.
    views
        Number of dihedral views stored per tile (1-8; view 0 is the tile as cut).
    batch_size
        Tiles per trunk forward pass.
    device
        Where the trunk runs.
    stain_jitter, colour_jitter
        Strength of the HED stain jitter and brightness/contrast/saturation jitter (as
        ``TrainSettings.stain_jitter`` / ``colour_jitter`` apply them in training) applied to views 1-7, one
        independent draw per tile and view; view 0 is never jittered. 0: off.
    seed
        Seed of the jitter draws (the same seed and ``batch_size`` give the same cache).

    Returns
    -------
    The cache, opened for reading.

    Examples
    --------
    >>> import comtip_sc as cs, tempfile, os
    >>> from comtip_sc.model._vision import VisionBranch
    >>> from comtip_sc.model._trunk import create_backbone
    >>> sdata = cs.datasets.toy_tissue(n_rows=3, n_cols=3, n_genes=20)
    >>> tiles = cs.pp.SpotTiles(sdata, tile_um=100, tile_px=64)
    >>> vb = VisionBranch(create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32, freeze="all")
    >>> tok = cs.pp.cache_trunk_tokens(tiles, vb, os.path.join(tempfile.mkdtemp(), "tok.zarr"),
    ...                                mean=(0.5,) * 3, std=(0.5,) * 3, views=2)
    >>> tok[0].shape
    (2, 4, 512)

    """
    if not getattr(vision, "trunk_frozen", False):
        raise ValueError(
            "A token cache needs a frozen trunk (freeze_backbone='all'): a trunk that trains changes its "
            "tokens every step."
        )
    if not 1 <= views <= DIHEDRAL_VIEWS:
        raise ValueError(f"views must be in 1..{DIHEDRAL_VIEWS}, got {views}.")
    if len(tiles) == 0:
        raise ValueError("No tiles to cache: the tile reader holds no spots.")
    path = Path(path)
    for name, value in (("stain_jitter", stain_jitter), ("colour_jitter", colour_jitter)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    key = token_cache_key(tiles, vision, views, (stain_jitter, colour_jitter, seed))
    if path.exists():
        try:
            cached = CachedTokens(path)
        except Exception:  # unreadable or from another tool: rebuilt below
            cached = None
        if cached is not None and cached.key == key:
            logger.info(
                "Reusing the trunk-token cache at %s (%d spots × %d views).", path, len(cached), views
            )
            return cached
        logger.info("The trunk-token cache at %s was built for other settings; rebuilding it.", path)
    # A missing cache another process (DDP rank) finishes first is kept, never swapped under its readers;
    # a stale one is replaced.
    replace = path.exists()
    n = len(tiles)
    c = int(np.shape(tiles[0])[-1])  # 6 with a context tile
    m = torch.tensor(mean, dtype=torch.float32).repeat(c // 3).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).repeat(c // 3).view(1, c, 1, 1)
    # Lazy: the training package imports this one.
    from ._augment import jitter_spot_tiles

    generator = torch.Generator().manual_seed(seed)
    vision = vision.to(device)
    was_training = vision.training
    vision.eval()
    try:
        with (
            atomic_path(path, replace_existing=replace) as tmp,
            torch.no_grad(),
            keep_freed_memory(device),
        ):
            group = zarr.open_group(str(tmp), mode="w")
            arr = None
            for start in tqdm(range(0, n, batch_size), desc="Trunk tokens", unit="batch", disable=None):
                stop = min(start + batch_size, n)
                batch = np.stack([tiles[i] for i in range(start, stop)])
                out = []
                for v in range(views):
                    x = torch.from_numpy(np.ascontiguousarray(dihedral_view(batch, v))).permute(0, 3, 1, 2)
                    x = x.float().div_(255.0)
                    if v > 0 and (stain_jitter or colour_jitter):
                        x = jitter_spot_tiles(x, stain_jitter, colour_jitter, generator=generator)
                    x = (x - m) / s
                    out.append(vision.trunk_tokens(x.to(device)).float().cpu())
                block = torch.stack(out, dim=1).to(torch.float16).numpy()  # [b, views, P, C]
                if arr is None:
                    # One spot per chunk inside shards (files) of 16: a spot's tokens (~330 KB for 8 views of
                    # 16 × 1280) are decoded alone, not with 15 others, when read in random order.
                    item = block.shape[1:]
                    arr = group.create_array(
                        "tokens", shape=(n, *item), chunks=(1, *item), shards=(16, *item), dtype="float16"
                    )
                arr[start:stop] = block
            group.attrs["key"] = key
    finally:
        vision.train(was_training)
    logger.info("Cached trunk tokens of %d spots × %d views in %s.", n, views, path)
    return CachedTokens(path)
