"""cs.tl.self_check: every read-out and the simple colour bar, scored on whole held-out sections."""

import logging

import numpy as np
import pytest
import spatialdata as sd

import comtip_sc as cs
from comtip_sc._tables import normalized_values

SAMPLES = ("a", "b", "c")


@pytest.fixture(scope="module")
def tissue():
    """Three toy sections in one SpatialData, as a reader of a multi-section dataset gives them."""
    parts = [
        cs.datasets.toy_tissue(n_rows=7, n_cols=7, n_genes=30, seed=i, sample_id=s)
        for i, s in enumerate(SAMPLES)
    ]
    sdata = sd.concatenate(parts, concatenate_tables=True)
    # concatenate keeps one table's uns only: put every section's spot diameter back.
    sdata.tables["table"].uns["comtip"] = {
        key: {s: p.tables["table"].uns["comtip"][key][s] for s, p in zip(SAMPLES, parts, strict=True)}
        for key in ("spot_diameter_um", "um_per_px")
    }
    return sdata


@pytest.fixture(scope="module")
def split(tissue):
    sample = tissue.tables["table"].obs["sample"].to_numpy()
    return cs.pp.subset_sections(tissue, sample != "c"), cs.pp.subset_sections(tissue, sample == "c")


@pytest.fixture(scope="module")
def model(split, tiny_config, tmp_path_factory, one_torch_thread):
    return cs.tl.fit(
        split[0],
        config=tiny_config,
        tile_um=100,
        max_epochs=1,
        batch_size=16,
        seed=0,
        val_sections=None,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path_factory.mktemp("self_check")),
    )


@pytest.fixture(scope="module")
def checked(model, split):
    train, held = split
    before = (held.tables["table"].copy(), len(model.reference.embeddings))
    table = cs.tl.self_check(model, train, held)
    return table, before


def test_self_check_scores_every_readout_and_the_bar(checked, model):
    table, _ = checked
    bar_row = f"simple bar ({table.attrs['bar_variant']})"
    assert list(table.index) == ["retrieval", "head", "zero_shot", "hybrid", bar_row]
    assert list(table.columns) == ["pcc_all", "vs_bar", "beats_bar", "n_spots", "n_genes"]
    scores = table["pcc_all"].to_numpy()
    assert np.isfinite(scores).all() and (np.abs(scores) <= 1).all()
    np.testing.assert_allclose(table["vs_bar"], scores - table.loc[bar_row, "pcc_all"])
    assert list(table["beats_bar"]) == [*(scores[:4] > scores[4]), False]
    assert (table["n_spots"] == 49).all() and (table["n_genes"] == len(model.panel)).all()
    assert (
        set(table.attrs["bar_cv_pcc"]) >= {table.attrs["bar_variant"]} and table.attrs["genes"] == model.panel
    )


def test_bar_row_is_the_bar_called_directly(checked, model, split):
    table, _ = checked
    train, held = split
    bar = cs.tl.colour_bar(
        train, held, genes=table.attrs["genes"], tile_um=model.tile_um, tile_px=model.tile_px
    )
    truth = normalized_values(held.tables["table"], table.attrs["genes"])
    # Every variant scored directly on the held-out spots; the bar row is the best of them.
    direct = {
        name: cs.tl.pearson_per_gene(truth, pred.astype(np.float64)).mean()
        for name, pred in bar.fit.predictions.items()
    }
    best = max(direct, key=direct.get)
    assert table.attrs["bar_variant"] == best and set(table.attrs["bar_held_out_pcc"]) == set(direct)
    assert table.loc[f"simple bar ({best})", "pcc_all"] == pytest.approx(direct[best], abs=1e-9)
    # The variant colour_bar picks by training CV predicts as its own row says.
    chosen = cs.tl.pearson_per_gene(truth, bar.predictions[0].to_numpy(np.float64)).mean()
    assert direct[bar.variant] == pytest.approx(chosen, abs=1e-9)


def test_self_check_leaves_the_users_objects_alone(checked, model, split):
    _, (table_before, n_bank) = checked
    held = split[1].tables["table"]
    assert set(held.obsm) == set(table_before.obsm) and set(held.uns) == set(table_before.uns)
    assert held.uns.get("comtip", {}).keys() == table_before.uns.get("comtip", {}).keys()
    # fit gave the bank its colour statistics; the check leaves the bank's rows as they were.
    assert len(model.reference.embeddings) == n_bank and len(model.reference.colour) == n_bank


def test_format_self_check_names_every_row(checked):
    table, _ = checked
    text = cs.tl.format_self_check(table)
    assert text.startswith("Self-check on 49 held-out spots")
    for name in table.index:
        assert name in text
    assert ("No read-out beats the simple bar." in text) == (not table["beats_bar"].any())


def test_held_out_spots_in_the_bank_are_left_out(model, split, tissue, caplog):
    sample = tissue.tables["table"].obs["sample"].to_numpy()
    train_a, held_b = (cs.pp.subset_sections(tissue, sample == s) for s in "ab")
    with caplog.at_level(logging.INFO, logger="comtip_sc.tl._self_check"):
        table = cs.tl.self_check(model, train_a, held_b, ["KRT19", "COL1A1"], readouts=("retrieval", "head"))
    assert "49 held-out spots left out of the reference bank" in caplog.text
    assert list(table.index[:2]) == ["retrieval", "head"] and np.isfinite(table["pcc_all"]).all()
    with pytest.raises(ValueError, match="readouts"):
        cs.tl.self_check(model, train_a, held_b, readouts=("ridge",))
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        cs.tl.self_check(model, train_a, held_b, ["NOT_A_GENE"])
