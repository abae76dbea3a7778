"""Why can retrieval fail while the head and zero-shot do not? Neighbour statistics of retrieval on one fold.

Retrieval averages the expression of the ``k`` bank spots whose sentence embeddings are closest to a test
spot's image embedding. If the held-out patient's image embeddings are shifted as a whole, every test spot
can land near the same few bank spots ("hubs"), and predictions become nearly constant. The ridge head has
an intercept, and Pearson ignores a per-gene offset, so the head is not hurt in the same way; the
zero-shot read-out is close to linear in the embedding. This script trains the chosen variants once per
seed and prints, for each:

- ``retrieval``: held-out PCC-ALL as in the benchmark, and ``retrieval_centred`` after moving the test
  embeddings' mean onto the training spots' (a test-time check, not a package option);
- ``bank_used``: the fraction of bank spots that are among some test spot's ``k`` neighbours (``train``:
  the same for the training spots themselves);
- ``top10_share``: the share of all neighbour slots taken by the 10 most used bank spots;
- ``mean_shift``: distance between the mean test and mean training image embedding;
- ``cone_img`` / ``cone_sent``: length of the mean training image / sentence embedding (1.0: every
  embedding points the same way; contrastive spaces crowd into such a cone), and
  ``retrieval_modality_centred``: retrieval after removing each modality's *training* mean from its
  embeddings (the "modality gap" correction; uses no test statistics).

``--colour-norm section`` overrides the fold's tile colour handling (on her2st A→C, seed 0, that fit's
retrieval collapses on the small CPU model too).

    python benchmarks/retrieval_hubness.py 'her2st:A→C' 0 --preset gpu --variants CoMTIP,'CoMTIP −MFM'

Prints one ``HUBNESS fold seed variant {...}`` line per fit.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from _one_fold import fold_parser, load_fold, quiet_one_thread

import comtip_sc as cs
from comtip_sc._benchmark import VARIANTS, cache_fold_tiles, fit_comtip, get_preset
from comtip_sc.tl._datamodule import normalized_values
from comtip_sc.tl._evaluate import pearson_per_gene
from comtip_sc.tl._predict import _retrieval

K = 50


def neighbour_stats(img: np.ndarray, bank_emb: np.ndarray, k: int = K) -> dict[str, float]:
    """Fraction of bank spots used as neighbours, and the share of the 10 most used."""
    k = min(k, len(bank_emb))
    top = np.argpartition(-(img @ bank_emb.T), k - 1, axis=1)[:, :k]
    counts = np.bincount(top.ravel(), minlength=len(bank_emb))
    used, top10 = (counts > 0).mean(), np.sort(counts)[-10:].sum() / top.size
    return {"bank_used": round(float(used), 4), "top10_share": round(float(top10), 4)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pcc(test_y: np.ndarray, img: np.ndarray, bank) -> float:
    return round(float(pearson_per_gene(test_y, _retrieval(img, bank, K)).mean()), 4)


def main() -> None:
    parser = fold_parser(__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--variants", default="CoMTIP,CoMTIP −MFM", help="comma-separated VARIANTS labels")
    parser.add_argument(
        "--colour-norm", default=None, choices=["none", "section"], help="override the fold's"
    )
    args = parser.parse_args()
    quiet_one_thread()
    flags = dict(VARIANTS)
    wanted = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in wanted if v not in flags]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(flags)}")
    preset = get_preset(args.preset)
    fold = load_fold(preset, args.fold, args.data_root)
    if args.colour_norm is not None:
        fold = dataclasses.replace(fold, colour_norm=None if args.colour_norm == "none" else args.colour_norm)
    test_y = normalized_values(fold.test.tables["table"], fold.panel)
    with tempfile.TemporaryDirectory() as tmp:
        cache_fold_tiles(fold, preset, Path(tmp), test=False)
        for seed in (int(s) for s in args.seeds.split(",")):
            for label in wanted:
                ps = dataclasses.replace(preset, seed=seed)
                model = fit_comtip(fold, ps, flags[label], fold.panel, Path(tmp), Path(tmp) / "L")
                cs.tl.comtip_embed(fold.test, model, key_added="X_hub")
                img = fold.test.tables["table"].obsm["X_hub"]
                bank = model.reference
                mean_img, mean_sent = bank.image_embeddings.mean(0), bank.embeddings.mean(0)
                cone = bank.cone()
                centred = _unit(img - img.mean(0) + mean_img)
                gap_free = dataclasses.replace(bank, embeddings=_unit(bank.embeddings - mean_sent))
                row = {
                    "retrieval": _pcc(test_y, img, bank),
                    "retrieval_centred": _pcc(test_y, centred, bank),
                    **neighbour_stats(img, bank.embeddings),
                    "train": neighbour_stats(bank.image_embeddings, bank.embeddings),
                    "mean_shift": round(float(np.linalg.norm(img.mean(0) - mean_img)), 4),
                    "cone_img": round(cone["image"], 3),
                    "cone_sent": round(cone["sentence"], 3),
                    "retrieval_modality_centred": _pcc(test_y, _unit(img - mean_img), gap_free),
                }
                print("HUBNESS", args.fold, seed, label, json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
