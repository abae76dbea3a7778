"""Input checks shared by the readers; every error names the file, column, spot or gene at fault."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

_MAX_SHOWN = 5


def _preview(items: Iterable[object], n: int = _MAX_SHOWN) -> str:
    items = list(items)
    shown = ", ".join(repr(str(i)) for i in items[:n])
    return shown + (f", ... ({len(items)} in total)" if len(items) > n else "")


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise a :class:`KeyError` naming ``source`` and the columns it lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(
            f"{source} lacks the required column(s) {missing}; it has {_preview(df.columns, 10)}. "
            f"Expected a legacy ST spot table with the columns {list(columns)}."
        )


def require_unique(ids: pd.Index, source: str, what: str = "spot id") -> None:
    """Raise a :class:`ValueError` naming the duplicated ids of ``source``."""
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        raise ValueError(f"{source} has duplicated {what}(s): {_preview(dup)}. Each {what} must occur once.")


def check_counts(counts: pd.DataFrame, source: str) -> np.ndarray:
    """Validate a spots x genes count table and return its values as a 2-D ``int64`` array.

    Counts must be numeric, finite, non-negative integers: they are the raw UMI that all later
    normalisation starts from, so a silent cast would hide a broken input.
    """
    non_numeric = [c for c, dt in counts.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
    if non_numeric:
        raise ValueError(
            f"{source}: the count column(s) {_preview(non_numeric)} are not numeric. "
            "Counts must be integer UMI, one column per gene; is the first column the spot id?"
        )
    values = (
        counts.to_numpy(dtype=np.float64, copy=False) if len(counts.columns) else np.zeros((len(counts), 0))
    )
    checks = (
        (lambda v: ~np.isfinite(v), "missing (NaN) or infinite"),
        (lambda v: v < 0, "negative"),
        (lambda v: v != np.round(v), "non-integer"),
    )
    for test, label in checks:
        # each test runs only once the previous ones passed, so NaN never reaches the comparisons
        bad = np.argwhere(test(values))
        if len(bad):
            i, j = bad[0]
            raise ValueError(
                f"{source}: {len(bad)} {label} count value(s); the first is at spot "
                f"{counts.index[i]!r}, gene {counts.columns[j]!r} (value {values[i, j]!r}). "
                "Counts must be raw, non-negative integer UMI."
            )
    if values.size and values.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{source}: counts exceed the int32 range; these do not look like UMI counts.")
    return values.astype(np.int64)


def check_coordinates(spots: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise a :class:`ValueError` naming the spots whose coordinates in ``columns`` are missing."""
    coords = spots[list(columns)].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(coords.to_numpy(dtype=np.float64)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{source}: {int(bad.sum())} spot(s) have no valid {'/'.join(columns)}: "
            f"{_preview(spots.index[bad])}. Every kept spot needs a position."
        )


def check_overlap(count_ids: pd.Index, spot_ids: pd.Index, count_source: str, spot_source: str) -> pd.Index:
    """Return the spot ids shared by both tables (in count-table order), or raise if there are none."""
    common = count_ids[count_ids.isin(spot_ids)]
    if len(common) == 0:
        raise ValueError(
            f"No spot in common between the count table ({count_source}) and the spot table "
            f"({spot_source}). Count-table ids look like {_preview(count_ids, 3)}; spot-table ids "
            f"(from x, y, selected rows only) look like {_preview(spot_ids, 3)}. Both must be "
            "'<x>x<y>' array coordinates of the same section."
        )
    return common
