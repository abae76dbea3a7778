"""``cs.tl.fit``: train a CoMTIP model on one or several SpatialData objects with Lightning."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import DEFAULT_TILE_UM, NORM_TARGET_SUM, TABLE_KEY
from .._logging import progress_callbacks, third_party_quiet
from .._presets import preset_training
from ..model import ComtipConfig, ComtipLightningModule
from ..model._comtip_model import ComtipModel
from ..model._trunk import TRUNK_PRESETS
from ._datamodule import SpotDataModule
from ._fit_data import attach_token_caches, build_bank, cache_device, register, wants_token_cache
from ._fit_data import gene_stats as compute_gene_stats
from ._zero_shot import calibrate_zero_shot

log = logging.getLogger(__name__)


#: ``fit`` warns when the mean embedding of the training spots is longer than this (see ReferenceBank.cone).
CONE_WARN = 0.97


def _default_precision(accelerator: str) -> str:
    if (
        accelerator in ("gpu", "cuda", "auto")
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    ):
        return "bf16-mixed"
    return "32-true"


@third_party_quiet()
def fit(
    sdata: SpatialData | Sequence[SpatialData],
    *,
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 250,
    preset: str = "cpu",
    config: ComtipConfig | None = None,
    backbone: str | None = None,
    pretrained: bool | None = None,
    checkpoint_path: str | None = None,
    tile_um: float = DEFAULT_TILE_UM,
    tile_px: int | None = None,
    freeze_backbone: str | int | None = None,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    spot_diameter_um: float | None = None,
    max_epochs: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    weight_decay: float = 0.05,
    val_sections: Sequence[str] | str | None = "auto",
    early_stopping_patience: int | None = 5,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    num_workers: int = 0,
    seed: int | None = None,
    tile_cache: str | None = None,
    feature_cache: bool | None = None,
    section_balance: float | None = None,
    callbacks: list | None = None,
    logger: Any = None,
    default_root_dir: str | None = None,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> ComtipModel:
    """Train a CoMTIP model (MFM vision branch + Gene-Text Encoder with PAAT, aligned by InfoNCE).

    Parameters
    ----------
    sdata
        One SpatialData or a list of them (e.g. datasets with different gene sets). Each needs a
        table annotating spot circles that share a coordinate system with an H&E image.
    table_key
        Table of each SpatialData.
    layer
        Layer holding normalised (1e4 + log1p) expression; ``None`` normalises the raw counts in ``X``
        on the fly (nothing is written into the table).
    genes
        Gene panel. ``None`` uses ``var["comtip_panel"]`` when present (see
        :func:`comtip_sc.pp.select_genes`) or else the top ``n_top_genes`` genes by mean among genes
        present in every section.
    n_top_genes
        Panel size when it is chosen here.
    preset
        Starting configuration and training recipe (``lr``, ``max_epochs``; see ``docs/model.md``):
        ``"cpu"`` (frozen ImageNet EfficientNet-Lite0 at 128 px + a small token transformer, lr 1e-3),
        ``"gpu"`` or ``"paper"`` (CLIP ViT-B/32 at 224 px, fine-tuned; CLIP weights from ``checkpoint_path``;
        lr 1e-4), ``"pathology"`` (frozen UNI from ``checkpoint_path`` + a token transformer, lr 1e-3) or
        ``"vit-tiny"`` (ViT-Ti/16 at 112 px from scratch, lr 1e-3).
    config
        A full :class:`~comtip_sc.model.ComtipConfig`; overrides ``preset``'s network (``lr`` and
        ``max_epochs`` still default to ``preset``'s). Its ``colour_norm="section"``
        standardises each section's tile colour, in training and in every later prediction (for
        sections scanned with different brightness or stain; see the data-layout docs).
    backbone, pretrained, checkpoint_path, tile_px, freeze_backbone
        Override the corresponding config fields (any timm model or named trunk; local weights only;
        ``freeze_backbone`` is ``"none"``, ``"all"`` or the number of last blocks/stages that train).
    backbone_lr_mult, layer_decay
        Learning-rate multiplier of the trunk, and layer-wise decay of it (timm's
        ``param_groups_layer_decay``; ``None``: off). See :class:`~comtip_sc.model.ComtipLightningModule`.
    tile_um
        Physical tile side in µm.
    spot_diameter_um
        Spot diameter in µm, for tables that do not record it in ``uns["comtip"]["spot_diameter_um"]``
        (e.g. ``spatialdata_io.visium`` output: 55). It fixes the µm scale of each section.
    max_epochs, batch_size, lr, weight_decay
        Optimisation settings; ``max_epochs`` and ``lr`` default to the preset's (``None``). ``1e-4`` suits
        fine-tuning a pretrained trunk; a trunk trained from scratch on a few hundred spots needs more: on
        her2st/MOB with 12 epochs, ``1e-4`` left the PAAT discriminator and the zero-shot read-out at chance,
        ``1e-3`` trained them (``docs/benchmarks.md``), and a frozen trunk's token transformer trains at
        ``1e-3``.
    val_sections
        Shapes elements held out for validation and early stopping. ``"auto"`` holds out the last
        section when there are several and none when there is one; ``None`` disables validation.
    early_stopping_patience
        Epochs without improvement of the validation loss before stopping (``None``: no early stopping).
    accelerator, devices, strategy, num_nodes, precision
        Passed to :class:`lightning.pytorch.Trainer`. ``precision=None`` picks ``"bf16-mixed"`` on GPUs
        that support it and ``"32-true"`` elsewhere. With several devices, InfoNCE negatives are gathered
        across processes with gradients.
    num_workers
        Data-loader workers that cut the tiles.
    seed
        Seed everything (weights, masks, batches, augmentations) for a reproducible run.
    tile_cache
        Folder for a zarr tile cache (cut once, reused by later epochs and runs).
    feature_cache
        Train on cached trunk tokens (:func:`~comtip_sc.pp.cache_trunk_tokens`): a frozen trunk's tokens
        of every tile in its 8 dihedral views, computed once, so that epochs run only the trainable token
        transformer. ``None`` (default) caches whenever the trunk is frozen under a token transformer (the
        ``cpu`` and ``pathology`` presets). With ``config.stain_jitter`` / ``colour_jitter`` the cache holds
        jittered views instead (views 1-7, one stain/colour draw each, seeded by 0). The cache goes beside
        the tile cache when ``tile_cache`` is given (and is reused by later runs with the same trunk,
        weights, tiles and spots), else into a temporary folder removed when fit returns.
    section_balance
        How training batches draw from sections of different size. ``None`` (default): plain shuffling, so
        a section's share is its share of the spots. A number ``alpha`` in [0, 1]: each draw picks a
        training section with probability ∝ ``n_spots ** alpha`` (weights ``n_section ** (alpha - 1)`` per
        spot in a :class:`torch.utils.data.WeightedRandomSampler`, with replacement): ``1`` is proportional
        to size like plain shuffling, ``0.5`` damps large sections, ``0`` draws every section equally.
        Sections are the shapes elements of every dataset (``dataset<i>:<region>`` with several datasets).
    callbacks, logger, default_root_dir, ckpt_path, **trainer_kwargs
        Lightning settings; ``ckpt_path`` resumes training from a Lightning checkpoint. By default
        ``last.ckpt`` is written every epoch (and the best one by validation loss when there are
        validation sections, whose weights are then returned); ``enable_checkpointing=False`` writes
        none and returns the last epoch's weights.

    Returns
    -------
    The trained :class:`~comtip_sc.model.ComtipModel`, with a retrieval reference bank of the training
    spots.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30)
    >>> model = cs.tl.fit(sdata, max_epochs=1, batch_size=16, enable_progress_bar=False)  # doctest: +SKIP

    """
    if isinstance(sdata, AnnData):
        raise TypeError("fit needs SpatialData objects (images, spot shapes, table), got an AnnData.")
    datasets = [sdata] if isinstance(sdata, SpatialData) else list(sdata)
    not_sd = [type(d).__name__ for d in datasets if not isinstance(d, SpatialData)]
    if not_sd:
        raise TypeError(f"fit needs SpatialData objects (images, spot shapes, table), got {not_sd}.")
    if not datasets:
        raise ValueError("fit needs at least one SpatialData.")
    if seed is not None:
        L.seed_everything(seed, workers=True)
    recipe = preset_training(preset)
    lr = recipe["lr"] if lr is None else lr
    max_epochs = recipe["max_epochs"] if max_epochs is None else max_epochs
    cfg = config if config is not None else ComtipConfig.preset(preset)
    overrides = {
        k: v
        for k, v in dict(
            backbone=backbone,
            pretrained=pretrained,
            checkpoint_path=checkpoint_path,
            tile_px=tile_px,
            freeze_backbone=freeze_backbone,
        ).items()
        if v is not None
    }
    cfg = cfg.replace(**overrides) if overrides else cfg
    if (
        preset == "pathology"
        and cfg.pretrained
        and cfg.checkpoint_path is None
        and cfg.backbone in TRUNK_PRESETS
    ):
        raise ValueError(
            f"preset='pathology' runs a frozen foundation model ({cfg.backbone!r}) from local weights: pass "
            "checkpoint_path=<its weights file> (see docs/model.md for the file of each named trunk)."
        )

    vocab: dict[str, int] = {}
    registered = [
        register(
            d,
            idx=i,
            table_key=table_key,
            layer=layer,
            genes=genes,
            n_top_genes=n_top_genes,
            tile_um=tile_um,
            tile_px=cfg.tile_px,
            colour_norm=cfg.colour_norm,
            context_scale=cfg.context_scale,
            tile_cache=tile_cache,
            vocab=vocab,
            spot_diameter_um=spot_diameter_um,
        )
        for i, d in enumerate(datasets)
    ]
    sections = [
        (f"{r.name}:{name}" if len(registered) > 1 else name, ds)
        for r in registered
        for name, ds in r.sections
    ]
    names = [n for n, _ in sections]
    if val_sections == "auto":
        val_idx = [len(sections) - 1] if len(sections) > 1 else []
    elif val_sections is None:
        val_idx = []
    else:
        wanted = [val_sections] if isinstance(val_sections, str) else list(val_sections)
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(f"val_sections {unknown} are not sections of the data; sections: {names}.")
        val_idx = [names.index(w) for w in wanted]
    if len(val_idx) == len(sections):
        raise ValueError("Every section is held out for validation; nothing is left to train on.")
    genes_vocab = list(vocab)
    n_train = sum(len(ds) for i, (_, ds) in enumerate(sections) if i not in val_idx)
    if n_train < 2:
        raise ValueError(f"Only {n_train} training spot(s) outside val_sections; InfoNCE needs at least 2.")
    log.info(
        "Training CoMTIP on %d section(s) (%s), %d training spots, %d genes in the vocabulary; validation: %s.",
        len(sections),
        ", ".join(names),
        n_train,
        len(genes_vocab),
        [names[i] for i in val_idx] or "none",
    )

    module = ComtipLightningModule(
        cfg.to_dict(),
        genes_vocab,
        lr=lr,
        weight_decay=weight_decay,
        backbone_lr_mult=backbone_lr_mult,
        layer_decay=layer_decay,
    )
    gene_stats = compute_gene_stats(registered, vocab)
    module.network.set_gene_max([gene_stats["max"][g] for g in genes_vocab])
    mean, std = module.network.image_mean, module.network.image_std
    scratch = ExitStack()
    if wants_token_cache(feature_cache, module.network.vision):
        folder = tile_cache or scratch.enter_context(tempfile.TemporaryDirectory(prefix="comtip_tokens_"))
        jitter = (cfg.stain_jitter, cfg.colour_jitter)
        attach_token_caches(
            registered, module.network.vision, folder, mean, std, cache_device(accelerator), jitter
        )
    dm = SpotDataModule(
        [ds for _, ds in sections],
        val_sections=val_idx,
        batch_size=batch_size,
        num_workers=num_workers,
        mean=mean,
        std=std,
        stain_jitter=cfg.stain_jitter,
        colour_jitter=cfg.colour_jitter,
        section_balance=section_balance,
    )

    steps_per_epoch = max(1, len(dm.train_dataset) // batch_size)
    trainer_kwargs.setdefault("log_every_n_steps", min(50, steps_per_epoch))
    if not val_idx:
        trainer_kwargs.setdefault("limit_val_batches", 0)
    cbs = list(callbacks or [])
    # last.ckpt (for resuming) every epoch; a "best" copy only when validation defines best. Without it a
    # second full checkpoint per epoch, ranked by the augmented training loss, doubled the writes (~1 s per
    # epoch for a ViT-B/32 with its AdamW state) and was never read. last.ckpt has a callback of its own:
    # Lightning's save_last=True refreshes it only in epochs that also save a top-k checkpoint (never with
    # save_top_k=0, not when the validation loss got worse), so an interrupted run lost its epochs.
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(monitor="val/loss", mode="min", save_top_k=1)
    last = L.pytorch.callbacks.ModelCheckpoint(
        monitor=None, save_top_k=1, filename="last", enable_version_counter=False
    )
    if trainer_kwargs.get("enable_checkpointing", True):
        cbs.extend([checkpoint, last] if val_idx else [last])
    if val_idx and early_stopping_patience is not None:
        cbs.append(
            L.pytorch.callbacks.EarlyStopping(
                monitor="val/loss", mode="min", patience=early_stopping_patience
            )
        )
    # fit logs its own summary; Lightning's parameter table is left to enable_model_summary=True.
    trainer_kwargs.setdefault("enable_model_summary", False)
    cbs = progress_callbacks(cbs, trainer_kwargs.get("enable_progress_bar", True))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision or _default_precision(accelerator),
        callbacks=cbs,
        logger=logger
        if logger is not None
        else L.pytorch.loggers.CSVLogger(default_root_dir or ".", name="comtip_logs"),
        default_root_dir=default_root_dir,
        deterministic=seed is not None and not torch.cuda.is_available(),
        **trainer_kwargs,
    )
    log.info(
        "Lightning trainer: accelerator=%s, devices=%s, precision=%s.",
        type(trainer.accelerator).__name__,
        trainer.num_devices,
        trainer.precision,
    )
    with warnings.catch_warnings():
        # A frozen trunk is kept in eval mode on purpose (BatchNorm statistics stay the pretrained ones).
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    # Under ddp / torchrun / SLURM every process gets here (under ddp_spawn only the launching one):
    # the first process builds the bank, calibrates and returns its model; the others receive that model.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not trainer.is_global_zero:
        scratch.close()
        return trainer.strategy.broadcast(None, src=0)
    if val_idx and checkpoint.best_model_path:
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(best["state_dict"])
    # The bank and the zero-shot calibration are computed where training ran (Lightning hands the module
    # back on the CPU): encoding a bank with a ViT-B/32 on the CPU took longer than training it on a GPU.
    network = module.network.to(trainer.strategy.root_device).eval()

    panel = genes_vocab
    reference = build_bank(network, dm, registered, vocab)
    history = {
        "cone": reference.cone(),
        "sections": names,
        "val_sections": [names[i] for i in val_idx],
        "epochs": int(trainer.current_epoch),
        "global_steps": int(trainer.global_step),
        "processes": int(trainer.world_size),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "best_checkpoint": checkpoint.best_model_path if val_idx else "",
        "lr": lr,
        "backbone_lr_mult": backbone_lr_mult,
        "layer_decay": layer_decay,
        "batch_size": batch_size,
        "section_balance": section_balance,
        "seed": seed,
    }
    model = ComtipModel(
        network,
        panel=panel,
        tile_um=tile_um,
        tile_px=cfg.tile_px,
        normalization={"target_sum": NORM_TARGET_SUM, "log1p": True, "layer": layer},
        reference=reference,
        history=history,
        gene_stats=gene_stats,
    )
    calibrate_zero_shot(model)
    network.cpu()
    scratch.close()
    if max(history["cone"].values()) > CONE_WARN:
        log.warning(
            "The training spots' embeddings point nearly the same way (mean embedding length %s; 1 = all "
            "alike). Retrieval from this model ranks its bank by little more than noise; the head is less "
            "affected. An untrained network starts there, so it can mean too little training; see "
            "docs/benchmarks.md, 'What we learned'.",
            {k: round(v, 3) for k, v in history["cone"].items()},
        )
    log.info("Trained %r.", model)
    return trainer.strategy.broadcast(model, src=0) if distributed else model
