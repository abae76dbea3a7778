"""The quality targets, read from a run's own tables: CoMTIP against the simple bar, and on labelled regions.

Targets (per dataset, means over every fold and seed of the run):

- CoMTIP's best read-out (any CoMTIP row scored on the whole panel) beats the simple bar by ``MARGIN``;
- CoMTIP's best zero-shot row beats the simple bar;
- on every fold, the plain model's zero-shot reaches ``ZERO_SHOT_SHARE`` of its retrieval;
- on a section with region labels, the linear probe's balanced accuracy on ``X_comtip`` beats both the colour
  statistics and the frozen trunk's features.
"""

from __future__ import annotations

import pandas as pd

#: PCC-ALL by which CoMTIP's best read-out should beat the simple bar.
MARGIN = 0.03
#: The share of retrieval's PCC-ALL that zero-shot (no bank) should keep, on every fold.
ZERO_SHOT_SHARE = 0.8
#: The rows of ``fit``'s defaults compared by that target.
ZERO_SHOT, RETRIEVAL = "CoMTIP · zero-shot", "CoMTIP · retrieval"
PROBE = "probe bal. acc."


def target_rows(
    table: pd.DataFrame, clusters: pd.DataFrame | None = None, folds: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per target: the row that was read, its value, what it had to reach, and whether it did.

    ``table`` is the summary with the simple bar (:func:`benchmarks.report.with_simple_bar`); ``clusters``
    the clustering scores averaged over seeds (:func:`benchmarks.report.clustering_summary`); ``folds`` every
    fold's rows averaged over seeds (:func:`benchmarks.report.per_fold`).

    Examples
    --------
    >>> from benchmarks.report import DELTA, SIMPLE_BAR
    >>> t = pd.DataFrame({"dataset": ["d"] * 3, "method": [SIMPLE_BAR, "CoMTIP · head", "CoMTIP · zero-shot"],
    ...                   "PCC-ALL": [0.2, 0.25, 0.1], DELTA: [None, 0.05, -0.1]})
    >>> target_rows(t)[["row", "met"]].values.tolist()
    [['CoMTIP · head', True], ['CoMTIP · zero-shot', False]]

    """
    from .clustering import EMBEDDINGS
    from .report import DELTA, SIMPLE_BAR

    rows = []
    # A partial run (e.g. one --per-fit task so far) may have no colour row yet, hence no bar and no delta.
    if DELTA not in table.columns:
        table = table.iloc[:0].assign(**{DELTA: []})
    for dataset, block in table[table["dataset"] != "all"].groupby("dataset", sort=False):
        bar = block.loc[block["method"] == SIMPLE_BAR, "PCC-ALL"]
        comtip = block[block["method"].str.startswith("CoMTIP") & block[DELTA].notna()]
        if bar.empty or comtip.empty:
            continue
        bar = float(bar.iloc[0])
        best = comtip.loc[comtip["PCC-ALL"].idxmax()]
        rows.append(_row(dataset, f"best CoMTIP read-out ≥ simple bar + {MARGIN}", best, bar + MARGIN))
        zero = comtip[comtip["method"].str.endswith("· zero-shot")]
        if not zero.empty:
            rows.append(_row(dataset, "zero-shot > simple bar", zero.loc[zero["PCC-ALL"].idxmax()], bar))
    for (dataset, fold), block in folds.groupby(["dataset", "fold"], sort=False) if folds is not None else []:
        pcc = block.set_index("method")["PCC-ALL"]
        if {ZERO_SHOT, RETRIEVAL} <= set(pcc.index):
            target = f"zero-shot ≥ {ZERO_SHOT_SHARE} × retrieval"
            row = pd.Series({"method": ZERO_SHOT, "PCC-ALL": pcc[ZERO_SHOT]})
            rows.append(_row(f"{dataset} {fold}", target, row, ZERO_SHOT_SHARE * pcc[RETRIEVAL]))
    if clusters is not None and len(clusters):
        for (dataset, section), block in clusters.groupby(["dataset", "section"], sort=False):
            score = block.set_index("embedding")[PROBE]
            if not set(EMBEDDINGS[:3]) <= set(score.index):
                continue
            rival = score[list(EMBEDDINGS[1:3])].idxmax()
            rows.append(
                {
                    "dataset": f"{dataset} {section}",
                    "target": "probe on X_comtip > colour and frozen trunk",
                    "row": EMBEDDINGS[0],
                    "value": float(score[EMBEDDINGS[0]]),
                    "to reach": float(score[rival]),
                    "met": bool(score[EMBEDDINGS[0]] > score[rival]),
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "target", "row", "value", "to reach", "met"])


def _row(dataset: str, target: str, row: pd.Series, to_reach: float) -> dict:
    return {
        "dataset": dataset,
        "target": target,
        "row": row["method"],
        "value": float(row["PCC-ALL"]),
        "to reach": float(to_reach),
        "met": bool(row["PCC-ALL"] >= to_reach if "≥" in target else row["PCC-ALL"] > to_reach),
    }


def targets_md(
    table: pd.DataFrame, clusters: pd.DataFrame | None = None, folds: pd.DataFrame | None = None
) -> list[str]:
    """The targets as a markdown section (empty when the run has no simple bar or no CoMTIP row)."""
    rows = target_rows(table, clusters, folds)
    if rows.empty:
        return []
    lines = [
        "## Targets",
        "",
        "| dataset | target | row read | value | to reach | met |",
        "|---|---|---|---:|---:|---|",
    ]
    for _, r in rows.iterrows():
        gap = r["value"] - r["to reach"]
        verdict = "yes" if r["met"] else f"no (short by {-gap:.3f})"
        lines.append(
            f"| {r['dataset']} | {r['target']} | {r['row']} | {r['value']:.3f} | {r['to reach']:.3f} | {verdict} |"
        )
    return [*lines, ""]
