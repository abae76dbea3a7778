"""Reading the command line's inputs and writing its results, shared by ``comtip`` and ``comtip demo``.

The ``check_*`` functions only look at paths (no heavy import), so a wrong file name or an existing
output is refused before any model or data is loaded.
"""

from __future__ import annotations

from pathlib import Path

from ._atomic import atomic_path

#: Result files ``comtip embed`` / ``comtip predict`` write.
RESULT_SUFFIXES = (".h5ad", ".zarr")


def _kind(path: str) -> str:
    """``toy``, ``zarr``, ``her2st`` or ``mob``; raises for a path that is none of them."""
    if path == "toy":
        return "toy"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if (p / "zmetadata").exists() or (p / "zarr.json").exists() or p.suffix == ".zarr":
        return "zarr"
    if (p / "data" / "ST-cnts").is_dir():
        return "her2st"
    if (p / "inst" / "extdata" / "counts").is_dir():
        return "mob"
    raise ValueError(
        f"{path} is neither a SpatialData .zarr nor a her2st / stutility_mob folder; "
        "convert your data with comtip_sc.io or spatialdata_io first."
    )


def check_data(path: str) -> None:
    """Raise when ``path`` is not something :func:`load_data` reads (before anything is loaded)."""
    _kind(path)


def check_model(path: str) -> None:
    """Raise when ``path`` is not a folder written by ``comtip fit`` / ``ComtipModel.save``."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {path} is not a saved comtip_sc model folder (no config.json in it)."
        )


def check_output(path: str, *, overwrite: bool, suffixes: tuple[str, ...] | None = None) -> None:
    """Raise when ``path`` has the wrong extension, or exists and ``overwrite`` is false."""
    target = Path(path)
    if suffixes is not None and target.suffix not in suffixes:
        raise ValueError(
            f"--out must end in .h5ad (the table only) or .zarr (the whole SpatialData), got {path}."
        )
    if target.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")


def load_data(path: str):
    """Open ``path``: ``toy`` (synthetic tissue), a SpatialData ``.zarr``, a her2st or an stutility_mob folder."""
    kind = _kind(path)
    import comtip_sc as cs

    if kind == "toy":
        return cs.datasets.toy_tissue()
    if kind == "zarr":
        import spatialdata as sd

        return sd.read_zarr(path)
    return cs.datasets.her2st(path) if kind == "her2st" else cs.datasets.mob(path)


def write_result(sdata, out: str, table_key: str) -> str:
    """Write the table (``.h5ad``) or the whole SpatialData (``.zarr``) to ``out`` atomically."""
    target = Path(out)
    check_output(out, overwrite=True, suffixes=RESULT_SUFFIXES)
    with atomic_path(target) as tmp:
        if target.suffix == ".h5ad":
            sdata.tables[table_key].write_h5ad(tmp)
        else:
            sdata.write(tmp)
    return str(target)
