"""``cs.tl.fit(preset="auto")``: fit a few configurations and keep the one the self-check scores best.

The best configuration differs by dataset and even by patient, so ``preset="auto"`` fits every candidate of
:data:`AUTO_CANDIDATES` on the same training sections, held-out sections and seed, scores each by its
self-check (the best read-out's PCC-ALL on the held-out sections, :func:`~comtip_sc.tl.self_check`) and
returns the best model, with every candidate's scores in ``model.history["auto"]``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pandas as pd
from spatialdata import SpatialData

from .._constants import BAR_ROW
from .._sections import resolve_sections
from ..model._comtip_model import ComtipModel
from ..train import NonFiniteLossError, resolve_settings

log = logging.getLogger("comtip_sc.tl._fit")

#: ``preset="auto"``'s candidates, ``(name, preset, overrides)``, cheapest first (a tie goes to the earlier).
#: Each is there because it won somewhere in the benchmarks (docs/benchmarks.md) and lost elsewhere.
AUTO_CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    # The default: frozen ImageNet EfficientNet-Lite0 at 128 px under a token transformer.
    ("cpu", "cpu", {}),
    # Per-section colour standardisation: the mouse bulb's individuals were scanned at very different
    # brightness and its benchmark needs it; on her2st it lowered the scores.
    ("cpu, colour_norm=section", "cpu", {"colour_norm": "section"}),
    # A 3x context tile: the lever on the mouse bulb (head +0.048 over the plain model); on her2st's folds
    # it hurt (0.063 against 0.084).
    ("cpu, context_scale=3", "cpu", {"context_scale": 3}),
    # Stain and colour jitter, for a patient scanned in another laboratory: -0.002 / +0.004 on average
    # (her2st / MOB), a candidate rather than a default.
    ("cpu, stain/colour jitter", "cpu", {"stain_jitter": 0.05, "colour_jitter": 0.1}),
    # A ViT-Ti/16 trained from scratch at 64 px: beat the frozen ImageNet trunk on her2st C->A (head 0.091
    # against 0.059), where ImageNet features did not transfer across patients.
    ("vit-tiny, 64 px", "vit-tiny", {"tile_px": 64}),
)


def candidate_score(table: pd.DataFrame | None) -> float:
    """The self-check score of one candidate: the best read-out's held-out PCC-ALL (NaN without a check)."""
    if table is None:
        return math.nan
    readouts = table[~table.index.str.startswith(BAR_ROW)]["pcc_all"]
    return float(readouts.max()) if len(readouts) else math.nan


def _require_held_out(
    datasets: Sequence[SpatialData], val_sections: Any, table_key: str, spot_diameter_um: float | None
) -> None:
    if val_sections is None:
        raise ValueError(
            "preset='auto' chooses among its candidates on held-out sections; val_sections=None holds none "
            "out. Pass val_sections='auto' or the names of the sections to hold out."
        )
    if val_sections == "auto":
        n = sum(
            len(resolve_sections(d, table_key=table_key, spot_diameter_um=spot_diameter_um)) for d in datasets
        )
        if n < 2:
            raise ValueError(
                f"preset='auto' chooses among its candidates on held-out sections, but the data has {n} "
                "section; pass data with at least two sections (or val_sections naming the ones to hold "
                "out), or a named preset such as preset='cpu'."
            )


def _summary_row(name: str, model: ComtipModel | None, error: str | None = None) -> dict[str, Any]:
    """One candidate's scores: every read-out's and the bar's PCC-ALL, and the score auto ranks by."""
    table = None if model is None else model.validation_
    row: dict[str, Any] = {"candidate": name}
    if table is not None:
        for readout, value in table["pcc_all"].items():
            key = BAR_ROW if str(readout).startswith(BAR_ROW) else str(readout)
            row[key] = float(value)
        row["bar_variant"] = model.history["validation"].get("bar_variant")
    row["score"] = candidate_score(table)
    if error is not None:
        row["error"] = error
    return row


