"""Loaders for the public legacy-ST datasets her2st and STUtility mouse olfactory bulb, from local folders."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import TableModel

from .._constants import INSTANCE_KEY, REGION_KEY, SAMPLE_KEY, TABLE_KEY, UNS_KEY
from ..io import read_legacy_st

__all__ = ["her2st", "mob"]

#: ST spots are 100 µm across on both the 1k (her2st) and the 2k (MOB) arrays.
_SPOT_DIAMETER_UM = 100.0
#: Centre-to-centre spot distance: 200 µm on the 1k array, 141 µm (100 µm x √2, diagonal) on the 2k array.
_HER2ST_SPACING_UM = 200.0
_MOB_SPACING_UM = 141.0
#: The A1 PNG is the 6954 px wide original, resized to 2000 px; the spot file is in original pixels.
_A1_PIXEL_SCALE = 2000 / 6954


class _Section(NamedTuple):
    counts: Path
    spots: Path
    image: Path
    pixel_scale: float = 1.0


_HER2ST_IMAGES = {
    "A1": "app/www/imgs/A1_HE_image_dark.png",
    "C2": "data/ST-imgs/C/C2/5714_HE_BT_C2.jpg",
    "C3": "data/ST-imgs/C/C3/5714_HE_BT_D1.jpg",
    "C4": "data/ST-imgs/C/C4/5714_HE_BT_D2.jpg",
    "C5": "data/ST-imgs/C/C5/5714_HE_BT_E1.jpg",
    "C6": "data/ST-imgs/C/C6/5714_HE_BT_E2.jpg",
}
_MOB_SECTIONS = ("MOB1", "MOB2", "MOB3")
_MOB_COUNTS_DIR = Path("inst/extdata/counts")
_MOB_METADATA = Path("inst/extdata/metaData.csv")


def her2st(path: str | PathLike, *, sections: str | Sequence[str] | None = None) -> SpatialData:
    """Load the HER2-positive breast cancer legacy-ST sections (Andersson et al. 2021) kept locally.

    Sections A1 (patient A; the authors' 2000 px wide PNG) and C2-C6 (patient C, serial sections,
    full-resolution JPEGs, ~0.69 µm/px). See ``her2st/SOURCE.md`` next to the data for provenance,
    licence and caveats.

    Parameters
    ----------
    path
        The ``her2st`` folder, holding ``data/ST-cnts``, ``data/ST-spotfiles``, ``data/ST-imgs``
        and ``app/www/imgs``.
    sections
        Section ids to load, a subset of ``["A1", "C2", "C3", "C4", "C5", "C6"]``; all when ``None``.

    Returns
    -------
    SpatialData laid out as in ``docs/data_layout.md``: per section ``S`` an image ``f"{S}_image"``
    and spots ``f"{S}_spots"``; one ``"table"`` over all sections (genes outer-joined, absent
    genes counted 0) with the extra ``obs`` column ``patient`` (``"A"`` or ``"C"``).

    Raises
    ------
    FileNotFoundError
        A file of a requested section is missing (named in the message).
    ValueError
        An unknown section id.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.her2st("path/to/her2st", sections=["A1", "C2"])  # doctest: +SKIP
    >>> sdata.tables["table"].obs["patient"].value_counts()  # doctest: +SKIP
    patient
    A    346
    C    187
    Name: count, dtype: int64

    """
    root = _existing_dir(path, "her2st")
    chosen = _choose(sections, tuple(_HER2ST_IMAGES), "her2st")
    files = {
        s: _Section(
            root / "data" / "ST-cnts" / f"{s}.tsv.gz",
            root / "data" / "ST-spotfiles" / f"{s}_selection.tsv",
            root / _HER2ST_IMAGES[s],
            _A1_PIXEL_SCALE if s == "A1" else 1.0,
        )
        for s in chosen
    }
    _require_files(f for sec in files.values() for f in sec[:3])
    parts = [
        _read_section(s, sec, _HER2ST_SPACING_UM, extra_obs={"patient": s[0]}) for s, sec in files.items()
    ]
    return _concat_sections(parts, categorical=("patient",))


def mob(path: str | PathLike, *, sections: str | Sequence[str] | None = None) -> SpatialData:
    """Load the STUtility mouse olfactory bulb sections (2k ST array, 1000 genes) kept locally.

    Sections MOB1-MOB3 (individuals 1, 1, 2), 1905 x 1905 px H&E at ~4.4 µm/px. Genes are Ensembl
    mouse ids with a version suffix. See ``stutility_mob/SOURCE.md`` next to the data.

    Parameters
    ----------
    path
        The ``stutility_mob`` folder, holding ``inst/extdata/counts`` and ``inst/extdata/metaData.csv``.
    sections
        Section ids to load, a subset of ``["MOB1", "MOB2", "MOB3"]``; all when ``None``.

    Returns
    -------
    SpatialData laid out as in ``docs/data_layout.md`` (see :func:`her2st`), with the extra ``obs``
    column ``individual`` (int, from ``metaData.csv``). Only spots under tissue (``selected == 1``
    in the alignment table) are kept.

    Raises
    ------
    FileNotFoundError
        A file of a requested section, or ``metaData.csv``, is missing (named in the message).
    ValueError
        An unknown section id, or a section absent from ``metaData.csv``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.mob("path/to/stutility_mob")  # doctest: +SKIP
    >>> sdata.tables["table"].obs.groupby("sample", observed=True)["individual"].first().tolist()  # doctest: +SKIP
    [1, 1, 2]

    """
    root = _existing_dir(path, "stutility_mob")
    chosen = _choose(sections, _MOB_SECTIONS, "mob")
    counts_dir = root / _MOB_COUNTS_DIR
    files = {
        s: _Section(counts_dir / f"{s}.tsv", counts_dir / f"alignment_table_{s}.tsv", counts_dir / f"{s}.jpg")
        for s in chosen
    }
    _require_files([root / _MOB_METADATA, *(f for sec in files.values() for f in sec[:3])])
    individual = _mob_individuals(root / _MOB_METADATA)
    missing = [s for s in chosen if s not in individual]
    if missing:
        raise ValueError(f"{root / _MOB_METADATA} has no row for section(s) {missing}.")
    parts = [
        _read_section(s, sec, _MOB_SPACING_UM, extra_obs={"individual": individual[s]})
        for s, sec in files.items()
    ]
    return _concat_sections(parts)


def _read_section(
    sample: str, files: _Section, spacing_um: float, extra_obs: Mapping[str, object]
) -> SpatialData:
    sdata = read_legacy_st(
        files.counts,
        files.spots,
        files.image,
        sample_id=sample,
        pixel_scale=files.pixel_scale,
        spot_diameter_um=_SPOT_DIAMETER_UM,
        spot_spacing_um=spacing_um,
    )
    obs = sdata.tables[TABLE_KEY].obs
    for key, value in extra_obs.items():
        obs[key] = value
    return sdata


def _concat_sections(parts: Sequence[SpatialData], categorical: Iterable[str] = ()) -> SpatialData:
    """Put per-section SpatialData side by side, with one table over all sections.

    Images and shapes keep their (unique) names and per-section coordinate systems. The tables are
    concatenated with an outer join on genes, absent genes counted 0, so ``X`` stays integer
    sparse; ``uns[UNS_KEY]`` dicts (``{key: {sample: value}}``) are merged.
    """
    images: dict = {}
    shapes: dict = {}
    for sdata in parts:
        for store, elements in ((images, sdata.images), (shapes, sdata.shapes)):
            clash = set(store) & set(elements)
            if clash:
                raise ValueError(f"Element name(s) {sorted(clash)} occur in more than one section.")
            store.update(elements)
    tables = [sdata.tables[TABLE_KEY] for sdata in parts]
    # uns is dropped here (uns_merge=None) and rebuilt below: our per-sample dicts are merged by hand,
    # and the spatialdata attrs are rewritten by TableModel.parse for all regions together
    table = ad.concat(tables, join="outer", fill_value=0)
    uns: dict[str, dict] = {}
    for t in tables:
        for key, per_sample in t.uns.get(UNS_KEY, {}).items():
            uns.setdefault(key, {}).update(per_sample)
    table.uns[UNS_KEY] = uns
    for key in (REGION_KEY, SAMPLE_KEY, *categorical):
        table.obs[key] = pd.Categorical(
            table.obs[key].astype(str), categories=_unique(table.obs[key].astype(str))
        )
    table = TableModel.parse(table, region=list(shapes), region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images=images, shapes=shapes, tables={TABLE_KEY: table})


def _unique(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(values))


def _mob_individuals(metadata: Path) -> dict[str, int]:
    meta = pd.read_csv(metadata, sep=";")
    for column in ("samples", "individual"):
        if column not in meta.columns:
            raise KeyError(f"{metadata} lacks the column {column!r}; it has {list(meta.columns)}.")
    # the paths in the file point to the author's machine; only the file stem names the section
    stems = meta["samples"].map(lambda p: Path(str(p).replace("\\", "/")).name.split(".")[0])
    return {stem: int(ind) for stem, ind in zip(stems, meta["individual"], strict=True)}


def _choose(sections: str | Sequence[str] | None, available: tuple[str, ...], dataset: str) -> list[str]:
    if sections is None:
        return list(available)
    chosen = [sections] if isinstance(sections, str) else list(sections)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ValueError(f"Unknown {dataset} section(s) {unknown}; available: {list(available)}.")
    if len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"sections must be non-empty and without repeats, got {chosen}.")
    return chosen


def _existing_dir(path: str | PathLike, dataset: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} data folder not found: {root}")
    return root


def _require_files(paths: Iterable[Path]) -> None:
    # checked before reading anything, so a missing file fails in a second, not after minutes of decoding
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing data file(s): {', '.join(missing)}")
