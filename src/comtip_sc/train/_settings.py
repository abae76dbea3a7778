"""How a CoMTIP network is trained, grouped in one dataclass.

Optimiser, epochs, batching, validation and the data settings (tile colour, context tile, augmentation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._constants import COLOUR_NORMS, TRAIN_BATCH_SIZE
from .._presets import preset_training
from ..model._config import ComtipConfig


@dataclass
class TrainSettings:
    """Training and data settings of :func:`comtip_sc.tl.fit` (the network itself is a :class:`~comtip_sc.model.ComtipConfig`).

    The data settings (``colour_norm``, ``context_scale``, ``stain_jitter``, ``colour_jitter``) say how
    tiles are prepared; the trained model keeps the two that also apply when it embeds and predicts.

    The defaults are the ``cpu`` preset's recipe; :meth:`preset` gives another preset's. Every field can
    also be passed to ``fit`` as a keyword (``fit(sdata, max_epochs=5)``), which overrides the field.

    Parameters
    ----------
    max_epochs
        Passes over the training spots.
    lr
        Peak AdamW learning rate (linear warm-up, then cosine decay). ``1e-4`` suits fine-tuning a
        pretrained trunk; a trunk trained from scratch or a frozen trunk's token transformer trains at
        ``1e-3`` (at ``1e-4`` and 12 epochs the PAAT discriminator and the zero-shot read-out stayed at
        chance on her2st and the mouse bulb; see the benchmarks page).
    batch_size
        Spots per training step (and InfoNCE's negatives per step on one device).
    weight_decay
        AdamW weight decay (not applied to biases, norms, embeddings, tokens, queries or the temperature).
    backbone_lr_mult, layer_decay
        Learning-rate multiplier of the trunk and its layer-wise decay (timm's
        ``param_groups_layer_decay``; ``None``: one rate for the whole trunk).
    early_stopping_patience
        Epochs without improvement of the validation loss before training stops (``None``: never early).
    num_workers
        Data-loader workers that cut tiles.
    feature_cache
        Train on cached trunk tokens (:func:`~comtip_sc.pp.cache_trunk_tokens`): ``None`` caches whenever
        the trunk is frozen under a token transformer (the ``cpu`` and ``pathology`` presets).
    section_balance
        ``None``: plain shuffling. ``alpha`` in [0, 1]: each draw picks a training section with
        probability ∝ ``n_spots ** alpha`` (``0``: every section equally often).
    smooth_targets
        ``None``: train on each spot's own expression. ``k`` >= 2: each training spot's expression is
        replaced by its mean over the ``k`` nearest spots of its section, the spot itself included, in the
        training sentences only (a target with less sampling noise). The held-out sections' validation
        loss, the reference bank, the zero-shot calibration, the self-check and every score use the raw
        expression.
    colour_norm
        Tile colour handling, applied the same way in training and in every later embedding and prediction
        (the trained model keeps it as ``model.colour_norm``): ``None`` (tiles as scanned) or ``"section"``
        (each image's tiles standardised per RGB channel onto a fixed H&E reference colour; see
        :class:`~comtip_sc.pp.SpotTiles`). ``"section"`` removes scan-to-scan brightness and stain shifts
        but also real differences in a section's mean tissue colour.
    context_scale
        Spatial context: with a value ``s > 1`` each spot also gets a context tile ``s × tile_um`` wide
        around its centre, which the network reads beside the spot tile (``ComtipConfig.context_tile``,
        which ``fit`` sets; the model keeps ``model.context_scale``). ``None``: the spot tile alone.
    stain_jitter, colour_jitter
        Colour augmentation of training tiles (never of tiles embedded or predicted): the strength of the
        HED stain jitter (per tile, each stain's optical density scaled by ``U(1 - σ, 1 + σ)`` and shifted
        by ``U(-σ, σ)``; Tellez et al. 2018) and of the per-tile brightness/contrast/saturation jitter
        (factors in ``U(1 - s, 1 + s)``). ``0`` turns each off; 0.05 and 0.1 are mild. See
        ``docs/model.md``.

    Examples
    --------
    >>> TrainSettings.preset("gpu").lr, TrainSettings().max_epochs
    (0.0001, 12)

    """

    max_epochs: int = 12
    lr: float = 1e-3
    batch_size: int = TRAIN_BATCH_SIZE
    weight_decay: float = 0.05
    backbone_lr_mult: float = 1.0
    layer_decay: float | None = None
    early_stopping_patience: int | None = 5
    num_workers: int = 0
    feature_cache: bool | None = None
    section_balance: float | None = None
    smooth_targets: int | None = None
    colour_norm: str | None = None
    context_scale: float | None = None
    stain_jitter: float = 0.0
    colour_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"max_epochs must be >= 1 and batch_size >= 2 (InfoNCE contrasts the spots of a batch), got "
                f"{self.max_epochs} and {self.batch_size}."
            )
        if not self.lr > 0 or self.num_workers < 0:
            raise ValueError(f"lr must be > 0 and num_workers >= 0, got {self.lr} and {self.num_workers}.")
        if self.section_balance is not None and not 0.0 <= self.section_balance <= 1.0:
            raise ValueError(f"section_balance must be None or in [0, 1], got {self.section_balance}.")
        k = self.smooth_targets
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
            raise ValueError(
                f"smooth_targets must be None (off) or an int >= 2 (spots averaged, the spot included), got "
                f"{k!r}."
            )
        if self.colour_norm not in COLOUR_NORMS:
            raise ValueError(f"colour_norm must be one of {COLOUR_NORMS}, got {self.colour_norm!r}.")
        if self.context_scale is not None and not self.context_scale > 1.0:
            raise ValueError(f"context_scale must be None or > 1, got {self.context_scale!r}.")
        if not 0.0 <= self.stain_jitter < 1.0 or not 0.0 <= self.colour_jitter < 1.0:
            raise ValueError(
                f"stain_jitter and colour_jitter must be in [0, 1), got {self.stain_jitter} and "
                f"{self.colour_jitter}."
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainSettings:
        """The training recipe of a named preset (see :meth:`~comtip_sc.model.ComtipConfig.preset`), with ``overrides``.

        Examples
        --------
        >>> TrainSettings.preset("cpu", batch_size=64).batch_size
        64

        """
        return cls(**{**preset_training(name), **overrides})

    def replace(self, **changes: Any) -> TrainSettings:
        """Return a copy with some fields changed.

        Examples
        --------
        >>> TrainSettings().replace(lr=1e-4).lr
        0.0001

        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (stored in the model's training history).

        Examples
        --------
        >>> TrainSettings().to_dict()["batch_size"]
        32

        """
        return dataclasses.asdict(self)


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(TrainSettings))
_CONFIG_NAMES = frozenset(f.name for f in dataclasses.fields(ComtipConfig))


def resolve_settings(
    preset: str,
    config: ComtipConfig | None,
    settings: TrainSettings | None,
    keywords: dict[str, Any],
) -> tuple[ComtipConfig, TrainSettings, dict[str, Any]]:
    """Split ``fit``'s extra keywords into network overrides, training overrides and Lightning arguments.

    A keyword that names a :class:`TrainSettings` field overrides it, one that names a
    :class:`~comtip_sc.model.ComtipConfig` field overrides the network (``backbone=``, ``tile_px=``,
    ``freeze_backbone=``, ...); everything else is passed to :class:`lightning.pytorch.Trainer`. A
    ``context_scale`` turns on the network's context tile (``ComtipConfig.context_tile``).
    ``None`` values are ignored, so command-line wrappers can pass unset options through.

    Examples
    --------
    >>> cfg, st, rest = resolve_settings("cpu", None, None, {"max_epochs": 2, "tile_px": 64, "fast_dev_run": 1})
    >>> st.max_epochs, cfg.tile_px, rest
    (2, 64, {'fast_dev_run': 1})

    """
    cfg = config if config is not None else ComtipConfig.preset(preset)
    settings = settings if settings is not None else TrainSettings.preset(preset)
    given = {k: v for k, v in keywords.items() if v is not None}
    net = {k: v for k, v in given.items() if k in _CONFIG_NAMES}
    train = {k: v for k, v in given.items() if k in _SETTING_NAMES}
    rest = {k: v for k, v in keywords.items() if k not in _CONFIG_NAMES | _SETTING_NAMES}
    cfg = cfg.replace(**net) if net else cfg
    settings = settings.replace(**train) if train else settings
    if cfg.context_tile != (settings.context_scale is not None):
        if settings.context_scale is None:
            raise ValueError(
                "config.context_tile=True needs context_scale, how much wider than the spot tile the "
                "context tile is: pass e.g. fit(..., context_scale=3)."
            )
        # The network reads the context tile that the data settings ask for.
        cfg = cfg.replace(context_tile=True)
    return cfg, settings, rest