def format_auto(table: pd.DataFrame) -> str:
    """The candidates' table of ``preset="auto"`` as aligned text for the log."""
    cols = [c for c in table.columns if c != "bar_variant"]
    text = table[cols].to_string(index=False, na_rep="", float_format=lambda v: f"{v:.3f}")
    return "preset='auto', PCC-ALL on the held-out sections:\n" + text


def fit_auto(
    fit: Callable[..., ComtipModel],
    datasets: list[SpatialData],
    arguments: dict[str, Any],
    candidates: Sequence[tuple[str, str, dict[str, Any]]] | None = None,
) -> ComtipModel:
    """Fit every candidate with ``fit``'s ``arguments`` and return the one whose self-check scores best.

    ``arguments`` are ``fit``'s own (``preset`` and ``sdata`` aside). Keyword settings apply to every
    candidate and take precedence over a candidate's own; candidates they make identical are fitted once.
    """
    args = {k: v for k, v in arguments.items() if k not in ("sdata", "preset")}
    kwargs = {k: v for k, v in args.pop("kwargs").items() if v is not None}
    if args.pop("config") is not None:
        raise ValueError(
            "preset='auto' chooses the network among its candidates and cannot take config=; pass network "
            "settings as keywords (e.g. tile_px=96), which apply to every candidate, or a named preset."
        )
    if not args["check"] or args["ckpt_path"] is not None:
        raise ValueError("preset='auto' chooses by the self-check: it needs check=True and no ckpt_path.")
    _require_held_out(datasets, args["val_sections"], args["table_key"], args["spot_diameter_um"])
    candidates = AUTO_CANDIDATES if candidates is None else candidates
    root_dir = kwargs.pop("default_root_dir", None)
    best, best_score, rows, seen, fitted = None, -math.inf, [], [], []
    with ExitStack() as scratch:
        # One tile cache for every candidate: tiles are cut once per tile size and colour handling.
        cache = args["tile_cache"] or scratch.enter_context(
            tempfile.TemporaryDirectory(prefix="comtip_auto_")
        )
        for i, (name, preset, overrides) in enumerate(candidates):
            merged = {**overrides, **kwargs}
            cfg, settings, _ = resolve_settings(preset, None, args["settings"], merged)
            key = (cfg.to_dict(), settings.to_dict())
            if key in seen:
                same = fitted[seen.index(key)]
                log.info("preset='auto': candidate %r is the same as %r here; not fitted again.", name, same)
                rows.append({"candidate": name, "score": math.nan, "same_as": same})
                continue
            seen.append(key)
            fitted.append(name)
            log.info("preset='auto': candidate %d/%d, %s.", i + 1, len(candidates), name)
            run = {**args, **merged, "preset": preset}
            run["tile_cache"] = os.path.join(cache, f"{cfg.tile_px}px_{settings.colour_norm or 'scanned'}")
            if root_dir is not None:
                run["default_root_dir"] = os.path.join(root_dir, f"candidate{i}")
            try:
                model = fit(datasets, **run)
            except NonFiniteLossError as err:
                log.warning("preset='auto': candidate %r failed (%s); skipped.", name, err)
                rows.append(_summary_row(name, None, str(err)))
                continue
            # Every later candidate holds out exactly the sections the first one did.
            args["val_sections"] = model.history["val_sections"]
            rows.append(_summary_row(name, model))
            score = rows[-1]["score"] if math.isfinite(rows[-1]["score"]) else -math.inf
            if best is None or score > best_score:  # a tie keeps the earlier, cheaper candidate
                best, best_score, chosen = model, score, name
    if best is None:
        raise ValueError("preset='auto': no candidate could be trained (see the warnings above).")
    table = pd.DataFrame(rows)
    if not math.isfinite(best_score):
        log.warning("preset='auto': no candidate could be scored on the held-out sections; kept %r.", chosen)
    best.history["auto"] = {
        "chosen": chosen,
        "candidates": [{"name": n, "preset": p, "overrides": dict(o)} for n, p, o in candidates],
        "table": table.astype(object).where(table.notna(), None).to_dict(orient="list"),
    }
    log.info("%s\nKept %r (best read-out PCC-ALL %.3f).", format_auto(table), chosen, best_score)
    return best
