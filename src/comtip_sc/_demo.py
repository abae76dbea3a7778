"""``comtip demo``: the package's main job end to end, printing what it did and where results went."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ._cli_commands import common
from ._cli_io import load_data, write_result
from ._constants import CLUSTER_KEY, DEFAULT_TILE_UM, EMBED_KEY, PRED_KEY, SAMPLE_KEY


def _split(sdata, table_key: str):
    """Train on every section but the last, test on the last (by the table's ``sample`` column)."""
    import comtip_sc as cs

    samples = sdata.tables[table_key].obs[SAMPLE_KEY].astype(str).to_numpy()
    if len(set(samples)) < 2:
        return None
    held_out = list(dict.fromkeys(samples))[-1]
    return (
        cs.pp.subset_sections(sdata, samples != held_out, table_key=table_key),
        cs.pp.subset_sections(sdata, samples == held_out, table_key=table_key),
        held_out,
    )


def run_demo(args: argparse.Namespace) -> int:
    """Fit → comtip_embed → comtip_predict (retrieval and zero-shot) → evaluate → a figure, on unseen spots."""
    import comtip_sc as cs

    out = Path(args.out)  # an existing one was refused without --overwrite; with it, files are replaced
    out.mkdir(parents=True, exist_ok=True)
    if args.data == "toy":
        train = cs.datasets.toy_tissue(n_rows=16, n_cols=16, seed=args.seed)
        test = cs.datasets.toy_tissue(n_rows=10, n_cols=10, seed=args.seed + 1, sample_id="toy_test")
        print(
            f"Data: synthetic toy tissue, {train.tables['table'].n_obs} training spots (seed {args.seed}), "
            f"{test.tables['table'].n_obs} test spots on a second, unseen section (seed {args.seed + 1})."
        )
        tile_um = 100.0
    else:
        sdata = load_data(args.data)
        split = _split(sdata, args.table_key)
        if split is None:
            raise ValueError(
                f"{args.data} has one section; the demo needs two (train on one, predict the other)."
            )
        train, test, held_out = split
        print(
            f"Data: {args.data}: training on {train.tables[args.table_key].n_obs} spots, "
            f"predicting the held-out section {held_out} ({test.tables[args.table_key].n_obs} spots)."
        )
        tile_um = DEFAULT_TILE_UM
    shared = common(args)
    model = cs.tl.fit(
        train,
        table_key=args.table_key,
        preset="cpu",
        tile_um=tile_um,
        max_epochs=args.epochs,
        seed=args.seed,
        default_root_dir=str(out),
        val_sections=None,
        enable_progress_bar=not args.quiet,
        **shared,
    )
    model_dir = out / "model"
    model.save(model_dir, overwrite=True)
    print(f"Trained {model!r}\n  -> saved to {model_dir}")
    cs.tl.comtip_embed(test, model, table_key=args.table_key, **shared)
    cs.tl.embedding_clusters(test, table_key=args.table_key)
    print(
        f"Embedded {test.tables[args.table_key].n_obs} unseen spots -> table.obsm[{EMBED_KEY!r}], "
        f"clusters -> table.obs[{CLUSTER_KEY!r}]"
    )
    shared.pop("num_workers", None)  # prediction reads tiles in the main process
    for method in ("retrieval", "zero_shot"):
        key = f"{PRED_KEY}_{method}"
        cs.tl.comtip_predict(
            test, model, method=method, table_key=args.table_key, key_added=key, use_rep=EMBED_KEY, **shared
        )
        scores = cs.tl.evaluate(test, pred_key=key, table_key=args.table_key, key_added=f"pcc_{method}")
        row = scores.loc["all"]
        print(
            f"Predicted {int(row.n_genes)} genes ({method}) -> table.layers[{key!r}]: "
            f"PCC-ALL {row['PCC-ALL']:.3f}, PCC-HEG {row['PCC-HEG']:.3f}, MSE {row['MSE']:.3f}"
        )
    result = write_result(test, str(out / "predictions.h5ad"), args.table_key)
    print(f"Results (table with embeddings, predictions, per-gene PCC in var) -> {result}")
    if len(pd.unique(test.tables[args.table_key].obs[SAMPLE_KEY])) == 1:
        from ._demo_figure import demo_figure, most_variable

        key = f"{PRED_KEY}_retrieval"
        genes = most_variable(test, key, args.table_key)
        figure = demo_figure(test, out / "demo.png", genes=genes, pred_key=key, table_key=args.table_key)
        print(f"Figure (observed vs predicted {', '.join(genes)}; clusters on the tissue) -> {figure}")
    return 0
