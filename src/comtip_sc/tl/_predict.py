"""``cs.tl.comtip_predict``: expression from images alone (retrieval, zero-shot, ridge head)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import PRED_KEY, RETRIEVAL_K, TABLE_KEY
from .._deprecation import renamed_arguments
from .._devices import resolve_device
from .._predictions import split_by_table, store_predictions
from .._sections import resolve_sections, spot_layout
from .._store import store_path, write_table
from .._tables import check_genes, get_table, normalized_values, require_spatialdata
from ..model._comtip_model import ComtipModel, ReferenceBank
from ..model._inference import embed_batch_size, encode_pairs, network_device
from ..model._retrieval import retrieve
from ..pp._smooth import smooth_over_neighbours
from ..train._datamodule import SpotDataModule, SpotSentences
from ._embed import image_embeddings
from ._head import bank_folds, pattern_ridge
from ._hybrid import hybrid_head, model_colour_features
from ._ridge import CV_BLOCKS
from ._utils import record, target
from ._zero_shot import readout_temperature, zero_shot_values

log = logging.getLogger(__name__)


def reference_from(
    sdata: SpatialData,
    model: ComtipModel,
    *,
    table_key: str = TABLE_KEY,
    batch_size: int | None = None,
    spot_diameter_um: float | None = None,
    device: torch.device | None = None,
) -> ReferenceBank:
    """Build a retrieval bank from a user-given reference SpatialData with the model's panel genes.

    The reference is encoded on ``device`` (default: wherever the model's network is).

    Examples
    --------
    >>> bank = reference_from(ref_sdata, model)  # doctest: +SKIP

    """
    table = get_table(sdata, table_key)
    check_genes(table, what=f"Reference table {table_key!r}")
    genes = [g for g in model.panel if g in table.var_names]
    if not genes:
        raise ValueError(f"Reference table {table_key!r} shares no gene with the model's panel.")
    values = normalized_values(table, genes)
    tiles = model.tiles(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um)
    net = model.network if device is None else model.network.to(device)
    ds = SpotSentences(tiles, values, net.gene_index(genes).numpy(), group=0)
    loader = SpotDataModule(
        [ds],
        batch_size=embed_batch_size(network_device(net), batch_size),
        mean=net.image_mean,
        std=net.image_std,
    ).predict_loader(ds)
    sections, centres = spot_layout(
        resolve_sections(sdata, table_key=table_key, spot_diameter_um=spot_diameter_um), table.n_obs
    )
    sentences, images = encode_pairs(net, loader)
    return ReferenceBank(sentences, values, genes, table.obs_names.tolist(), images, sections, centres)


def _retrieval(img: np.ndarray, bank: ReferenceBank, k: int, device: torch.device) -> np.ndarray:
    return retrieve(img, bank, k, device=device)  # chunked top-k: never a spots × bank matrix


def _head(img: np.ndarray, bank: ReferenceBank, cv_blocks: int | None) -> tuple[np.ndarray, dict]:
    """Ridge predictions and how the penalty was chosen (``{"head_cv": ..., "head_alphas": [...]}``)."""
    if bank.image_embeddings is None:
        raise ValueError(
            "The reference bank has no image embeddings; 'head' needs a bank built by fit or reference=."
        )
    # Banks saved by earlier versions have no spot centres: leave-one-spot-out, and uns says so.
    folds = bank_folds(bank, cv_blocks)
    pred, alphas, _ = pattern_ridge(bank.image_embeddings, bank.expression, folds, img)
    return pred, {"head_cv": "loo" if folds is None else f"{cv_blocks} spatial blocks", "head_alphas": alphas}


@renamed_arguments(layer_added="key_added")
def comtip_predict(
    sdata: SpatialData | AnnData,
    model: ComtipModel,
    *,
    method: Literal["retrieval", "zero_shot", "head", "hybrid"] = "retrieval",
    genes: Sequence[str] | None = None,
    k: int = RETRIEVAL_K,
    temperature: float | None = None,
    cv_blocks: int | None = CV_BLOCKS,
    reference: SpatialData | None = None,
    reference_table_key: str = TABLE_KEY,
    smooth: int | None = None,
    table_key: str = TABLE_KEY,
    key_added: str = PRED_KEY,
    use_rep: str | None = None,
    spot_diameter_um: float | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    accelerator: str = "auto",
    copy: bool = False,
    write: bool = False,
) -> SpatialData | None:
    """Predict expression from the H&E tiles alone.

    Parameters
    ----------
    sdata
        SpatialData whose table's spots are predicted (a section the model never saw works), or an AnnData
        with their image embeddings in ``obsm[use_rep]`` (no image is read then; ``smooth`` and
        ``write`` need the SpatialData).
    model
        A trained :class:`~comtip_sc.model.ComtipModel`.
    method
        ``"retrieval"``: mean expression of the ``k`` reference spots whose gene-sentence embeddings are
        most similar to the spot's image embedding (BLEEP-style). ``"zero_shot"``: no reference; for each
        gene, the expected value under the softmax over sentences carrying that gene at candidate
        values (the ``config.value_query_candidates`` values the model trained its read-out on, from 0 to
        the gene's training maximum) — works for genes outside the training panel, embedded from their
        names. ``"head"``: a ridge regression fitted on the reference spots' frozen image embeddings, its
        penalty chosen by spatial-block CV (``cv_blocks``). ``"hybrid"``: the same ridge over the image
        embedding and the tiles' colour statistics (:func:`~comtip_sc.pp.colour_features`: spot tile and
        3× context tile), each block z-scored within each section; the colour block's weight (0.5, 1 or 2)
        and the penalty are chosen together by the spatial-block CV. It needs the colour statistics of the
        reference spots: a bank that carries them, or ``reference=`` (computed from its images).
    genes
        Genes to predict. Default: the model's panel (the reference's genes for the ridge and retrieval
        methods).
    k
        Neighbours for ``"retrieval"``.
    cv_blocks
        ``"head"``, ``"hybrid"``: each reference section is cut into this many contiguous blocks
        (k-means of the spot centres) and the ridge penalty (0.01 … 1.5e6, 19 values) is chosen by leaving
        out one block of every section at a time (R² averaged over genes). ``None``: leave-one-spot-out CV,
        which keeps a spot's neighbours in the fit and under-regularises for a new patient
        (``docs/benchmarks.md``). Banks saved by earlier versions carry no spot centres and use ``None``.
    temperature
        Softmax temperature of ``"zero_shot"``. Default: the one :func:`~comtip_sc.tl.fit` chose on the
        training spots (``model.zero_shot_temperature``; see ``model.history["zero_shot_calibration"]``), or
        the learned temperature for a model without one. Lower reads the nearest candidate value, higher a
        smoother average. Given, it also sets aside the per-gene linear read-out that ``fit``
        fitted for panel genes (``model.zero_shot_readout``), which the default uses: every gene is then
        read by the softmax.
    reference
        A reference SpatialData to retrieve from / fit the head on, instead of the bank stored in the model.
    reference_table_key
        Table of ``reference``.
    smooth
        ``None`` (default): each spot's prediction from its own tile. An int ``k``: afterwards, replace
        each spot's prediction by the mean of it and its ``k`` nearest spots of the same section (spot
        centres; squidpy's k-nearest-neighbour spatial graph). Expression
        varies smoothly over tissue while a tile's read-out is noisy, so averaging trades some resolution
        for less noise; sections never mix. 6 is a spot's ring of neighbours on a hexagonal Visium grid,
        4 on a square legacy ST grid.
    table_key
        Table whose spots are predicted.
    key_added
        Where the predictions go (values on the normalised log1p scale): ``layers[key_added]`` holds the
        genes the table measures, as a sparse matrix over the table's genes whose stored entries are the
        predicted genes' columns (other genes are implicit zeros); ``obsm[key_added]`` holds a
        :class:`pandas.DataFrame` of spots × the predicted genes the table does not measure (absent when
        there are none). ``uns["comtip"]["predict"][key_added]["genes"]`` lists every predicted gene.
        :func:`predictions_adata` returns them all as one AnnData. Formerly ``layer_added``, still
        accepted with a :class:`FutureWarning`.
    use_rep
        ``obsm`` key of precomputed image embeddings from :func:`comtip_embed` with this model (default:
        computed here).
    spot_diameter_um
        Spot diameter in µm when the table does not record it (Visium: 55).
    tta
        Test-time augmentation of the embedding computed here (not of ``use_rep``, which then raises):
        each tile's embedding is the mean over its 8 dihedral views, as :func:`comtip_embed` with
        ``tta=True``.
    batch_size, accelerator
        Inference settings (default batch: 64 spots on the CPU, 512 on a GPU). ``accelerator`` also sets where retrieval runs (``"auto"``: a GPU when there is
        one; the bank is copied there once).
    write
        Also write the updated table into the zarr store backing ``sdata`` (:func:`comtip_sc.io.write_table`:
        a process killed part-way leaves the stored table as it was). Checked before any work: a SpatialData
        that is not backed, or a read-only store, raises at once.
    copy
        Return a new SpatialData instead of writing into ``sdata``.

    Returns
    -------
    ``None``, or the new SpatialData (AnnData) when ``copy=True``. Writes ``table.layers[key_added]`` (and
    ``table.obsm[key_added]`` for genes the table does not measure) and records the call in
    ``table.uns["comtip"]["predict"][key_added]`` (method, genes and settings), so predictions under
    different keys keep their own records.

    Examples
    --------
    >>> cs.tl.comtip_predict(sdata, model, method="zero_shot", genes=["ERBB2", "KRT19"])  # doctest: +SKIP
    >>> sc.get.obs_df(sdata.tables["table"], ["ERBB2"], layer="comtip_pred")  # doctest: +SKIP
    >>> pred = cs.tl.predictions_adata(sdata)  # doctest: +SKIP

    """
    if method not in ("retrieval", "zero_shot", "head", "hybrid"):
        raise ValueError(f"method must be 'retrieval', 'zero_shot', 'head' or 'hybrid', got {method!r}.")
    if tta and use_rep is not None:
        raise ValueError(
            "tta=True augments the embedding computed here, but use_rep= gives a precomputed one; embed "
            "with cs.tl.comtip_embed(..., tta=True) and pass its key as use_rep instead."
        )
    if method == "zero_shot" and not model.config.use_values:
        # Its sentences are gene names only: every candidate value gives the same sentence.
        raise ValueError(
            "method='zero_shot' needs a model trained with use_values=True; this names-only model cannot "
            "tell one candidate value from another. Use method='retrieval' or 'head'."
        )
    if cv_blocks is not None and cv_blocks < 2:
        raise ValueError(f"cv_blocks must be at least 2 or None, got {cv_blocks!r}.")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}.")
    if smooth is not None and (isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1):
        raise ValueError(f"smooth must be None or a positive int (neighbours per spot), got {smooth!r}.")
    if genes is not None:
        genes = list(dict.fromkeys(genes))  # one column per gene
    if write:
        if copy:
            raise ValueError(
                "write=True writes into the store of sdata, which copy=True promises to leave alone."
            )
        store_path(sdata)  # fail before the work, not after it
    if isinstance(sdata, AnnData) and use_rep is not None and smooth is None and not write:
        # Embeddings already in obsm: no image is read, so the table alone is enough.
        out = sdata.copy() if copy else sdata
        table = out
    else:
        require_spatialdata(
            sdata,
            "cs.tl.comtip_predict",
            " An AnnData alone works with use_rep= (image embeddings from cs.tl.comtip_embed in its obsm), "
            "without smooth= and write=.",
        )
        out, table = target(sdata, table_key, copy)
    check_genes(table, what=f"Table {table_key!r}")
    device = resolve_device(accelerator)
    if use_rep is not None:
        if use_rep not in table.obsm:
            raise KeyError(
                f"use_rep={use_rep!r} is not in table {table_key!r}.obsm; run cs.tl.comtip_embed first."
            )
        img = np.asarray(table.obsm[use_rep], dtype=np.float32)
    else:
        img = image_embeddings(
            out,
            model,
            table_key=table_key,
            batch_size=batch_size,
            device=device,
            spot_diameter_um=spot_diameter_um,
            tta=tta,
        )
    if method == "zero_shot":
        names = list(genes) if genes is not None else list(model.panel)
        temp = readout_temperature(model) if temperature is None else float(temperature)
        # An explicit temperature asks for the softmax read-out of every gene.
        (pred,) = zero_shot_values(img, model, names, [temp], calibrated=temperature is None)
    else:
        bank = (
            reference_from(
                reference,
                model,
                table_key=reference_table_key,
                batch_size=batch_size,
                spot_diameter_um=spot_diameter_um,
                device=device,
            )
            if reference is not None
            else model.reference
        )
        if bank is None:
            raise ValueError("The model stores no reference bank; pass reference= or use method='zero_shot'.")
        if method == "retrieval":
            pred = _retrieval(img, bank, k, device)
        elif method == "head":
            pred, head = _head(img, bank, cv_blocks)
        else:
            ref = None if reference is None else (reference, reference_table_key)
            pred, head = _hybrid(out, model, img, bank, ref, cv_blocks, table_key, spot_diameter_um)
        names = list(bank.genes)
        if genes is not None:
            missing = [g for g in genes if g not in names]
            if missing:
                raise KeyError(
                    f"Genes {missing[:10]} are not in the reference; predict them with method='zero_shot'."
                )
            cols = [names.index(g) for g in genes]
            pred, names = pred[:, cols], list(genes)
    if smooth is not None:
        resolved = resolve_sections(out, table_key=table_key, spot_diameter_um=spot_diameter_um)
        spot_sections, centres = spot_layout(resolved, table.n_obs)
        pred = smooth_over_neighbours(pred, centres, spot_sections, smooth)
    in_table, _ = split_by_table(names, table)
    _report_genes(names, in_table, table, genes is None, key_added)  # may refuse: before any write
    store_predictions(table, pred, names, key_added)
    record(
        table,
        "predict",
        key_added,
        {
            "method": method,
            "genes": list(names),
            "unmeasured_genes": [g for g in names if g not in in_table],
            "k": k if method == "retrieval" else None,
            "temperature": temp if method == "zero_shot" else None,
            "head_cv": head["head_cv"] if method in ("head", "hybrid") else None,
            "head_alphas": head["head_alphas"] if method in ("head", "hybrid") else None,
            "colour_weight": head["colour_weight"] if method == "hybrid" else None,
            "reference": "given" if reference is not None else "model bank",
            "smooth": smooth,
            "tta": tta,
        },
    )
    if write:
        write_table(out, table_key)
    return out if copy else None


def _hybrid(out, model, img, bank, reference, cv_blocks, table_key, spot_diameter_um):
    """``"hybrid"``: colour statistics of the predicted spots, then the ridge.

    ``reference``: ``None`` or ``(SpatialData, table key)``, whose colour statistics then fill ``bank``
    (built from it by :func:`reference_from`, in its table's order).
    """
    if reference is not None:
        bank.colour = model_colour_features(
            reference[0], model, table_key=reference[1], spot_diameter_um=spot_diameter_um
        )
    colour = model_colour_features(out, model, table_key=table_key, spot_diameter_um=spot_diameter_um)
    resolved = resolve_sections(out, table_key=table_key, spot_diameter_um=spot_diameter_um)
    sections, _ = spot_layout(resolved, len(img))
    return hybrid_head(img, colour, sections, bank, cv_blocks)


def _report_genes(names: list[str], in_table: list[str], table, default: bool, key: str) -> None:
    """Refuse a default prediction that shares no gene with the table (another gene-id namespace); log a partial one."""
    if default and table.n_vars and names and not in_table:
        raise ValueError(
            f"None of the {len(names)} genes the model predicts (e.g. {names[:3]}) is in the table's "
            f"var_names (e.g. {table.var_names[:3].tolist()}): the table and the model name genes differently "
            "(e.g. Ensembl ids vs symbols). Set var_names to the model's kind of names, or pass genes= to "
            f"predict into obsm[{key!r}] anyway."
        )
    if len(in_table) < len(names):
        lacking = [g for g in names if g not in set(in_table)]
        log.warning(
            "%d of the %d predicted genes are not in the table (e.g. %s); their predictions are in obsm[%r] "
            "(the others in layers[%r]) and listed in uns['comtip']['predict'][%r]['unmeasured_genes'].",
            len(lacking),
            len(names),
            lacking[:5],
            key,
            key,
            key,
        )
