"""What ``fit`` does with a trained model before returning it.

Zero-shot calibration, the bank's colour statistics for the hybrid head, and the self-check against the
simple colour bar on the held-out sections.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from spatialdata import SpatialData

from .._tables import get_table
from ..model._comtip_model import ComtipModel
from ..pp._subset import subset_sections
from ..train import TrainingData
from ._hybrid import with_bank_colour
from ._self_check import format_self_check, self_check
from ._zero_shot import calibrate_zero_shot

log = logging.getLogger("comtip_sc.tl._fit")

#: ``fit`` warns when the mean embedding of the training spots is longer than this (see ReferenceBank.cone).
CONE_WARN = 0.97


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


def finish_fit(
    model: ComtipModel,
    *,
    datasets: Sequence[SpatialData],
    data: TrainingData,
    check: bool,
    table_key: str,
    layer: str | None,
    spot_diameter_um: float | None,
    accelerator: str,
) -> None:
    """Calibrate, give the bank its colour statistics, self-check and report, once, on the process that keeps the model."""
    calibrate_zero_shot(model)
    # The hybrid head reads the colour statistics of the bank's spots; computing them here, once, spares
    # every later prediction (and the self-check) from cutting the training tiles again.
    model.reference = with_bank_colour(
        model, datasets, table_key=table_key, spot_diameter_um=spot_diameter_um
    ).reference
    if check:
        check_on_held_out(
            model,
            datasets,
            data,
            table_key=table_key,
            layer=layer,
            spot_diameter_um=spot_diameter_um,
            accelerator=accelerator,
        )
    cone = model.history["cone"]
    if max(cone.values()) > CONE_WARN:
        log.warning(
            "The training spots' embeddings point nearly the same way (mean embedding length %s; 1 = all "
            "alike). Retrieval from this model ranks its bank by little more than noise; the head is less "
            "affected. An untrained network starts there, so it can mean too little training; see the "
            "benchmarks page of the documentation.",
            {k: round(v, 3) for k, v in cone.items()},
        )
    log.info("Trained %r.", model)
