"""What the ``comtip`` commands do, once :mod:`comtip_sc.cli` has parsed and checked the command line.

Only options given on the command line are passed on; the others keep the Python API's defaults.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ._cli_io import load_data, write_result
from ._presets import AUTO_PRESET


def given(args: argparse.Namespace, **names: str) -> dict[str, Any]:
    """``{api_name: value}`` for the options (``api_name=option_dest``) the user gave.

    Examples
    --------
    >>> given(argparse.Namespace(batch_size=None, k=5), batch_size="batch_size", k="k")
    {'k': 5}

    """
    return {api: getattr(args, dest) for api, dest in names.items() if getattr(args, dest) is not None}


def common(args: argparse.Namespace) -> dict[str, Any]:
    """The options every command shares, as API keyword arguments."""
    return given(
        args,
        batch_size="batch_size",
        num_workers="num_workers",
        accelerator="accelerator",
        spot_diameter_um="spot_diameter_um",
    )


def _genes_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if Path(value).is_file():
        return [g.strip() for g in Path(value).read_text().splitlines() if g.strip()]
    return [g.strip() for g in value.split(",") if g.strip()]


def _devices_arg(value: str):
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",")]
    return int(value)


def _fit(args: argparse.Namespace) -> int:
    import pandas as pd
    from lightning.pytorch.utilities import rank_zero_only

    import comtip_sc as cs
    from comtip_sc.model import ComtipConfig
    from comtip_sc.tl._auto import format_auto

    datasets = [load_data(d) for d in args.data]
    overrides = given(args, backbone_kwargs="backbone_kwargs", text_encoder="text_encoder")
    overrides.update(mfm=not args.no_mfm, paat=not args.no_paat)
    # preset="auto" builds each candidate's network itself: the overrides apply to every candidate.
    auto = args.preset == AUTO_PRESET
    cfg = None if auto else ComtipConfig.preset(args.preset, **overrides)
    kwargs = given(
        args,
        n_top_genes="n_top_genes",
        freeze_backbone="freeze_backbone",
        backbone_lr_mult="backbone_lr_mult",
        layer_decay="layer_decay",
        backbone="backbone",
        checkpoint_path="checkpoint_path",
        tile_um="tile_um",
        tile_px="tile_px",
        max_epochs="epochs",
        lr="lr",
        strategy="strategy",
        num_nodes="num_nodes",
        precision="precision",
        seed="seed",
        tile_cache="tile_cache",
        section_balance="section_balance",
        smooth_targets="smooth_targets",
        ckpt_path="resume",
        default_root_dir="log_dir",
    )
    if args.colour_norm not in (None, "none"):  # a data setting: fit routes it to TrainSettings
        kwargs["colour_norm"] = args.colour_norm
    if args.devices is not None:
        kwargs["devices"] = _devices_arg(args.devices)
    model = cs.tl.fit(
        datasets[0] if len(datasets) == 1 else datasets,
        table_key=args.table_key,
        genes=_genes_arg(args.genes),
        preset=args.preset,
        config=cfg,
        enable_progress_bar=not args.quiet,
        **(overrides if auto else {}),
        **kwargs,
        **common(args),
    )
    # Under DDP every process returns the same model; the first one alone writes it.
    if rank_zero_only.rank == 0:
        model.save(args.out, overwrite=args.overwrite)
        print(f"Saved {model!r} to {args.out}")
        if model.validation_ is not None:
            print(cs.tl.format_self_check(model.validation_))
        if "auto" in model.history:
            print(format_auto(pd.DataFrame(model.history["auto"]["table"])))
    return 0


def _embed_predict(args: argparse.Namespace) -> int:
    import comtip_sc as cs
    from comtip_sc.model import ComtipModel

    sdata = load_data(args.data)
    model = ComtipModel.load(args.model)
    kw = {"table_key": args.table_key, **common(args)}
    if args.command == "embed":
        cs.tl.comtip_embed(sdata, model, key_added=args.key_added, **kw)
        what = f"obsm[{args.key_added!r}]"
    else:
        if args.layer_added is not None:
            warnings.warn(
                "--layer-added is deprecated and will be removed; use --key-added.",
                FutureWarning,
                stacklevel=1,
            )
            args.key_added = args.layer_added
        kw.pop("num_workers", None)  # prediction reads tiles in the main process
        cs.tl.comtip_predict(
            sdata,
            model,
            method=args.method,
            genes=_genes_arg(args.genes),
            key_added=args.key_added,
            **given(args, k="k", temperature="temperature"),
            **kw,
        )
        what = f"layers[{args.key_added!r}]"
    out = write_result(sdata, args.out, args.table_key)
    print(f"Wrote {what} of {sdata.tables[args.table_key].n_obs} spots to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the parsed and checked command; returns the exit code."""
    if args.command == "fit":
        return _fit(args)
    if args.command in ("embed", "predict"):
        return _embed_predict(args)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)  # pragma: no cover - the parser allows nothing else
