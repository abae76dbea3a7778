"""Chunked top-k retrieval and the sparse reference bank (with reading banks of the dense layout)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from comtip_sc.model import ComtipModel, ReferenceBank
from comtip_sc.model._retrieval import retrieve, top_k_neighbours

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def two_dataset_bank(rng: np.random.Generator, n: int = 400, genes: int = 12) -> ReferenceBank:
    """Half the spots measure the first 8 genes, half the last 8 (NaN elsewhere), many zeros."""
    dense = rng.gamma(1.0, 1.0, (n, genes)).astype(np.float32) * (rng.random((n, genes)) < 0.4)
    dense[: n // 2, 8:] = np.nan
    dense[n // 2 :, :4] = np.nan
    return ReferenceBank(unit(rng, n, 16), dense, [f"g{i}" for i in range(genes)])


def test_chunked_top_k_equals_unchunked():
    rng = np.random.default_rng(0)
    bank, queries = unit(rng, 500, 16), unit(rng, 70, 16)
    full_idx, full_val = top_k_neighbours(queries, bank, 9, max_scores=10**9)
    # By hand: the 9 best by sorting every score.
    sims = queries @ bank.T
    np.testing.assert_array_equal(full_idx, np.argsort(-sims, axis=1)[:, :9])
    for max_scores in (9, 50, 1000):  # chunks of 1 query x 9 spots up to several of each
        idx, val = top_k_neighbours(queries, bank, 9, max_scores=max_scores)
        np.testing.assert_array_equal(idx, full_idx)
        np.testing.assert_allclose(val, full_val, rtol=1e-6)


def test_retrieval_mean_over_neighbours_that_measure_each_gene():
    rng = np.random.default_rng(1)
    bank = two_dataset_bank(rng)
    queries = unit(rng, 30, 16)
    dense = bank.expression
    top = np.argsort(-(queries @ bank.embeddings.T), axis=1)[:, :25]
    with np.errstate(all="ignore"):
        expected = np.nan_to_num(np.nanmean(dense[top], axis=1), nan=0.0)
    for max_scores in (25, 10**9):
        np.testing.assert_allclose(retrieve(queries, bank, 25, max_scores=max_scores), expected, rtol=1e-5)


def test_bank_stores_sparse_values_and_measurement_patterns():
    rng = np.random.default_rng(2)
    bank = two_dataset_bank(rng)
    dense = bank.expression
    assert sp.issparse(bank.values)
    assert bank.values.nnz == int(((dense != 0) & ~np.isnan(dense)).sum())
    assert bank.patterns.shape == (2, 12)  # two measurement patterns, not a mask per spot
    np.testing.assert_array_equal(np.isnan(bank.rows([0, 399])), np.isnan(dense[[0, 399]]))
    with pytest.raises(ValueError, match="shape"):
        ReferenceBank(bank.embeddings, bank.values[:10], bank.genes)


def test_large_bank_predicts_without_a_queries_by_bank_matrix():
    rng = np.random.default_rng(3)
    n_bank, n_query, genes = 200_000, 2_000, 20
    emb = unit(rng, n_bank, 64)
    values = sp.random(n_bank, genes, density=0.3, format="csr", dtype=np.float32, random_state=3)
    bank = ReferenceBank(emb, values, [f"g{i}" for i in range(genes)])
    queries = unit(rng, n_query, 64)
    tracemalloc.start()
    pred = retrieve(queries, bank, 50)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense_scores = n_query * n_bank * 4  # what `queries @ bank.T` in float32 would take
    assert peak < dense_scores / 20, (peak, dense_scores)
    assert pred.shape == (n_query, genes) and np.isfinite(pred).all()
    # Spot check against brute force on a few queries.
    top = np.argsort(-(queries[:3] @ emb.T), axis=1)[:, :50]
    np.testing.assert_allclose(
        pred[:3], np.asarray(values[top.ravel()].todense()).reshape(3, 50, -1).mean(1), rtol=1e-5
    )


def test_model_with_a_dense_bank_of_the_first_format_loads(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    # Rewrite the folder in format 1: the bank's expression as one dense array with NaN.
    ref_file = tmp_path / "m" / "reference.safetensors"
    tensors = load_file(str(ref_file))
    dense = torch.from_numpy(tiny_model.reference.expression)
    kept = {k: v for k, v in tensors.items() if not k.startswith(("values_", "observed_"))}
    save_file({**kept, "expression": dense}, str(ref_file))
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["format_version"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    old = ComtipModel.load(tmp_path / "m")
    np.testing.assert_array_equal(old.reference.expression, tiny_model.reference.expression)
    np.testing.assert_array_equal(old.reference.rows([0, 1]), tiny_model.reference.rows([0, 1]))
    # And the current format round-trips exactly.
    tiny_model.save(tmp_path / "m2")
    again = ComtipModel.load(tmp_path / "m2")
    assert (again.reference.values != tiny_model.reference.values).nnz == 0
    np.testing.assert_array_equal(again.reference.patterns, tiny_model.reference.patterns)


def test_device_path_gives_the_cpu_neighbours_and_predictions():
    """The GPU code path (no row filter, torch neighbour mean on BankTensors), run on the CPU, matches."""
    from comtip_sc.model._bank import BankTensors
    from comtip_sc.model._retrieval import retrieve_with, top_k_tensors

    rng = np.random.default_rng(4)
    bank = two_dataset_bank(rng, n=600)
    queries = unit(rng, 90, 16)
    cpu_idx, cpu_val = top_k_neighbours(queries, bank.embeddings, 11, max_scores=40)
    q, b = torch.from_numpy(queries), torch.from_numpy(bank.embeddings)
    for max_scores in (40, 10**6):
        idx, val = top_k_tensors(q, b, 11, max_scores=max_scores, filter_rows=False)
        np.testing.assert_array_equal(idx.numpy(), cpu_idx)
        np.testing.assert_allclose(val.numpy(), cpu_val, rtol=1e-6)
    expected = retrieve(queries, bank, 11)
    tensors = BankTensors(bank, "cpu")
    np.testing.assert_allclose(
        tensors.neighbour_mean(torch.from_numpy(cpu_idx)).numpy(), bank.neighbour_mean(cpu_idx), rtol=1e-6
    )
    for max_scores in (200, 10**6):  # many query chunks, and one
        got = retrieve_with(queries, tensors, 11, max_scores=max_scores, filter_rows=False)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The public entry with an explicit device gives the same (on the CPU the classic path runs).
    np.testing.assert_allclose(retrieve(queries, bank, 11, device="cpu"), expected)


def test_device_neighbour_mean_handles_spots_without_values():
    """Spots whose stored row is empty (all zeros) and genes no neighbour measures give 0, as on the CPU."""
    from comtip_sc.model._bank import BankTensors

    dense = np.array([[0.0, np.nan], [1.0, np.nan], [np.nan, 2.0], [0.0, 0.0]], np.float32)
    bank = ReferenceBank(np.eye(4, dtype=np.float32), dense, ["a", "b"])
    neighbours = np.array([[0, 3], [0, 1], [2, 2], [0, 0]])
    np.testing.assert_allclose(
        BankTensors(bank, "cpu").neighbour_mean(torch.from_numpy(neighbours)).numpy(),
        bank.neighbour_mean(neighbours),
    )
