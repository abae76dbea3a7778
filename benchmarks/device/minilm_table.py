"""MiniLM name vectors of every gene in a benchmark panel, for a machine without the MiniLM wheel.

python benchmarks/device/minilm_table.py .devcarry/minilm_table.npz
"""

import sys

import numpy as np

from comtip_sc._benchmark import get_preset
from comtip_sc._benchmark_data import load_folds
from comtip_sc.model._gene_names import embed_gene_names

names = sorted({g for fold in load_folds(get_preset("cpu"), "../shared/data") for g in fold.panel})
vecs = embed_gene_names(names, "minilm")
np.savez_compressed(sys.argv[1], names=np.array(names), vecs=vecs.astype(np.float32))
print(f"{len(names)} genes, vectors {vecs.shape}")
