"""Mean and standard deviation of the RGB values of every section's spot tiles (as scanned), per dataset.

    python benchmarks/section_colour.py --data-root ../shared/data     # ~1 min on one CPU core

Shows whether sections were scanned with different brightness or stain, which is what
``ComtipConfig(colour_norm="section")`` removes (see docs/data_layout.md, "Tile colour").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import comtip_sc as cs
from comtip_sc._benchmark import get_preset
from comtip_sc._constants import SAMPLE_KEY, TABLE_KEY


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--tile-px", type=int, default=32, help="tile side in pixels (default: %(default)s)")
    args = parser.parse_args()
    root = Path(args.data_root)
    tile_um = get_preset("cpu").tile_um
    print("| dataset | section | group | spots | mean R, G, B | s.d. R, G, B |")
    print("|---|---|---|---:|---|---|")
    for name, sdata, group in (
        ("her2st", cs.datasets.her2st(root / "her2st"), "patient"),
        ("mob", cs.datasets.mob(root / "stutility_mob"), "individual"),
    ):
        table = sdata.tables[TABLE_KEY]
        tiles = cs.pp.extract_tiles(sdata, tile_um=tile_um[name], tile_px=args.tile_px)
        samples = table.obs[SAMPLE_KEY].astype(str).to_numpy()
        for s in sorted(set(samples)):
            rows = samples == s
            px = tiles[rows].reshape(-1, 3).astype(np.float64)
            g = table.obs.loc[rows, group].astype(str).iloc[0]
            mean = ", ".join(f"{v:.0f}" for v in px.mean(0))
            sd = ", ".join(f"{v:.0f}" for v in px.std(0))
            print(f"| {name} | {s} | {group} {g} | {rows.sum()} | {mean} | {sd} |", flush=True)


if __name__ == "__main__":
    main()
