"""Run a training plan with Lightning and turn the result into a :class:`~comtip_sc.model.ComtipModel`.

The runner owns everything between "the data are registered" and "a model with its bank exists": the
data module (and the trunk-token cache it reads), the trainer (callbacks, logger, precision, devices),
the reload of the best checkpoint, the reference bank, and, under DDP, handing rank 0's model to every
process.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch

from .._constants import NORM_TARGET_SUM
from .._devices import default_precision, resolve_device
from .._heap import keep_freed_memory
from .._logging import progress_callbacks
from ..model._comtip_model import ComtipModel, ReferenceBank
from ..model._config import ComtipConfig
from ..model._inference import encode_pairs
from ..model._weights import read_weights
from ._datamodule import SpotDataModule, subset
from ._plan import ComtipLightningModule
from ._registration import TrainingData, attach_token_caches, wants_token_cache
from ._settings import TrainSettings

log = logging.getLogger(__name__)


def build_bank(
    network: torch.nn.Module,
    dm: SpotDataModule,
    data: TrainingData,
    *,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[Any], list[Any]] | None = None,
) -> ReferenceBank | None:
    """The retrieval bank of a trained network: every spot given to fit, held-out sections included.

    Image-independent sentence embeddings, image embeddings and expression (sparse over the vocabulary;
    each dataset is one measurement pattern, its panel) of every spot: they are the user's data, and
    retrieval is from all of it.

    With ``world_size > 1`` (DDP) every process encodes its share of each section (contiguous slices,
    process ``rank`` the ``rank``-th) and ``gather`` (every process's object, in rank order, on the first
    process) brings the shares together; the first process returns the bank, the others ``None``.
    """
    shares = []
    for r in data.registered:
        for _, ds in r.sections:
            mine = np.array_split(np.arange(len(ds)), world_size)[rank]
            shares.append(encode_pairs(network, dm.predict_loader(subset(ds, mine))))
    by_rank = gather(shares) if world_size > 1 and gather is not None else [shares]
    if rank != 0:
        return None
    # Section by section, the ranks' slices in rank order: the order of one process encoding everything.
    sentences = [np.concatenate([part[k][0] for part in by_rank]) for k in range(len(shares))]
    images = [np.concatenate([part[k][1] for part in by_rank]) for k in range(len(shares))]
    panel = list(data.vocab)
    expression, obs_names, bank_sections, centres, pattern = [], [], [], [], []
    patterns = np.zeros((len(data.registered), len(panel)), bool)
    for ri, r in enumerate(data.registered):
        cols = np.array([data.vocab[g] for g in r.panel])
        patterns[ri, cols] = True
        for region, ds in r.sections:
            block = sp.csr_matrix(r.values[ds.indices], dtype=np.float32)
            block = sp.csr_matrix((block.data, cols[block.indices], block.indptr), (len(ds), len(panel)))
            expression.append(block)
            pattern.append(np.full(len(ds), ri))
            obs_names.extend(r.obs_names[ds.indices].tolist())
            bank_sections.extend([f"{r.name}/{region}"] * len(ds))
            centres.append(r.centres[ds.indices])
    return ReferenceBank(
        np.concatenate(sentences),
        sp.vstack(expression, format="csr"),
        panel,
        obs_names,
        np.concatenate(images),
        bank_sections,
        np.concatenate(centres),
        observed=(patterns, np.concatenate(pattern)),
    )


def _gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (on every process: ``all_gather_object`` runs on NCCL and gloo)."""
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device now; 0 elsewhere (the host's memory is budgeted on its own)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.mem_get_info(device)[0])


def _available_memory() -> int:
    """Bytes of memory available to this process now (0 where the system does not say)."""
    try:  # Linux: MemAvailable counts reclaimable page cache, which free pages alone do not
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def training_plan(config: ComtipConfig, data: TrainingData, settings: TrainSettings) -> ComtipLightningModule:
    """The Lightning training plan of ``config`` over the registered vocabulary, with ``settings``' optimiser."""
    plan = ComtipLightningModule(
        config.to_dict(),
        list(data.vocab),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        backbone_lr_mult=settings.backbone_lr_mult,
        layer_decay=settings.layer_decay,
    )
    plan.network.set_gene_max([data.stats["max"][g] for g in data.vocab])
    return plan


class TrainRunner:
    """Train a :class:`~comtip_sc.train.ComtipLightningModule` on registered data and assemble the model.

    Parameters
    ----------
    plan
        The training plan (network + optimiser).
    data
        Registered sections and the held-out ones (:func:`~comtip_sc.train.register_all`).
    settings
        Optimiser, epochs, batching and validation settings.
    tile_um, layer
        Recorded in the model: the physical tile side and the expression layer it was trained on.
    accelerator, devices, precision, seed, ckpt_path
        Lightning settings (``precision=None``: :func:`~comtip_sc.train.default_precision`).
    tile_cache
        Folder for reusable tile and token caches (``None``: a temporary folder).
    trainer_kwargs
        Further :class:`lightning.pytorch.Trainer` arguments (``callbacks``, ``logger``, ``strategy``,
        ``num_nodes``, ``default_root_dir``, ``enable_checkpointing``, ...). Without ``default_root_dir``
        logs and checkpoints go to a temporary folder that is removed when :meth:`run` returns or fails.

    """

    def __init__(
        self,
        plan: ComtipLightningModule,
        data: TrainingData,
        settings: TrainSettings,
        *,
        tile_um: float,
        layer: str | None,
        accelerator: str = "auto",
        devices: Any = "auto",
        precision: str | None = None,
        seed: int | None = None,
        ckpt_path: str | None = None,
        tile_cache: str | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.plan, self.data, self.settings = plan, data, settings
        self.tile_um, self.layer = tile_um, layer
        self.accelerator, self.devices, self.seed, self.ckpt_path = accelerator, devices, seed, ckpt_path
        self.precision = precision or default_precision(accelerator)
        self.tile_cache = tile_cache
        self.trainer_kwargs = dict(trainer_kwargs or {})

    def datamodule(self, scratch: ExitStack) -> SpotDataModule:
        """The data module; attaches trunk-token caches first when the trunk is frozen."""
        network, st = self.plan.network, self.settings
        mean, std = network.image_mean, network.image_std
        if wants_token_cache(st.feature_cache, network.vision):
            folder = self.tile_cache or scratch.enter_context(
                tempfile.TemporaryDirectory(prefix="comtip_tokens_")
            )
            device = resolve_device(self.accelerator, per_process=True)
            jitter = (st.stain_jitter, st.colour_jitter)
            # Without loader workers the one process holds the caches; with workers each would hold a copy.
            budget = _available_memory() // 2 if st.num_workers == 0 else 0
            on_device = _free_device_memory(device) // 2 if st.num_workers == 0 else 0
            attach_token_caches(
                self.data.registered,
                network.vision,
                folder,
                mean,
                std,
                device,
                jitter,
                memory_budget=budget,
                device_budget=on_device,
            )
        return SpotDataModule(
            self.data.sections,
            val_sections=self.data.held_out,
            batch_size=st.batch_size,
            num_workers=st.num_workers,
            mean=mean,
            std=std,
            stain_jitter=st.stain_jitter,
            colour_jitter=st.colour_jitter,
            section_balance=st.section_balance,
        )

    def _trainer(self, root: str, n_train: int) -> tuple[L.Trainer, Any]:
        kw, st, validate = dict(self.trainer_kwargs), self.settings, bool(self.data.held_out)
        kw.setdefault("log_every_n_steps", min(50, max(1, n_train // st.batch_size)))
        if not validate:
            kw.setdefault("limit_val_batches", 0)
        cbs = list(kw.pop("callbacks", None) or [])
        # last.ckpt (for resuming) every epoch; a "best" copy only when validation defines best. Lightning's
        # save_last=True refreshes last.ckpt only in epochs that also save a top-k checkpoint, so it has a
        # callback of its own.
        best = L.pytorch.callbacks.ModelCheckpoint(monitor="val/loss", mode="min", save_top_k=1)
        last = L.pytorch.callbacks.ModelCheckpoint(
            monitor=None, save_top_k=1, filename="last", enable_version_counter=False
        )
        if kw.get("enable_checkpointing", True):
            cbs.extend([best, last] if validate else [last])
        if validate and st.early_stopping_patience is not None:
            cbs.append(
                L.pytorch.callbacks.EarlyStopping(
                    monitor="val/loss", mode="min", patience=st.early_stopping_patience
                )
            )
        # fit logs its own summary; Lightning's parameter table is left to enable_model_summary=True.
        kw.setdefault("enable_model_summary", False)
        # On a GPU a redraw every step would make the host wait for the device every step.
        refresh = 10 if resolve_device(self.accelerator).type == "cuda" else 1
        cbs = progress_callbacks(cbs, kw.get("enable_progress_bar", True), refresh)
        logger = kw.pop("logger", None)
        trainer = L.Trainer(
            max_epochs=st.max_epochs,
            accelerator=self.accelerator,
            devices=self.devices,
            precision=self.precision,
            callbacks=cbs,
            logger=logger if logger is not None else L.pytorch.loggers.CSVLogger(root, name="comtip_logs"),
            default_root_dir=root,
            deterministic=self.seed is not None and resolve_device(self.accelerator).type == "cpu",
            **kw,
        )
        return trainer, best

    def run(self, finish: Callable[[ComtipModel], None] | None = None) -> ComtipModel:
        """Train, reload the best weights, build the bank and return the model on every process.

        ``finish`` runs once, on the first process, on the assembled model before it is handed to the
        others (``fit`` calibrates the zero-shot read-out and scores the held-out sections there).
        """
        with ExitStack() as scratch:
            # On the CPU every step's activations reuse the memory the step before freed (no page faults).
            scratch.enter_context(keep_freed_memory(resolve_device(self.accelerator)))
            root = self.trainer_kwargs.pop("default_root_dir", None)
            keep = root is not None
            root = root or scratch.enter_context(tempfile.TemporaryDirectory(prefix="comtip_fit_"))
            dm = self.datamodule(scratch)
            trainer, best = self._trainer(root, len(dm.train_dataset))
            log.debug(
                "Lightning trainer: %s, %s device(s), precision %s.",
                trainer.accelerator,
                trainer.num_devices,
                trainer.precision,
            )
            with warnings.catch_warnings():
                # A frozen trunk is kept in eval mode on purpose (BatchNorm statistics stay the pretrained ones).
                warnings.filterwarnings(
                    "ignore", message=r".*module\(s\) in eval mode at the start of training"
                )
                trainer.fit(self.plan, datamodule=dm, ckpt_path=self.ckpt_path)
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            state = None
            if self.data.held_out and best.best_model_path and trainer.is_global_zero:
                state = read_weights(best.best_model_path, key="state_dict")
            # Every process encodes a share of the bank, so every process needs the best weights.
            state = trainer.strategy.broadcast(state, src=0)
            if state is not None:
                self.plan.load_state_dict(state)
            # The bank is encoded where training ran (Lightning hands the module back on the CPU): encoding
            # a bank with a ViT-B/32 on the CPU took longer than training it on a GPU.
            network = self.plan.network.to(trainer.strategy.root_device).eval()
            bank = build_bank(
                network,
                dm,
                self.data,
                rank=trainer.global_rank if distributed else 0,
                world_size=trainer.world_size if distributed else 1,
                gather=_gather_objects,
            )
            if distributed and not trainer.is_global_zero:
                return trainer.strategy.broadcast(None, src=0)
            model = self._assemble(trainer, network, bank, best.best_model_path if keep else "")
            if finish is not None:
                finish(model)
            model.network.cpu()
            return trainer.strategy.broadcast(model, src=0) if distributed else model

    def _assemble(
        self, trainer: L.Trainer, network: torch.nn.Module, reference: ReferenceBank, best_path: str
    ) -> ComtipModel:
        data = self.data
        history = {
            "sections": data.names,
            "val_sections": [data.names[i] for i in data.held_out],
            "epochs": int(trainer.current_epoch),
            "global_steps": int(trainer.global_step),
            "processes": int(trainer.world_size),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "best_checkpoint": best_path,
            "settings": self.settings.to_dict(),
            "seed": self.seed,
        }
        # Older readers look these up at the top level of the history.
        history.update(
            {
                k: history["settings"][k]
                for k in ("lr", "backbone_lr_mult", "layer_decay", "batch_size", "section_balance")
            }
        )
        history["cone"] = reference.cone()
        return ComtipModel(
            network,
            panel=list(data.vocab),
            tile_um=self.tile_um,
            tile_px=network.config.tile_px,
            colour_norm=self.settings.colour_norm,
            context_scale=self.settings.context_scale,
            normalization={"target_sum": NORM_TARGET_SUM, "log1p": True, "layer": self.layer},
            reference=reference,
            history=history,
            gene_stats=data.stats,
        )
