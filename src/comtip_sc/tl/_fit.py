"""``cs.tl.fit``: train a CoMTIP model on one or several SpatialData objects.

``fit`` only orchestrates: :mod:`comtip_sc.train` registers the sections, builds the training plan and
runs it with Lightning; the zero-shot read-out is calibrated on the result, and the result is scored against
the simple colour bar on the held-out sections (the self-check).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning as L
from anndata import AnnData
from spatialdata import SpatialData

from .._constants import DEFAULT_TILE_UM, N_TOP_GENES, TABLE_KEY
from .._logging import third_party_quiet
from .._presets import AUTO_PRESET
from ..model._comtip_model import ComtipModel
from ..model._config import ComtipConfig
from ..model._trunk import TRUNK_PRESETS
from ..train import TrainRunner, TrainSettings, register_all, resolve_settings, training_plan
from ._auto import fit_auto
from ._fit_check import finish_fit

log = logging.getLogger(__name__)


@third_party_quiet()
def fit(
    sdata: SpatialData | Sequence[SpatialData],
    *,
    table_key: str = TABLE_KEY,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int = N_TOP_GENES,
    preset: str = "cpu",
    config: ComtipConfig | None = None,
    settings: TrainSettings | None = None,
    tile_um: float = DEFAULT_TILE_UM,
    spot_diameter_um: float | None = None,
    val_sections: Sequence[str] | str | None = "auto",
    check: bool = True,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    precision: str | None = None,
    seed: int | None = None,
    tile_cache: str | None = None,
    ckpt_path: str | None = None,
    **kwargs: Any,
) -> ComtipModel:
    """Train a CoMTIP model (MFM vision branch + Gene-Text Encoder with PAAT, aligned by InfoNCE).

    Parameters
    ----------
    sdata
        One SpatialData or a list of them (e.g. datasets with different gene sets). Each needs a
        table annotating spot circles that share a coordinate system with an H&E image.
    table_key
        Table of each SpatialData.
    layer
        Layer holding normalised (1e4 + log1p) expression; ``None`` normalises the raw counts in ``X``
        on the fly (nothing is written into the table).
    genes
        Gene panel. ``None`` uses ``var["comtip_panel"]`` when present (see
        :func:`comtip_sc.pp.select_genes`) or else the top ``n_top_genes`` genes by mean among genes
        present in every section.
    n_top_genes
        Panel size when it is chosen here.
    preset
        Network and training recipe to start from (``docs/model.md``): ``"cpu"`` (frozen ImageNet
        EfficientNet-Lite0 at 128 px + a small token transformer), ``"gpu"`` or ``"paper"`` (CLIP ViT-B/32
        at 224 px, fine-tuned; CLIP weights from ``checkpoint_path``), ``"pathology"`` (frozen UNI from
        ``checkpoint_path`` + a token transformer) or ``"vit-tiny"`` (ViT-Ti/16 at 112 px from scratch).
        ``"auto"``: fit each configuration of a small documented set (``docs/model.md``: the ``cpu`` preset,
        with per-section colour standardisation, with a 3× context tile, with stain jitter, and
        ``vit-tiny`` at 64 px) on the same training and held-out sections with the same seed, and return
        the one whose self-check scores best (the best read-out's PCC-ALL on the held-out sections; a tie
        goes to the earlier, cheaper one). Every candidate's scores go to the log and to
        ``model.history["auto"]``. It costs about as much as fitting every candidate; it needs held-out
        sections (``val_sections``), ``check=True`` and no ``config``. Keyword settings (``max_epochs=``,
        ``tile_px=``, ...) and ``settings`` apply to every candidate, over the candidate's own;
        ``default_root_dir`` gets one folder per candidate.
    config
        The network, a :class:`~comtip_sc.model.ComtipConfig`; overrides ``preset``'s network.
    settings
        Optimiser, epochs, batching, validation and the data settings, a
        :class:`~comtip_sc.train.TrainSettings`; ``None``: ``preset``'s recipe. Its (or the keyword)
        ``colour_norm="section"`` standardises each section's tile colour, in training and in every later
        prediction; ``context_scale=3`` adds a 3× context tile.
    tile_um
        Physical tile side in µm.
    spot_diameter_um
        Spot diameter in µm, for tables that do not record it in ``uns["comtip"]["spot_diameter_um"]``
        (e.g. ``spatialdata_io.visium`` output: 55). It fixes the µm scale of each section.
    val_sections
        Whole sections held out for validation and early stopping. ``"auto"``: when the table has a
        ``patient`` / ``individual`` / ``donor`` / ``subject`` column with at least two values, every
        section of the group with the fewest spots; else the last section when there are several, none
        when there is one. ``None``: no validation. Held-out sections do not train the network; they are
        in the reference bank (retrieval and the head use every section given to ``fit``).
    check
        The self-check (:func:`~comtip_sc.tl.self_check`): after training, every read-out (retrieval, head,
        zero-shot, hybrid) and the simple colour bar (the best of the colour-statistics ridges, fitted on the
        training sections) are scored with PCC-ALL on the held-out sections. The table is logged, kept in
        ``model.validation_`` (saved with the model) and summarised in ``repr(model)``; a warning says when
        no read-out beats the bar. ``fit`` does not refit on all sections afterwards: the returned network
        is the one that was checked (the held-out sections join only its reference bank).
    accelerator, devices, precision
        Lightning's device settings. ``precision=None``: :func:`~comtip_sc.train.default_precision`
        (``"bf16-mixed"`` on GPUs that support it, ``"32-true"`` elsewhere). With several devices, InfoNCE
        negatives are gathered across processes with gradients.
    seed
        Seed everything (weights, masks, batches, augmentations) for a reproducible run.
    tile_cache
        Folder for zarr tile and trunk-token caches, reused by later runs (``None``: a temporary folder).
    ckpt_path
        Resume training from this Lightning checkpoint.
    **kwargs
        Shortcuts: a :class:`~comtip_sc.train.TrainSettings` field (``max_epochs=5``, ``batch_size=64``,
        ``lr=1e-4``) overrides ``settings``; a :class:`~comtip_sc.model.ComtipConfig` field
        (``backbone=``, ``pretrained=``, ``checkpoint_path=``, ``tile_px=``, ``freeze_backbone=``, ...)
        overrides the network; ``None`` values are ignored. Anything else goes to
        :class:`lightning.pytorch.Trainer` (``callbacks``, ``logger``, ``strategy``, ``num_nodes``,
        ``enable_progress_bar``, ...). Logs and checkpoints go to ``default_root_dir`` when it is given;
        otherwise to a temporary folder removed when ``fit`` returns or fails, so nothing is written into
        the working directory. With held-out sections the weights of the best validation epoch are
        returned.

    Returns
    -------
    The trained :class:`~comtip_sc.model.ComtipModel`, with a retrieval reference bank of every spot given
    to ``fit``.

    Examples
    --------
    >>> import comtip_sc as cs
    >>> sdata = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30)
    >>> model = cs.tl.fit(sdata, max_epochs=1, batch_size=16, enable_progress_bar=False)  # doctest: +SKIP

    """
    arguments = dict(locals())  # preset="auto" calls fit once per candidate with these
    datasets = [sdata] if isinstance(sdata, SpatialData | AnnData) else list(sdata)
    bad = [type(d).__name__ for d in datasets if not isinstance(d, SpatialData)]
    if bad or not datasets:
        raise TypeError(
            f"fit needs one or more SpatialData objects (H&E image, spot shapes, annotating table), got "
            f"{bad or 'nothing'}. Read data with cs.io, cs.datasets or spatialdata_io."
        )
    if preset == AUTO_PRESET:
        return fit_auto(fit, datasets, arguments)
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)
    cfg, settings, trainer_kwargs = resolve_settings(preset, config, settings, kwargs)
    _check_local_weights(preset, cfg)
    data = register_all(
        datasets,
        val_sections,
        smooth_targets=settings.smooth_targets,
        table_key=table_key,
        layer=layer,
        genes=genes,
        n_top_genes=n_top_genes,
        tile_um=tile_um,
        tile_px=cfg.tile_px,
        colour_norm=settings.colour_norm,
        context_scale=settings.context_scale,
        tile_cache=tile_cache,
        spot_diameter_um=spot_diameter_um,
    )
    runner = TrainRunner(
        training_plan(cfg, data, settings),
        data,
        settings,
        tile_um=tile_um,
        layer=layer,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        seed=seed,
        ckpt_path=ckpt_path,
        tile_cache=tile_cache,
        trainer_kwargs=trainer_kwargs,
    )
    finish = partial(
        finish_fit,
        datasets=datasets,
        data=data,
        check=check,
        table_key=table_key,
        layer=layer,
        spot_diameter_um=spot_diameter_um,
        accelerator=accelerator,
    )
    return runner.run(finish=finish)


def _check_local_weights(preset: str, cfg: ComtipConfig) -> None:
    if (
        preset == "pathology"
        and cfg.pretrained
        and cfg.checkpoint_path is None
        and cfg.backbone in TRUNK_PRESETS
    ):
        raise ValueError(
            f"preset='pathology' runs a frozen foundation model ({cfg.backbone!r}) from local weights: pass "
            "checkpoint_path=<its weights file> (see docs/model.md for the file of each named trunk)."
        )
