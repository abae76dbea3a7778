"""Plots: observed-vs-predicted maps, per-gene Pearson and the embedding UMAP render and say the truth."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import spatialdata as sd
from matplotlib.collections import EllipseCollection
from matplotlib.image import imread

import comtip_sc as cs
from comtip_sc._constants import PRED_KEY
from comtip_sc._predictions import get_predictions
from comtip_sc._tables import normalized_values
from comtip_sc.pl import _layout

GENES = ["KRT19", "COL1A1"]
EXTRA = "ERBB2_NOT_IN_PANEL"


def _toy(seed=0, sample_id="toy"):
    return cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=seed, sample_id=sample_id)


@pytest.fixture(scope="module")
def predicted(tiny_model):
    """The training toy with zero-shot predictions (two panel genes + one outside it) and PCC in var."""
    sdata = _toy()
    cs.tl.comtip_embed(sdata, tiny_model)
    cs.tl.comtip_predict(sdata, tiny_model, method="zero_shot", genes=[*GENES, EXTRA], use_rep="X_comtip")
    cs.tl.evaluate(sdata, key_added="comtip_pcc")
    return sdata


def _assert_png(path, min_bytes=10_000):
    assert path.is_file() and path.stat().st_size > min_bytes
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    # Not a blank canvas: something was drawn.
    assert img[..., :3].std() > 0.05


def _maps_of(ax):
    return [c for c in ax.collections if isinstance(c, EllipseCollection)]


# ------------------------------------------------------------------ predicted_vs_observed
def test_map_renders_png(predicted, tmp_path):
    out = tmp_path / "map.png"
    axes = cs.pl.predicted_vs_observed(predicted, GENES, save=out, show=False)
    _assert_png(out, min_bytes=50_000)
    # As in scanpy: show=False hands back the map axes and leaves the figure open for more drawing.
    assert len(axes) == 2 * len(GENES) and plt.fignum_exists(axes[0].figure.number)
    plt.close(axes[0].figure)
    assert cs.pl.predicted_vs_observed(predicted, GENES, save=out) is None  # saved, not shown: closed


def test_show_false_then_savefig_saves_the_figure(predicted, clustered, tmp_path):
    """The figure stays open after show=False, so plt.savefig writes what was drawn (not a blank page)."""
    for i, draw in enumerate(
        [
            lambda: cs.pl.predicted_vs_observed(predicted, GENES, show=False),
            lambda: cs.pl.gene_pcc(predicted, show=False),
            lambda: cs.pl.embedding(clustered, show=False),
        ]
    ):
        out = tmp_path / f"{i}.png"
        axes = draw()
        assert axes is not None
        plt.savefig(out)
        plt.close("all")
        _assert_png(out)


def test_each_map_row_has_its_own_r(predicted):
    fig = cs.pl.predicted_vs_observed(predicted, GENES, return_fig=True, show=False)
    try:
        table = predicted.tables["table"]
        obs = normalized_values(table, GENES)
        pred = get_predictions(table, PRED_KEY)[GENES].to_numpy()
        axes = np.array(fig.axes[: 3 * len(GENES)]).reshape(len(GENES), 3)
        for j, gene in enumerate(GENES):
            r = np.corrcoef(obs[:, j], pred[:, j])[0, 1]
            assert axes[j, 0].get_title() == f"{gene} observed"
            assert axes[j, 1].get_title() == f"{gene} predicted, r = {r:.2f}"
    finally:
        plt.close(fig)


def test_map_rows_share_one_colour_scale(predicted):
    fig = cs.pl.predicted_vs_observed(predicted, GENES, return_fig=True, show=False)
    try:
        axes = np.array(fig.axes[: 3 * len(GENES)]).reshape(len(GENES), 3)
        table = predicted.tables["table"]
        for gene, (ax_obs, ax_pred, _) in zip(GENES, axes, strict=True):
            (obs_coll,) = _maps_of(ax_obs)
            (pred_coll,) = _maps_of(ax_pred)
            assert obs_coll.get_clim() == pred_coll.get_clim()
            # The scale spans both panels' values, and the panels show the right values.
            obs = normalized_values(table, [gene])[:, 0]
            pred = get_predictions(table, PRED_KEY)[gene].to_numpy()
            np.testing.assert_allclose(obs_coll.get_array(), obs, rtol=1e-6)
            np.testing.assert_allclose(pred_coll.get_array(), pred, rtol=1e-6)
            vmin, vmax = obs_coll.get_clim()
            assert vmin == pytest.approx(min(obs.min(), pred.min()))
            assert vmax == pytest.approx(max(obs.max(), pred.max()))
        # One colour bar per gene, not per panel.
        assert len(fig.axes) == 3 * len(GENES)
    finally:
        plt.close(fig)


def test_map_titles_carry_pearson_r(predicted):
    fig = cs.pl.predicted_vs_observed(predicted, "KRT19", return_fig=True, show=False)
    try:
        table = predicted.tables["table"]
        obs = normalized_values(table, ["KRT19"])[:, 0]
        pred = get_predictions(table, PRED_KEY)["KRT19"].to_numpy()
        r = np.corrcoef(obs, pred)[0, 1]
        titles = [ax.get_title() for ax in fig.axes[:2]]
        assert titles == ["KRT19 observed", f"KRT19 predicted, r = {r:.2f}"]
    finally:
        plt.close(fig)


def test_map_spots_have_true_radius_and_position(predicted):
    fig = cs.pl.predicted_vs_observed(predicted, "KRT19", return_fig=True, show=False)
    try:
        (coll,) = _maps_of(fig.axes[0])
        table = predicted.tables["table"]
        # Toy: 1 µm/px, 55 µm spots; the 1000 px image is under the background budget, so level 0.
        np.testing.assert_allclose(coll.get_widths(), 55.0)
        np.testing.assert_allclose(coll.get_offsets(), table.obsm["spatial"], atol=1e-6)
    finally:
        plt.close(fig)


def test_map_reads_a_coarse_level_and_scales_spots(predicted, monkeypatch):
    # With a small budget the 500 px level is enough: the background and the spots halve together.
    monkeypatch.setattr(_layout, "_BACKGROUND_PX", 200)
    fig = cs.pl.predicted_vs_observed(predicted, "KRT19", return_fig=True, show=False)
    try:
        ax = fig.axes[0]
        (img,) = ax.get_images()
        assert max(img.get_array().shape[:2]) <= 500
        (coll,) = _maps_of(ax)
        np.testing.assert_allclose(coll.get_widths(), 27.5)
        np.testing.assert_allclose(coll.get_offsets(), predicted.tables["table"].obsm["spatial"] / 2)
    finally:
        plt.close(fig)


def test_map_custom_spot_size(predicted):
    fig = cs.pl.predicted_vs_observed(predicted, "KRT19", spot_size=80, return_fig=True, show=False)
    try:
        np.testing.assert_allclose(_maps_of(fig.axes[0])[0].get_widths(), 80.0)
    finally:
        plt.close(fig)


def test_map_gene_outside_table_is_predicted_only(predicted, tmp_path):
    table = predicted.tables["table"]
    assert EXTRA in get_predictions(table, PRED_KEY).columns and EXTRA not in table.var_names
    fig = cs.pl.predicted_vs_observed(predicted, ["KRT19", EXTRA], return_fig=True, show=False)
    try:
        ax_obs, ax_pred = fig.axes[3], fig.axes[4]
        assert _maps_of(ax_obs) == []
        (coll,) = _maps_of(ax_pred)
        np.testing.assert_allclose(coll.get_array(), get_predictions(table, PRED_KEY)[EXTRA].to_numpy())
        assert ax_pred.get_title().startswith(f"{EXTRA} predicted")
        fig.savefig(tmp_path / "extra.png")
        _assert_png(tmp_path / "extra.png")
    finally:
        plt.close(fig)


def test_map_errors(predicted):
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        cs.pl.predicted_vs_observed(predicted, "NOT_A_GENE", show=False)
    with pytest.raises(KeyError, match=r"no_such_key.*comtip_predict"):
        cs.pl.predicted_vs_observed(predicted, "KRT19", pred_key="no_such_key", show=False)
    with pytest.warns(FutureWarning, match="pred_key"), pytest.raises(KeyError, match="old_name"):
        cs.pl.predicted_vs_observed(predicted, "KRT19", layer_pred="old_name", show=False)
    # A table gene that was not predicted is refused rather than drawn blank.
    with pytest.raises(KeyError, match=r"ACTB.*no prediction"):
        cs.pl.predicted_vs_observed(predicted, "ACTB", show=False)


def test_map_needs_sample_when_table_spans_sections(tiny_model, tmp_path):
    parts = [_toy(0, "toy"), _toy(5, "other")]
    both = sd.concatenate(parts, concatenate_tables=True)
    # spatialdata's concatenate drops uns; the readers' per-section records are merged back by hand.
    both.tables["table"].uns["comtip"] = {
        key: {s: v for p in parts for s, v in p.tables["table"].uns["comtip"][key].items()}
        for key in ("spot_diameter_um", "um_per_px")
    }
    cs.tl.comtip_predict(both, tiny_model, method="zero_shot", genes=GENES)
    with pytest.raises(ValueError, match=r"2 sections.*other.*toy.*sample="):
        cs.pl.predicted_vs_observed(both, "KRT19", show=False)
    with pytest.raises(KeyError, match="nowhere"):
        cs.pl.predicted_vs_observed(both, "KRT19", sample="nowhere", show=False)
    fig = cs.pl.predicted_vs_observed(both, "KRT19", sample="other", return_fig=True, show=False)
    try:
        table = both.tables["table"]
        rows = np.flatnonzero(table.obs["sample"].astype(str).to_numpy() == "other")
        (coll,) = _maps_of(fig.axes[1])
        pred = get_predictions(table, PRED_KEY)["KRT19"].to_numpy()[rows]
        np.testing.assert_allclose(coll.get_array(), pred)
        fig.savefig(tmp_path / "other.png")
        _assert_png(tmp_path / "other.png")
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ gene_pcc
def test_gene_pcc_renders_and_ranks(predicted, tmp_path):
    out = tmp_path / "pcc.png"
    cs.pl.gene_pcc(predicted, save=out)
    _assert_png(out)
    fig = cs.pl.gene_pcc(predicted.tables["table"], n_top_genes=1, return_fig=True, show=False)
    try:
        ax = fig.axes[0]
        r = predicted.tables["table"].var["comtip_pcc"].dropna()
        y = ax.collections[0].get_offsets()[:, 1]
        np.testing.assert_allclose(y, np.sort(r.to_numpy())[::-1])
        assert [t.get_text() for t in ax.texts] == [r.idxmax()]
    finally:
        plt.close(fig)


def test_gene_pcc_labels_do_not_overlap(predicted):
    fig = cs.pl.gene_pcc(predicted, n_top_genes=10, return_fig=True, show=False)
    try:
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in fig.axes[0].texts]
        assert len(boxes) == min(10, predicted.tables["table"].var["comtip_pcc"].notna().sum())
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1 :])
        legend = fig.axes[0].get_legend().get_window_extent()
        assert not any(legend.overlaps(b) for b in boxes)
    finally:
        plt.close(fig)


def test_gene_pcc_on_given_axes_and_errors(predicted):
    fig, ax = plt.subplots()
    try:
        assert cs.pl.gene_pcc(predicted, ax=ax, show=False) is ax
        assert plt.fignum_exists(fig.number)  # the caller's figure is not closed
    finally:
        plt.close(fig)
    with pytest.raises(KeyError, match="nope"):
        cs.pl.gene_pcc(predicted, key="nope", show=False)


# ------------------------------------------------------------------ embedding
@pytest.fixture(scope="module")
def clustered(tiny_model):
    sdata = _toy(sample_id="patient_A_section_1")  # a legend as wide as real section names
    cs.tl.comtip_embed(sdata, tiny_model)
    cs.tl.embedding_clusters(sdata, n_neighbors=10)
    return sdata


def test_embedding_clusters_writes_its_keys(tiny_model):
    sdata = _toy()
    cs.tl.comtip_embed(sdata, tiny_model)
    table = sdata.tables["table"]
    before = set(table.obsm.keys())
    out = cs.tl.embedding_clusters(sdata, n_neighbors=10, resolution=0.5, copy=True)
    assert set(table.obsm.keys()) == before and "comtip_leiden" not in table.obs  # copy=True: input untouched
    t = out.tables["table"]
    assert t.obsm["X_comtip_umap"].shape == (t.n_obs, 2)
    assert t.uns["X_comtip_neighbors"]["params"]["use_rep"] == "X_comtip"
    assert t.obsp["X_comtip_neighbors_connectivities"].shape == (t.n_obs, t.n_obs)
    assert t.obs["comtip_leiden"].dtype == "category" and t.obs["comtip_leiden"].notna().all()
    rec = t.uns["comtip"]["embedding_clusters"]["comtip_leiden"]
    assert rec["n_clusters"] == t.obs["comtip_leiden"].nunique() and rec["resolution"] == 0.5
    # scanpy's default keys stay free for an expression analysis of the same table.
    assert "neighbors" not in t.uns and "X_umap" not in t.obsm
    with pytest.raises(KeyError, match=r"X_missing.*comtip_embed"):
        cs.tl.embedding_clusters(sdata, use_rep="X_missing")


def test_embedding_renders_without_touching_the_table(clustered, tmp_path):
    table = clustered.tables["table"]
    before = (set(table.obs.columns), set(table.obsm.keys()), set(table.obsp.keys()), set(table.uns.keys()))
    out = tmp_path / "umap.png"
    cs.pl.embedding(clustered, save=out)
    _assert_png(out)
    after = (set(table.obs.columns), set(table.obsm.keys()), set(table.obsp.keys()), set(table.uns.keys()))
    assert after == before
    fig = cs.pl.embedding(clustered, return_fig=True, show=False)
    try:
        titles = [ax.get_title() for ax in fig.axes[:2]]
        assert titles == ["sample (X_comtip_umap)", "comtip_leiden (X_comtip_umap)"]
        fig.canvas.draw()
        # The first panel's legend ends before the second panel begins.
        legend = fig.axes[0].get_legend().get_window_extent()
        assert legend.x1 < fig.axes[1].get_window_extent().x0
    finally:
        plt.close(fig)
    ax = cs.pl.embedding(clustered, color="KRT19", ax=plt.subplots()[1], show=False)
    # The points are the stored layout (scanpy draws them sorted by colour value).
    np.testing.assert_allclose(
        np.sort(ax.collections[0].get_offsets(), axis=0),
        np.sort(table.obsm["X_comtip_umap"], axis=0),
        rtol=1e-5,
    )
    plt.close(ax.figure)


def test_embedding_errors_name_the_call_to_make(predicted, clustered):
    with pytest.raises(KeyError, match=r"X_comtip_umap.*cs\.tl\.embedding_clusters"):
        cs.pl.embedding(predicted, show=False)
    with pytest.raises(KeyError, match=r"no_column.*embedding_clusters"):
        cs.pl.embedding(clustered, color="no_column", show=False)
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match="single color"):
            cs.pl.embedding(clustered, ax=ax, show=False)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_map_on_her2st_a1(shared_data, tiny_model, tmp_path):
    sdata = cs.datasets.her2st(shared_data / "her2st", sections=["A1"])
    cs.tl.comtip_predict(sdata, tiny_model, method="zero_shot", genes=["ERBB2", "KRT19"])
    out = tmp_path / "a1.png"
    fig = cs.pl.predicted_vs_observed(sdata, ["ERBB2", "KRT19"], save=out, return_fig=True, show=False)
    try:
        _assert_png(out, min_bytes=50_000)
        ax = fig.axes[0]
        (img,) = ax.get_images()
        # The background is a crop around the spots, no larger than the 2000 px wide slide.
        assert max(img.get_array().shape[:2]) <= 2138
        # A1: 100 µm spots at ~3.18 µm/px are ~31 px across, drawn at that size.
        (coll,) = _maps_of(ax)
        assert np.median(coll.get_widths()) == pytest.approx(100 / 3.1848, rel=0.02)
    finally:
        plt.close(fig)
