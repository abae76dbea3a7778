"""The named presets: a network configuration and the training recipe that goes with it.

Plain data without heavy imports, so the command line can show each preset's defaults in ``--help``
without loading torch. :meth:`comtip_sc.model.ComtipConfig.preset` builds the network configuration
from here and :func:`comtip_sc.tl.fit` takes its training defaults from here.
"""

from __future__ import annotations

from typing import Any

#: Named starting points: the network's config and the training recipe (``lr``, ``max_epochs``) that goes
#: with it. ``cs.tl.fit`` and ``comtip fit`` take their defaults from here.
_PRESETS: dict[str, dict[str, Any]] = {
    # The dataclass defaults: ImageNet EfficientNet-Lite0 (weights installed with the package), frozen, read
    # as a 4x4 token grid at 128 px (it reduces 32x), with a 2-block token transformer that trains and hosts
    # MFM. One trunk pass per tile is ~0.4 GFLOP, a laptop CPU's budget, and fit caches the trunk's tokens,
    # so an epoch runs only the small transformers. Gene width 64: one training step on cached tokens
    # (batch 32, 250 genes) took 0.22 s against 0.73 s at width 128 on one CPU thread.
    "cpu": {"config": {}, "train": {"lr": 1e-3, "max_epochs": 12}},
    # The paper's setting: CLIP ViT-B/32 at 224 px (7x7 patches), fine-tuned, 256-d shared space. Without
    # checkpoint_path (an OpenAI CLIP / open_clip ViT-B/32 file) it starts from random weights.
    "gpu": {
        "config": {
            "backbone": "clip-vit-b32",
            "pretrained": False,
            "freeze_backbone": "none",
            "token_depth": 0,
            "token_dim": None,
            "tile_px": 224,
            "embed_dim": 256,
            "gene_dim": 256,
        },
        "train": {"lr": 1e-4, "max_epochs": 20},
    },
    # A frozen pathology foundation model (UNI, ViT-L/16; weights from a local file) with a token
    # transformer hosting MFM. backbone="uni2-h", "virchow", "virchow2" or "h-optimus-0" swap the trunk.
    "pathology": {
        "config": {
            "backbone": "uni",
            "pretrained": True,
            "freeze_backbone": "all",
            "token_depth": 2,
            "token_dim": 256,
            "tile_px": 224,
            "embed_dim": 256,
            "gene_dim": 256,
        },
        "train": {"lr": 1e-3, "max_epochs": 20},
    },
    # A ViT-Ti/16 trained from scratch at 112 px (7x7 patches), MFM inside the ViT: a small network that needs
    # no weight file, for comparison with the pretrained trunks and for quick CPU runs (tutorials, benchmarks).
    "vit-tiny": {
        "config": {
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "freeze_backbone": "none",
            "token_depth": 0,
            "token_dim": None,
            "tile_px": 112,
            "embed_dim": 128,
            "gene_dim": 128,
        },
        "train": {"lr": 1e-3, "max_epochs": 20},
    },
}
_PRESET_ALIASES = {"paper": "gpu"}

#: The names ``ComtipConfig.preset`` accepts.
PRESET_NAMES = (*_PRESETS, *_PRESET_ALIASES)
#: ``cs.tl.fit``'s preset that fits several configurations and keeps the one its self-check scores best
#: (:mod:`comtip_sc.tl._auto`); not a network of its own.
AUTO_PRESET = "auto"
#: The presets ``cs.tl.fit`` and ``comtip fit`` accept.
FIT_PRESET_NAMES = (*PRESET_NAMES, AUTO_PRESET)


def _preset(name: str) -> dict[str, Any]:
    key = _PRESET_ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose from {list(PRESET_NAMES)}.")
    return _PRESETS[key]


def preset_training(name: str) -> dict[str, Any]:
    """The training recipe of a preset: ``{"lr": ..., "max_epochs": ...}``.

    Examples
    --------
    >>> preset_training("cpu")["lr"], preset_training("paper") == preset_training("gpu")
    (0.001, True)

    """
    return dict(_preset(name)["train"])
