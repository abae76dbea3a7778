from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from comtip_sc._constants import NORM_LAYER, PANEL_KEY, SAMPLE_KEY, TABLE_KEY, UNS_KEY
from comtip_sc.datasets import toy_tissue
from comtip_sc.pp._genes import filter_spots, normalize, select_genes

GENES = ["g0", "g1", "g2", "g3", "g4"]


def _hand_made() -> AnnData:
    """Four spots in two samples; every row sums to 1e4 so normalisation is the identity.

    Mean of log1p over spots, by hand:
      g0: log1p([1000, 1000, 4000, 5000]) -> (6.909 + 6.909 + 8.294 + 8.517) / 4 = 7.657
      g1: log1p([2000, 2000, 3000, 2000]) -> (7.601 * 3 + 8.006) / 4            = 7.702
      g2: log1p([1000,  500, 1000, 1000]) -> (6.909 * 3 + 6.217) / 4            = 6.736
      g3: log1p([2000, 1500, 2000, 2000]) -> (7.601 * 3 + 7.314) / 4            = 7.529
      g4: log1p([4000, 5000,    0,    0]) -> (8.294 + 8.517) / 4                = 4.203
    so the ranking is g1 > g0 > g3 > g2 > g4 (raw means would put g0 first), and g4 is absent from
    sample B.
    """
    counts = np.array(
        [
            [1000, 2000, 1000, 2000, 4000],
            [1000, 2000, 500, 1500, 5000],
            [4000, 3000, 1000, 2000, 0],
            [5000, 2000, 1000, 2000, 0],
        ],
        dtype=np.int32,
    )
    obs = pd.DataFrame({SAMPLE_KEY: pd.Categorical(["A", "A", "B", "B"])}, index=["a1", "a2", "b1", "b2"])
    return AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def small_sdata() -> SpatialData:
    return toy_tissue(n_rows=6, n_cols=6, n_genes=40, seed=2)


def test_select_genes_mean_matches_hand_computation():
    adata = _hand_made()
    select_genes(adata, n_top_genes=3, groupby=None)
    assert adata.uns[UNS_KEY]["panel"] == ["g1", "g0", "g3"]
    assert adata.var[PANEL_KEY].tolist() == [True, True, False, True, False]
    assert adata.var[PANEL_KEY].dtype == bool
    assert NORM_LAYER not in adata.layers  # normalised on the fly, nothing written
    assert adata.X.dtype == np.int32 and adata.X.sum() == 40000


def test_select_genes_intersection_across_samples():
    adata = _hand_made()
    select_genes(adata, n_top_genes=5, groupby=None)
    assert "g4" in adata.uns[UNS_KEY]["panel"]  # one group: g4 is detected
    select_genes(adata, n_top_genes=5, groupby=SAMPLE_KEY)
    assert adata.uns[UNS_KEY]["panel"] == ["g1", "g0", "g3", "g2"]  # g4 has no counts in sample B
    assert not adata.var.loc["g4", PANEL_KEY]
    assert adata.uns[UNS_KEY]["select_genes"]["n_candidates"] == 4


def test_select_genes_uses_existing_norm_layer():
    adata = _hand_made()
    layer = np.zeros((4, 5), dtype=np.float32)
    layer[:, 2] = 5.0  # g2 wins only if the layer is read
    adata.layers[NORM_LAYER] = layer
    select_genes(adata, n_top_genes=1, groupby=None)
    assert adata.uns[UNS_KEY]["panel"] == ["g2"]


def test_select_genes_list_and_missing_genes():
    adata = _hand_made()
    select_genes(adata, method="list", genes=["g3", "g0", "g3"])
    assert adata.uns[UNS_KEY]["panel"] == ["g3", "g0"]
    assert adata.var[PANEL_KEY].sum() == 2
    with pytest.raises(KeyError, match=r"NOPE1.*NOPE2"):
        select_genes(adata, method="list", genes=["g0", "NOPE1", "NOPE2"])
    with pytest.raises(ValueError, match="genes"):
        select_genes(adata, method="list")
    with pytest.raises(ValueError, match="method"):
        select_genes(adata, method="median")


def test_select_genes_hvg_matches_scanpy_and_enriches_markers():
    sdata = toy_tissue(seed=1)
    table = sdata.tables[TABLE_KEY]
    markers = {g for genes in table.uns["toy_tissue"]["markers"].values() for g in genes}
    select_genes(sdata, method="hvg", n_top_genes=len(markers))
    panel = table.uns[UNS_KEY]["panel"]
    assert len(panel) == len(markers) == table.var[PANEL_KEY].sum()

    # Same call done by hand on a log-normalised copy (every toy gene is detected, one sample).
    ref = table.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    df = sc.pp.highly_variable_genes(ref, flavor="seurat", n_top_genes=len(markers), inplace=False)
    expected = df.index[df["highly_variable"]]
    assert set(panel) == set(expected)
    disp = df.loc[panel, "dispersions_norm"].to_numpy()
    assert (np.diff(disp) <= 1e-6).all()  # ranked by normalised dispersion

    # Markers are 24 of 120 genes: a random panel would hold about 5 of them.
    assert len(markers.intersection(panel)) >= 9


def test_select_genes_hvg_respects_intersection():
    adata = _hand_made()
    select_genes(adata, method="hvg", n_top_genes=5)
    assert "g4" not in adata.uns[UNS_KEY]["panel"]
    assert len(adata.uns[UNS_KEY]["panel"]) <= 4


