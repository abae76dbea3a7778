"""The self-check at the end of ``fit``: the new model against the simple colour bar on its held-out sections."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from spatialdata import SpatialData

from .._tables import get_table
from ..model._comtip_model import ComtipModel
from ..pp._subset import subset_sections
from ..train import TrainingData
from ._self_check import format_self_check, self_check

log = logging.getLogger("comtip_sc.tl._fit")


def split_held_out(
    datasets: Sequence[SpatialData], data: TrainingData, table_key: str
) -> tuple[list[SpatialData], list[SpatialData]]:
    """The training and the held-out sections of ``fit``'s datasets, as new SpatialData objects (tables copied)."""
    train, held = [], []
    k = 0
    for sdata, reg in zip(datasets, data.registered, strict=True):
        mask = np.zeros(get_table(sdata, table_key).n_obs, bool)
        for _, ds in reg.sections:
            mask[ds.indices] = k in data.held_out
            k += 1
        if mask.any():
            held.append(subset_sections(sdata, mask, table_key=table_key))
        if not mask.all():
            train.append(subset_sections(sdata, ~mask, table_key=table_key))
    return train, held


def check_on_held_out(
    model: ComtipModel,
    datasets: Sequence[SpatialData],
    data: TrainingData,
    *,
    table_key: str,
    layer: str | None,
    spot_diameter_um: float | None,
    accelerator: str,
) -> None:
    """Score every read-out and the simple bar on the held-out sections; keep the table in ``model.history``.

    Logs the table (and :func:`~comtip_sc.tl.self_check` warns when no read-out beats the bar). A panel that
    the held-out tables do not share, or data the bar cannot be fitted on, skips the check with a warning
    saying why; training itself is never undone by it.
    """
    if not data.held_out:
        log.info("Self-check skipped: no section is held out (one section, or val_sections=None).")
        return
    train, held = split_held_out(datasets, data, table_key)
    try:
        table = self_check(
            model,
            train,
            held,
            table_key=table_key,
            layer=layer,
            spot_diameter_um=spot_diameter_um,
            accelerator=accelerator,
        )
    except (ValueError, KeyError) as err:
        log.warning("Self-check skipped: %s", err)
        return
    model.history["validation"] = {
        "held_out": [data.names[i] for i in data.held_out],
        "table": table.reset_index().to_dict(orient="list"),
        "bar_variant": table.attrs.get("bar_variant"),
    }
    log.info("%s", format_self_check(table))
