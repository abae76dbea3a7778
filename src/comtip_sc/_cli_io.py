"""Reading the command line's inputs and writing its results, shared by ``comtip`` and ``comtip demo``."""

from __future__ import annotations

from pathlib import Path

from ._atomic import atomic_path


def load_data(path: str):
    """Open ``path``: ``toy`` (synthetic tissue), a SpatialData ``.zarr``, a her2st or an stutility_mob folder."""
    import spatialdata as sd

    import comtip_sc as cs

    if path == "toy":
        return cs.datasets.toy_tissue()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if (p / "zmetadata").exists() or (p / "zarr.json").exists() or p.suffix == ".zarr":
        return sd.read_zarr(p)
    if (p / "data" / "ST-cnts").is_dir():
        return cs.datasets.her2st(p)
    if (p / "inst" / "extdata" / "counts").is_dir():
        return cs.datasets.mob(p)
    raise ValueError(
        f"{path} is neither a SpatialData .zarr nor a her2st / stutility_mob folder; "
        "convert your data with comtip_sc.io or spatialdata_io first."
    )


def write_result(sdata, out: str, table_key: str) -> str:
    """Write the table (``.h5ad``) or the whole SpatialData (``.zarr``) to ``out`` atomically."""
    target = Path(out)
    if target.suffix not in (".h5ad", ".zarr"):
        raise ValueError(f"--out must end in .h5ad (table only) or .zarr (whole SpatialData), got {out}.")
    with atomic_path(target) as tmp:
        if target.suffix == ".h5ad":
            sdata.tables[table_key].write_h5ad(tmp)
        else:
            sdata.write(tmp)
    return str(target)
