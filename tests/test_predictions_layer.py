"""Predictions as scanpy and squidpy expect them: a sparse layer over the table's genes, plus an AnnData."""

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import comtip_sc as cs
from comtip_sc._constants import EMBED_KEY, PRED_KEY
from comtip_sc._predictions import get_predictions

GENES = ["KRT19", "COL1A1"]
OUTSIDE = "ERBB2_NOT_IN_PANEL"


@pytest.fixture(scope="module")
def predicted(tiny_model):
    sdata = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=3, sample_id="other")
    cs.tl.comtip_embed(sdata, tiny_model)
    cs.tl.comtip_predict(sdata, tiny_model, method="zero_shot", genes=[*GENES, OUTSIDE], use_rep=EMBED_KEY)
    return sdata


def _colours(axes):
    """The values of the scatter that scanpy drew."""
    ax = axes[0] if isinstance(axes, list) else axes
    return np.asarray(ax.collections[0].get_array())


def test_layer_is_sparse_with_the_predicted_genes_only(predicted):
    table = predicted.tables["table"]
    layer = table.layers[PRED_KEY]
    assert sp.issparse(layer) and layer.shape == table.shape and layer.nnz == table.n_obs * len(GENES)
    assert sorted(table.var_names[np.unique(layer.indices)]) == sorted(GENES)
    assert list(table.obsm[PRED_KEY].columns) == [OUTSIDE]
    rec = table.uns["comtip"]["predict"][PRED_KEY]
    assert rec["genes"] == [*GENES, OUTSIDE] and rec["unmeasured_genes"] == [OUTSIDE]


def test_scanpy_reads_the_layer(predicted):
    table = predicted.tables["table"]
    frame = get_predictions(table, PRED_KEY)
    got = sc.get.obs_df(table, keys=GENES, layer=PRED_KEY)
    np.testing.assert_allclose(got.to_numpy(), frame[GENES].to_numpy(), rtol=1e-6)
    axes = sc.pl.spatial(table.copy(), color="KRT19", layer=PRED_KEY, spot_size=100, show=False)
    # scanpy draws the spots sorted by value
    np.testing.assert_allclose(np.sort(_colours(axes)), np.sort(frame["KRT19"].to_numpy()), rtol=1e-6)
    plt.close("all")


def test_squidpy_reads_the_layer(predicted):
    sq = pytest.importorskip("squidpy")
    table = predicted.tables["table"].copy()
    sq.pl.spatial_scatter(table, color="KRT19", layer=PRED_KEY, shape=None, size=50)
    ax = plt.gca()
    np.testing.assert_allclose(
        np.sort(_colours(ax)), np.sort(get_predictions(table, PRED_KEY)["KRT19"].to_numpy()), rtol=1e-6
    )
    plt.close("all")


def test_predictions_adata_for_squidpy(predicted):
    table = predicted.tables["table"]
    pred = cs.tl.predictions_adata(predicted)
    assert list(pred.var_names) == [*GENES, OUTSIDE]
    assert pred.var["measured"].tolist() == [True, True, False]
    assert pred.obs_names.equals(table.obs_names)
    np.testing.assert_array_equal(pred.obsm["spatial"], table.obsm["spatial"])
    np.testing.assert_allclose(pred.X, get_predictions(table, PRED_KEY).to_numpy(), rtol=1e-6)
    sq = pytest.importorskip("squidpy")
    sq.gr.spatial_neighbors(pred, coord_type="generic", n_neighs=6)
    sq.gr.spatial_autocorr(pred, mode="moran", n_perms=None)
    assert set(pred.uns["moranI"].index) == {*GENES, OUTSIDE}
    # Nothing was written into the table.
    assert "moranI" not in table.uns and "spatial_connectivities" not in table.obsp


def test_predictions_survive_h5ad_and_evaluate(predicted, tmp_path):
    path = tmp_path / "t.h5ad"
    predicted.tables["table"].write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        get_predictions(back, PRED_KEY),
        get_predictions(predicted.tables["table"], PRED_KEY),
        check_dtype=False,
    )
    res = cs.tl.evaluate(back, pred_key=PRED_KEY)
    assert res.loc["all", "n_genes"] == len(GENES)


def test_a_second_call_replaces_the_first(tiny_model, predicted):
    out = cs.tl.comtip_predict(
        predicted, tiny_model, method="retrieval", genes=["KRT19"], use_rep=EMBED_KEY, copy=True
    )
    table = out.tables["table"]
    assert PRED_KEY not in table.obsm  # the earlier zero-shot gene outside the table is gone
    assert list(get_predictions(table, PRED_KEY).columns) == ["KRT19"]
    assert table.layers[PRED_KEY].nnz == table.n_obs


def test_older_tables_with_every_gene_in_obsm_still_read(predicted):
    table = predicted.tables["table"].copy()
    frame = get_predictions(table, PRED_KEY)
    del table.layers[PRED_KEY]
    table.obsm[PRED_KEY] = frame  # the layout written before predictions moved to layers
    res = cs.tl.evaluate(table, pred_key=PRED_KEY)
    assert res.loc["all", "n_genes"] == len(GENES)


def test_anndata_input(tiny_model, predicted):
    table = predicted.tables["table"]
    with pytest.raises(TypeError, match=r"needs a SpatialData.*from_legacy_anndata"):
        cs.tl.comtip_embed(table, tiny_model)
    with pytest.raises(TypeError, match=r"use_rep="):
        cs.tl.comtip_predict(table, tiny_model)
    # With the embeddings in obsm, an AnnData alone is enough.
    out = cs.tl.comtip_predict(table, tiny_model, use_rep=EMBED_KEY, genes=GENES, key_added="p", copy=True)
    assert isinstance(out, ad.AnnData) and "p" not in table.layers
    assert list(get_predictions(out, "p").columns) == GENES
