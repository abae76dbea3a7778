"""The trained model a user holds: network + the data settings it was trained with + reference bank.

Follows the scvi-tools convention of a model object with ``save(dir)`` / ``load(dir)``. A saved
model is a folder with

- ``config.json``: format version, package version, :class:`ComtipConfig`, gene vocabulary, training
  panel, normalisation and tile settings, training summary;
- ``model.safetensors``: the network weights;
- ``reference.safetensors``: the retrieval reference bank (image-independent gene-sentence
  embeddings and normalised expression of the training spots, as CSR arrays plus the genes each spot
  measures; image embeddings, spot centres and colour statistics when the bank has them).

The folder is written next to its final place and renamed into it, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from .._atomic import atomic_path
from .._constants import BAR_ROW
from ._bank import ReferenceBank
from ._bank_file import read_bank, read_safetensors, write_bank
from ._config import ComtipConfig
from ._gene_names import check_text_encoder
from ._network import ComtipNetwork, build_network

logger = logging.getLogger(__name__)

#: Version of the on-disk layout; bump it when a saved folder can no longer be read as before.
#: 2: the bank's expression is stored sparse (CSR arrays and measurement patterns).
FORMAT_VERSION = 2
#: Layouts this version reads (1: dense bank expression with NaN where not measured).
READABLE_VERSIONS = (1, 2)
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_REFERENCE_FILE = "reference.safetensors"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comtip_sc")
    except PackageNotFoundError:  # pragma: no cover
        return "0.0.0"


class ComtipModel:
    """A trained CoMTIP model: what :func:`comtip_sc.tl.fit` returns and ``comtip_embed/predict`` use.

    Parameters
    ----------
    network
        The :class:`~comtip_sc.model.ComtipNetwork`.
    panel
        Genes of the training sentences, in order.
    tile_um, tile_px
        Physical tile side (µm) and its pixel side, as used in training.
    colour_norm, context_scale
        The data settings the model was trained with that also apply when it embeds and predicts (see
        :class:`~comtip_sc.train.TrainSettings`): tile colour handling, and how much wider the context tile
        is (``None``: no context tile; it must agree with ``network.config.context_tile``).
    normalization
        How expression was put on the model's scale (``{"target_sum": 1e4, "log1p": True, "layer": None}``).
    reference
        The retrieval bank, or ``None``.
    history
        Training summary (epochs, steps, last losses, sections...).
    gene_stats
        Per-gene statistics of the training expression (``{"mean": {gene: x}, "max": {gene: x}}``) that
        zero-shot prediction uses for its context sentence and candidate values. Statistics of the
        panel, not of individual spots: no reference bank is needed.
    zero_shot_temperature
        Softmax temperature of zero-shot prediction, chosen on the training spots at the end of
        :func:`~comtip_sc.tl.fit`; ``None``: the learned temperature.
    zero_shot_readout
        Per-gene linear read-out of the zero-shot candidate scores, fitted on the training spots at the end
        of :func:`~comtip_sc.tl.fit` (``{"genes", "weights", "intercept", "alpha", "n_candidates"}``;
        ``docs/model.md``, value query); ``None``: every gene is read by the softmax.

    Examples
    --------
    >>> import comtip_sc as cs, tempfile
    >>> sdata = cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=20)
    >>> model = cs.tl.fit(sdata, max_epochs=1, enable_progress_bar=False)  # doctest: +SKIP
    >>> model.save(tempfile.mkdtemp() + "/m")  # doctest: +SKIP

    """

    def __init__(
        self,
        network: ComtipNetwork,
        *,
        panel: list[str],
        tile_um: float,
        tile_px: int,
        colour_norm: str | None = None,
        context_scale: float | None = None,
        normalization: dict[str, Any] | None = None,
        reference: ReferenceBank | None = None,
        history: dict[str, Any] | None = None,
        gene_stats: dict[str, dict[str, float]] | None = None,
        zero_shot_temperature: float | None = None,
        zero_shot_readout: dict[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.panel = list(panel)
        self.tile_um = float(tile_um)
        self.tile_px = int(tile_px)
        self.colour_norm = colour_norm
        self.context_scale = None if context_scale is None else float(context_scale)
        if network.config.context_tile != (self.context_scale is not None):
            raise ValueError(
                f"The network {'reads' if network.config.context_tile else 'has no'} context tile, but "
                f"context_scale is {context_scale!r}; they must agree."
            )
        self.normalization = normalization or {"target_sum": 1e4, "log1p": True, "layer": None}
        self.reference = reference
        self.history = history or {}
        self.gene_stats = gene_stats or {"mean": {}, "max": {}}
        self.zero_shot_temperature = None if zero_shot_temperature is None else float(zero_shot_temperature)
        self.zero_shot_readout = zero_shot_readout
        if gene_stats:
            # The network's copy (value range of the zero-shot read-out) is not in the weights file.
            vmax = gene_stats.get("max", {})
            network.set_gene_max([vmax.get(g, float("nan")) for g in network.gene_names])

    @property
    def config(self) -> ComtipConfig:
        """The network's configuration."""
        return self.network.config

    @property
    def genes(self) -> list[str]:
        """The gene vocabulary of the Gene-Text Encoder (panel genes plus any added later)."""
        return self.network.gene_names

    @property
    def validation_(self) -> pd.DataFrame | None:
        """The self-check of :func:`~comtip_sc.tl.fit`; ``None`` when fit held nothing out.

        Every read-out and the simple colour bar, PCC-ALL on the held-out sections
        (:func:`~comtip_sc.tl.self_check`).

        Stored in ``history["validation"]``, so it is saved and loaded with the model.
        """
        rows = self.history.get("validation")
        if not rows:
            return None
        return pd.DataFrame(rows["table"]).set_index("read_out")

    def __repr__(self) -> str:
        c = self.config
        flags = ", ".join(f"{k}={getattr(c, k)}" for k in ("use_values", "use_names", "mfm", "paat"))
        if c.use_names:
            flags += f", text_encoder={c.text_encoder!r}"
        ref = "none" if self.reference is None else f"{len(self.reference.embeddings)} spots"
        tile = f"{self.tile_um:g} µm @ {self.tile_px} px"
        if self.context_scale is not None:
            tile += f" + {self.context_scale:g}× context"
        if self.colour_norm is not None:
            tile += f", colour_norm={self.colour_norm!r}"
        return (
            f"ComtipModel(backbone={c.backbone!r}, tile={tile}, "
            f"{len(self.panel)} panel genes, {flags}, reference={ref}{_check_summary(self.validation_)})"
        )

    def tiles(self, sdata, *, table_key: str = "table", spot_diameter_um: float | None = None):
        """The tiles of ``sdata`` cut the way this model was trained (µm, px, colour, context tile).

        A :class:`~comtip_sc.pp.SpotTiles`, or a :class:`~comtip_sc.pp.ContextTiles` for a model with a
        context tile (``context_scale``).

        Examples
        --------
        >>> model.tiles(sdata)[0].shape  # doctest: +SKIP
        (112, 112, 3)

        """
        from functools import partial

        from ..pp._context import with_context
        from ..pp._tiles import SpotTiles

        return with_context(
            partial(SpotTiles, sdata),
            self.tile_um,
            self.context_scale,
            tile_px=self.tile_px,
            table_key=table_key,
            spot_diameter_um=spot_diameter_um,
            colour_norm=self.colour_norm,
        )

    def encode_images(
        self,
        tiles,
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """L2-normalised image embeddings ``(n, embed_dim)`` of tiles, in order.

        Parameters
        ----------
        tiles
            A tile reader (:meth:`tiles`, :class:`~comtip_sc.pp.SpotTiles`, a tile cache from
            :func:`~comtip_sc.pp.cache_tiles`, :class:`~comtip_sc.pp.ContextTiles`) or a ``(n, H, W, 3)``
            uint8 array, cut as this model expects.
        batch_size, num_workers
            Loader settings (``None``: 64 spots and no worker process on the CPU, 512 spots and up to 8
            workers on a GPU).
        device
            Where the network runs (``None``: where it is now); on a GPU under bf16 autocast.

        Examples
        --------
        >>> model.encode_images(model.tiles(sdata)).shape  # doctest: +SKIP
        (64, 128)

        """
        from ._inference import encode_tiles

        dev = None if device is None else torch.device(device)
        return encode_tiles(self.network, tiles, batch_size=batch_size, num_workers=num_workers, device=dev)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the model to the folder ``path`` (atomically).

        Parameters
        ----------
        path
            Target folder. It must not exist unless ``overwrite``.
        overwrite
            Replace an existing folder.

        Examples
        --------
        >>> model.save("my_model")  # doctest: +SKIP

        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        with atomic_path(path) as tmp:
            tmp.mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
            save_file(state, str(tmp / _WEIGHTS_FILE))
            meta: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "comtip_sc_version": _package_version(),
                "config": self.config.to_dict(),
                "genes": self.genes,
                "panel": self.panel,
                "tile_um": self.tile_um,
                "tile_px": self.tile_px,
                "colour_norm": self.colour_norm,
                "context_scale": self.context_scale,
                "normalization": self.normalization,
                "history": self.history,
                "gene_stats": self.gene_stats,
                "zero_shot_temperature": self.zero_shot_temperature,
                "zero_shot_readout": self.zero_shot_readout,
                "reference": None,
            }
            if self.reference is not None:
                meta["reference"] = write_bank(self.reference, tmp / _REFERENCE_FILE)
            (tmp / _CONFIG_FILE).write_text(json.dumps(meta, indent=1, default=_jsonable))
        logger.info("Saved the model to %s.", path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str = "cpu") -> ComtipModel:
        """Read a model written by :meth:`save`.

        Raises a clear error for a missing, truncated or corrupt file and for a folder written in an
        incompatible format version.

        Examples
        --------
        >>> model = ComtipModel.load("my_model")  # doctest: +SKIP

        """
        path = Path(path)
        cfg_file = path / _CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved comtip_sc model: {_CONFIG_FILE} is missing.")
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_file} is truncated or corrupt: {err}.") from err
        version = meta.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ValueError(
                f"{path} was saved by a newer comtip_sc ({meta.get('comtip_sc_version', '?')}) in model format "
                f"{version}; this comtip_sc ({_package_version()}) reads format {FORMAT_VERSION}. Upgrade "
                "comtip_sc to load it."
            )
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{path} was saved in model format {version!r} (by comtip_sc "
                f"{meta.get('comtip_sc_version', '?')}); this comtip_sc ({_package_version()}) reads formats "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Load it with a matching comtip_sc version."
            )
        lacking = [
            k for k in ("config", "genes", "panel", "tile_um", "tile_px", "normalization") if k not in meta
        ]
        if lacking:
            raise ValueError(f"{cfg_file} is corrupt: it lacks the entries {lacking}.")
        config = ComtipConfig.from_dict(meta["config"])
        if config.use_names:
            check_text_encoder(config.text_encoder, path)
        # The saved weights are loaded below, so the backbone must not look for pretrained ones.
        config.pretrained, config.checkpoint_path = False, None
        network = build_network(config, meta["genes"])
        state = read_safetensors(path / _WEIGHTS_FILE, map_location)
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path / _WEIGHTS_FILE} does not match its config.json: {err}") from err
        network.eval()
        reference = None
        if meta.get("reference") is not None:
            reference = read_bank(path / _REFERENCE_FILE, meta["reference"], map_location)
        return cls(
            network,
            panel=meta["panel"],
            tile_um=meta["tile_um"],
            tile_px=meta["tile_px"],
            # Models saved before these left the network config stored them in it.
            colour_norm=meta.get("colour_norm", meta["config"].get("colour_norm")),
            context_scale=meta.get("context_scale", meta["config"].get("context_scale")),
            normalization=meta["normalization"],
            reference=reference,
            history=meta.get("history", {}),
            gene_stats=meta.get("gene_stats"),
            zero_shot_temperature=meta.get("zero_shot_temperature"),
            zero_shot_readout=meta.get("zero_shot_readout"),
        )


def _check_summary(table: pd.DataFrame | None) -> str:
    """``", self-check: best <read-out> 0.21 vs simple bar 0.18"`` for the repr; empty without a self-check."""
    if table is None or table.empty:
        return ""
    bar = table[table.index.str.startswith(BAR_ROW)]
    ours = table.drop(bar.index)
    if ours.empty or bar.empty:
        return ""
    best = ours["pcc_all"].idxmax()
    return f", self-check: best {best} {ours['pcc_all'].max():.3f} vs simple bar {bar['pcc_all'].iloc[0]:.3f}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
