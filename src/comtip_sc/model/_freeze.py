"""Freezing part of a timm trunk, by timm's own grouping of its parameters into stem and blocks/stages."""

from __future__ import annotations

from typing import Any

from timm.models import group_parameters
from torch import nn

FreezeSpec = str | int  # "none" | "all" | k (all but the last k blocks / stages)


def check_freeze(spec: Any) -> str | int:
    """Validate a ``freeze_backbone`` value; return it as ``"none"``, ``"all"`` or a positive ``int``.

    Examples
    --------
    >>> check_freeze("2"), check_freeze("all")
    (2, 'all')

    """
    if spec in ("none", "all"):
        return spec
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 1:
        return spec
    raise ValueError(
        f"freeze_backbone must be 'none', 'all' or a positive int (trainable last blocks), got {spec!r}."
    )


def trunk_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of a timm trunk grouped as timm groups them (``group_matcher(coarse=True)``).

    The first group is the stem (patch/position embedding, or the first convolutions); each further group
    is one transformer block or one CNN stage. A trailing group holding only 1-d tensors (a final norm,
    e.g. DenseNet's ``norm5``) joins the block before it, so that "the last block" is a real block.

    Examples
    --------
    >>> import timm
    >>> groups = trunk_groups(timm.create_model("resnet10t", num_classes=0))
    >>> len(groups), groups[1][0]
    (5, 'layer1.0.conv1.weight')

    """
    if not hasattr(model, "group_matcher"):
        raise TypeError(f"{type(model).__name__} has no timm group_matcher: freeze it with 'all' or 'none'.")
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    groups = [list(grouped[k]) for k in sorted(grouped)]
    params = dict(model.named_parameters())
    while len(groups) > 2 and all(params[n].ndim <= 1 for n in groups[-1]):
        tail = groups.pop()
        groups[-1].extend(tail)
    return groups


def freeze_trunk(model: nn.Module, spec: FreezeSpec) -> list[str]:
    """Set ``requires_grad=False`` on the frozen part of ``model``; return the names of the frozen modules.

    Parameters
    ----------
    model
        A timm trunk, changed in place.
    spec
        ``"none"``, ``"all"`` or ``k``: everything but the last ``k`` blocks (ViT) or stages (CNN) of
        :func:`trunk_groups` (the stem is always frozen then; ``k`` at least the number of blocks
        freezes only the stem).

    Returns
    -------
    The outermost modules all of whose parameters are frozen; keep them in eval mode (BatchNorm statistics,
    dropout) while the rest trains.

    Examples
    --------
    >>> import timm
    >>> m = timm.create_model("resnet10t", num_classes=0)
    >>> freeze_trunk(m, 1)[:2]
    ['conv1', 'bn1']
    >>> m.layer4[0].conv1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
    (True, False)

    """
    spec = check_freeze(spec)
    if spec == "none":
        return []
    if spec == "all":
        frozen = {n for n, _ in model.named_parameters()}
    else:
        groups = trunk_groups(model)
        frozen = {n for g in groups[: max(1, len(groups) - spec)] for n in g}
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen_modules(model)


def frozen_modules(model: nn.Module) -> list[str]:
    """Names of the outermost submodules of ``model`` that have parameters, none of them trainable.

    ``[""]`` (the model itself) when nothing in ``model`` trains.
    """
    if not any(p.requires_grad for p in model.parameters()):
        return [""]
    out: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{o}.") for o in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out
