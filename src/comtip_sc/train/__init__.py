"""What ``cs.tl.fit`` runs: section registration, the data module, the training plan and the runner.

The split follows scvi-tools' ``train`` package: :class:`TrainSettings` groups the optimiser, epochs,
batching and validation settings, :func:`register_all` is the data splitter (whole sections, held out by
patient or individual), :class:`ComtipLightningModule` the training plan and :class:`TrainRunner` the
runner (trainer, callbacks, precision, DDP, best-checkpoint reload and the reference bank).
"""

from .._devices import default_precision, resolve_device
from ._datamodule import SentenceCollate, SpotDataModule, SpotSentences, section_weights
from ._plan import ComtipLightningModule, NonFiniteLossError, lr_factor
from ._registration import TrainingData, held_out_sections, register_all
from ._runner import TrainRunner, build_bank, training_plan
from ._settings import TrainSettings, resolve_settings

__all__ = [
    "ComtipLightningModule",
    "NonFiniteLossError",
    "SentenceCollate",
    "SpotDataModule",
    "SpotSentences",
    "TrainRunner",
    "TrainSettings",
    "TrainingData",
    "build_bank",
    "default_precision",
    "held_out_sections",
    "lr_factor",
    "register_all",
    "resolve_device",
    "resolve_settings",
    "section_weights",
    "training_plan",
]