def test_select_genes_on_spatialdata_and_copy(small_sdata):
    table = small_sdata.tables[TABLE_KEY]
    out = select_genes(small_sdata, n_top_genes=10, copy=True)
    assert isinstance(out, SpatialData) and out is not small_sdata
    assert out.tables[TABLE_KEY] is not table
    assert out.tables[TABLE_KEY].var[PANEL_KEY].sum() == 10
    assert PANEL_KEY not in table.var and UNS_KEY in table.uns and "panel" not in table.uns[UNS_KEY]
    assert set(out.images) == set(small_sdata.images) and set(out.shapes) == set(small_sdata.shapes)

    assert select_genes(small_sdata, n_top_genes=10) is None
    assert table.var[PANEL_KEY].sum() == 10

    adata = _hand_made()
    new = select_genes(adata, n_top_genes=2, copy=True, key_added="mine")
    assert isinstance(new, AnnData) and new is not adata
    assert new.var["mine"].sum() == 2 and "mine" not in adata.var and UNS_KEY not in adata.uns


def test_normalize_writes_layer_and_keeps_counts(small_sdata):
    table = small_sdata.tables[TABLE_KEY]
    before = table.X.copy()
    assert normalize(small_sdata) is None
    assert table.X.dtype == np.int32
    assert (table.X != before).nnz == 0
    layer = table.layers[NORM_LAYER]
    dense = layer.toarray() if sparse.issparse(layer) else np.asarray(layer)
    np.testing.assert_allclose(np.expm1(dense.astype(np.float64)).sum(axis=1), 1e4, rtol=1e-4)
    assert table.uns[UNS_KEY]["normalize"] == {"target_sum": 1e4, "key_added": NORM_LAYER}
    # The same values as scanpy's own normalize_total + log1p.
    want = sc.pp.log1p(sc.pp.normalize_total(table, target_sum=1e4, inplace=False)["X"].astype(np.float64))
    np.testing.assert_allclose(dense, want.toarray() if sparse.issparse(want) else want, rtol=1e-5)


def test_normalize_copy_leaves_input_untouched():
    adata = _hand_made()
    out = normalize(adata, target_sum=100, key_added="lognorm", copy=True)
    assert "lognorm" not in adata.layers and "lognorm" in out.layers
    np.testing.assert_allclose(np.expm1(out.layers["lognorm"].toarray()).sum(axis=1), 100, rtol=1e-5)
    np.testing.assert_allclose(
        np.expm1(out.layers["lognorm"][0].toarray()).ravel(), [10, 20, 10, 20, 40], rtol=1e-5
    )


def test_filter_spots_anndata_in_place_and_copy(caplog):
    adata = _hand_made()[:, :2].copy()
    adata.X = sparse.csr_matrix(np.array([[50, 0], [60, 50], [0, 0], [200, 1]], dtype=np.int32))
    kept = filter_spots(adata, min_counts=100, copy=True)
    assert kept.obs_names.tolist() == ["a2", "b2"]
    assert adata.n_obs == 4
    with caplog.at_level(logging.INFO, logger="comtip_sc.pp._genes"):
        filter_spots(adata, min_counts=100)
    assert adata.obs_names.tolist() == ["a2", "b2"]
    assert adata.uns[UNS_KEY]["filter_spots"] == {"min_counts": 100, "n_removed": 2}
    assert "A: 1" in caplog.text and "B: 1" in caplog.text


def test_filter_spots_replaces_table_keeps_shapes(small_sdata):
    table = small_sdata.tables[TABLE_KEY]
    totals = np.asarray(table.X.sum(axis=1)).ravel()
    threshold = int(np.median(totals))
    expected = int((totals >= threshold).sum())
    assert 0 < expected < table.n_obs

    out = filter_spots(small_sdata, min_counts=threshold, copy=True)
    assert out.tables[TABLE_KEY].n_obs == expected and small_sdata.tables[TABLE_KEY].n_obs == 36

    filter_spots(small_sdata, min_counts=threshold)
    new = small_sdata.tables[TABLE_KEY]
    assert new is not table and new.n_obs == expected and table.n_obs == 36
    assert len(small_sdata.shapes["toy_spots"]) == 36
    assert (np.asarray(new.X.sum(axis=1)).ravel() >= threshold).all()
    assert new.uns["spatialdata_attrs"]["region"] == "toy_spots"


@pytest.mark.parametrize("bad", [-1, np.nan])
@pytest.mark.parametrize("func", [select_genes, normalize, filter_spots])
@pytest.mark.parametrize("as_sparse", [True, False])
def test_invalid_counts_name_spot_and_gene(func, bad, as_sparse):
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=float)
    x[1, 2] = bad
    x[2, 0] = bad
    adata = AnnData(
        X=sparse.csr_matrix(x) if as_sparse else x,
        obs=pd.DataFrame(index=["s0", "s1", "s2"]),
        var=pd.DataFrame(index=["A", "B", "C"]),
    )
    with pytest.raises(ValueError, match=r"spot 's1', gene 'C'"):
        func(adata)


def test_missing_table_lists_available(small_sdata):
    for func in (select_genes, normalize, filter_spots):
        with pytest.raises(KeyError, match=r"nope.*\['table'\]"):
            func(small_sdata, table_key="nope")


def test_old_argument_names_warn_and_still_work():
    adata = _hand_made()
    with pytest.warns(FutureWarning, match="n_top_genes"):
        select_genes(adata, n_top=2, groupby=None)
    assert int(adata.var[PANEL_KEY].sum()) == 2
    with pytest.warns(FutureWarning, match="key_added"):
        normalize(adata, layer_added="old")
    assert "old" in adata.layers
    with pytest.raises(TypeError, match="n_top_genes"):
        select_genes(adata, n_top=2, n_top_genes=3, groupby=None)
