"""Device-only scaffolding: gene names read from a table of the real MiniLM's outputs.

The device lacks the 88 MB MiniLM wheel; ``minilm_table.py`` encodes every benchmark panel gene with it on
the CPU machine, and this module (on ``PYTHONPATH`` as ``sitecustomize``) serves those vectors when
``COMTIP_MINILM_TABLE`` names the table. A name missing from the table raises ``KeyError``.
"""

import os

_TABLE = os.environ.get("COMTIP_MINILM_TABLE")
if _TABLE:
    import numpy as np

    from comtip_sc.model import _gene_names

    _data = np.load(_TABLE)
    _lut = dict(zip(_data["names"].tolist(), _data["vecs"], strict=True))

    class _Lookup:
        def get_embedding_dimension(self) -> int:
            return int(_data["vecs"].shape[1])

        def encode(self, texts, **kwargs):
            return np.stack([_lut[t] for t in texts])

    _gene_names._MODELS["minilm"] = _Lookup()
    _gene_names.minilm_available = lambda: True
