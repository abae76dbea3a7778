"""Configuration of a CoMTIP network: one JSON-serialisable dataclass plus named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .._presets import _preset
from ._freeze import check_freeze

TextEncoderName = str  # "auto" | "minilm" | "char-ngram" | path to a local sentence-transformers model


@dataclass
class ComtipConfig:
    """Hyper-parameters of the CoMTIP network (architecture and loss weights).

    The defaults are the ``cpu`` preset (``ComtipConfig() == ComtipConfig.preset("cpu")``): a frozen
    ImageNet EfficientNet-Lite0 at 128 px under a 2-block token transformer. A config for another trunk
    states what differs, e.g. ``ComtipConfig.preset("vit-tiny")`` or
    ``ComtipConfig(backbone="resnet18", pretrained=False, freeze_backbone="none", token_depth=0)``.

    Every field is a plain JSON type, so ``ComtipConfig.from_dict(cfg.to_dict())`` round-trips and the dict
    can be stored in a Lightning checkpoint or next to saved weights.

    Parameters
    ----------
    backbone
        The trunk: any timm model name (ViTs such as ``vit_base_patch32_224``; CNNs such as ``resnet18``,
        ``densenet121``, ``tf_efficientnet_lite0``, ``convnext_tiny``), a named trunk
        (``"efficientnet_lite0.imagenet"``, ``"clip-vit-b32"``, ``"uni"``, ``"uni2-h"``, ``"virchow"``,
        ``"virchow2"``, ``"h-optimus-0"``; see ``docs/model.md``), ``hf-hub:owner/name`` (from the local
        Hugging Face cache) or ``local-dir:/folder``.
    pretrained
        Load pretrained backbone weights. Weights are only ever read locally: from ``checkpoint_path`` when
        given, else weights installed with a package (``efficientnet_lite0.imagenet``), else the local
        Hugging Face cache; nothing is downloaded.
    checkpoint_path
        Local weights file for ``backbone`` (``.safetensors``, ``.pth`` or ``.bin``; timm layout, or a layout
        timm's checkpoint filter converts such as OpenAI CLIP). Setting it implies ``pretrained``.
    backbone_kwargs
        Extra keyword arguments for :func:`timm.create_model` (e.g. ``depth=2, embed_dim=64`` for tests).
        ``pretrained_cfg_overlay`` (e.g. ``{"mean": [...], "std": [...]}``) is merged over the trunk's.
    tile_px
        Tile side in pixels; transformers are built with ``img_size=tile_px``.
    freeze_backbone
        ``"none"`` (train the whole trunk), ``"all"`` (a fixed feature extractor) or ``k``: train only the
        last ``k`` blocks (ViT) or stages (CNN) of timm's parameter grouping. Frozen parts stay in eval
        mode (BatchNorm statistics are not updated).
    token_depth
        Blocks of a trainable token transformer on top of the trunk's tokens (0: none). Needed for MFM
        when the trunk is frozen or is a CNN (MFM then masks the trunk's tokens at its input).
    token_dim, token_heads
        Width of the token transformer (``None``: the trunk's) and its attention heads (``None``:
        ``max(1, token_dim // 64)``).
    token_pool
        Global image feature of the token transformer: ``"cls"`` token or ``"mean"`` of its tokens.
    context_tile
        The network also reads a context tile: a second, wider tile around each spot, resampled to the
        same ``tile_px``. The trunk reads both tiles and their tokens enter the token transformer together
        (its position embedding tells them apart), so the image embedding and every read-out see the
        neighbourhood. How much wider is a data setting (``context_scale`` of
        :class:`~comtip_sc.train.TrainSettings`, kept by the trained model); :func:`~comtip_sc.tl.fit` sets
        this field from it. Needs a token transformer (``token_depth >= 1``) and a trunk that does not mask
        inside itself (a frozen trunk or a CNN).
    embed_dim
        Dimension of the shared, L2-normalised image/gene space.
    gene_dim
        Width of the Gene-Text Encoder's token states.
    mask_ratio
        Fraction ``r`` of patch tokens hidden in the masked branch of MFM.
    use_values
        Give each token a value embedding. ``False`` gives the names-only (OmiCLIP/Loki-like) sentence of the
        ``top_k_names`` most expressed genes.
    use_names
        Give each token a gene-name (text) embedding. ``False`` replaces it with a learned per-gene identity
        embedding (BLEEP-like, no text; genes outside the panel cannot be embedded).
    mfm
        Train with Masked Feature Modeling.
    paat
        Train with Pair-aware Adversarial Training (needs ``use_values``).
    lambda_mfm, lambda_paat
        Weights of the MFM and PAAT terms in the total loss.
    init_temperature
        Initial InfoNCE temperature (learned as ``logit_scale = log(1 / T)``, clamped to ``exp <= 100``).
    text_encoder
        Gene-name text backend: ``"minilm"`` (bundled all-MiniLM-L6-v2), ``"char-ngram"`` (dependency-free
        hashing), ``"auto"`` (minilm when importable) or a path to a local sentence-transformers model.
        :func:`~comtip_sc.model.build_network` stores the resolved backend in ``network.config``.
    char_ngram_dim
        Output dimension of the character n-gram backend.
    value_encoding
        ``"mlp"``: a small MLP on the continuous value (the only encoding implemented; see ``docs/model.md``).
    value_hidden
        Hidden width of the value MLP.
    n_pool_queries
        Number of learned queries of each attention-pooling layer in the Gene-Text Encoder.
    n_heads_gene
        Attention heads of the pooling layers.
    top_k_names
        Sentence length in names-only mode.
    paat_corrupt_frac
        Fraction of each sentence's real tokens whose values are permuted to build the mismatched sentence.
    gene_subsample
        Maximum number of genes per training sentence (random subset drawn per spot and step); ``None`` keeps
        all. Evaluation always uses all genes.
    mfm_loss
        ``"mse"`` or ``"cosine"`` (``1 - cos``) between generated and full-branch features.
    mfm_heads
        Attention heads of the Mask Feature Generator; ``None`` = ``max(1, backbone_dim // 64)``.
    dropout
        Dropout in the projection heads.
    value_query
        Train the zero-shot read-out with the value-query term (see :func:`~comtip_sc.model.value_query_loss`
        and ``docs/model.md``): one-pair sentences ``(gene, candidate value)`` for each panel gene, scored by
        the image. Needs ``use_values``. Not among the paper's losses; ablated in the
        benchmark.
    lambda_value_query
        Weight of the value-query term.
    value_query_genes, value_query_candidates
        Genes queried per training step and candidate values per gene.

    Examples
    --------
    >>> cfg = ComtipConfig.preset("cpu", mfm=False)
    >>> cfg.backbone, cfg.tile_px, cfg.freeze_backbone, cfg.mfm
    ('efficientnet_lite0.imagenet', 128, 'all', False)
    >>> ComtipConfig.from_dict(cfg.to_dict()) == cfg
    True

    """

    backbone: str = "efficientnet_lite0.imagenet"
    pretrained: bool = True
    checkpoint_path: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    tile_px: int = 128
    freeze_backbone: str | int = "all"
    token_depth: int = 2
    token_dim: int | None = 128
    token_heads: int | None = None
    token_pool: Literal["cls", "mean"] = "cls"
    context_tile: bool = False
    embed_dim: int = 128
    gene_dim: int = 64
    mask_ratio: float = 0.5
    use_values: bool = True
    use_names: bool = True
    mfm: bool = True
    paat: bool = True
    lambda_mfm: float = 1.0
    lambda_paat: float = 0.5
    init_temperature: float = 0.07
    text_encoder: TextEncoderName = "auto"
    char_ngram_dim: int = 256
    value_encoding: Literal["mlp"] = "mlp"
    value_hidden: int = 64
    n_pool_queries: int = 4
    n_heads_gene: int = 4
    top_k_names: int = 50
    paat_corrupt_frac: float = 0.3
    gene_subsample: int | None = None
    mfm_loss: Literal["mse", "cosine"] = "mse"
    mfm_heads: int | None = None
    dropout: float = 0.0
    value_query: bool = True
    lambda_value_query: float = 0.5
    value_query_genes: int = 256
    value_query_candidates: int = 8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent settings."""
        self.freeze_backbone = check_freeze(self.freeze_backbone)
        if self.token_depth < 0 or self.token_pool not in ("cls", "mean"):
            raise ValueError(
                f"token_depth must be >= 0 and token_pool 'cls' or 'mean', got {self.token_depth}, "
                f"{self.token_pool!r}."
            )
        if self.mfm and self.freeze_backbone == "all" and self.token_depth == 0:
            raise ValueError(
                "mfm=True with freeze_backbone='all' needs token_depth >= 1: MFM trains the first trainable "
                "transformer, and a frozen trunk has none."
            )
        if self.context_tile and self.token_depth < 1:
            raise ValueError(
                "A context tile (context_scale) needs token_depth >= 1: the context tile's tokens join the "
                f"spot's in the token transformer, and this config has token_depth {self.token_depth}."
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}.")
        if not self.use_names and not self.use_values:
            raise ValueError("At least one of use_names / use_values must be True.")
        if self.paat and not self.use_values:
            # PAAT mismatches gene-value pairs; a names-only sentence has no values to mismatch.
            raise ValueError(
                "paat=True needs use_values=True (names-only sentences have no gene-value pairs)."
            )
        if self.value_query and not self.use_values:
            raise ValueError(
                "value_query=True needs use_values=True (it queries a gene's value in the sentence)."
            )
        if self.value_query_genes < 1 or self.value_query_candidates < 2:
            raise ValueError("value_query_genes must be >= 1 and value_query_candidates >= 2.")
        if not 0.0 < self.paat_corrupt_frac <= 1.0:
            raise ValueError(f"paat_corrupt_frac must be in (0, 1], got {self.paat_corrupt_frac}.")
        if self.value_encoding != "mlp":
            raise ValueError(f"value_encoding must be 'mlp', got {self.value_encoding!r}.")
        if self.mfm_loss not in ("mse", "cosine"):
            raise ValueError(f"mfm_loss must be 'mse' or 'cosine', got {self.mfm_loss!r}.")
        if self.gene_dim % self.n_heads_gene:
            raise ValueError("gene_dim must be divisible by n_heads_gene.")
        if self.gene_subsample is not None and self.gene_subsample < 1:
            raise ValueError("gene_subsample must be a positive int or None.")
        if self.top_k_names < 1 or self.n_pool_queries < 1:
            raise ValueError("top_k_names and n_pool_queries must be >= 1.")

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields.

        Examples
        --------
        >>> ComtipConfig().to_dict()["backbone"]
        'efficientnet_lite0.imagenet'

        """
        d = dataclasses.asdict(self)
        json.dumps(d)  # fail early (here, not at save time) on a non-JSON value in backbone_kwargs
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComtipConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``TypeError``.

        A field missing from ``d`` takes the value it had when configs did not yet store it
        (``STORED_DEFAULTS``, the defaults of version 0.1), so a saved model always rebuilds the
        network it was trained with. The data settings that configs of version 0.1 also held
        (``colour_norm``, ``context_scale``, ``stain_jitter``, ``colour_jitter``) are read by
        :meth:`~comtip_sc.model.ComtipModel.load`, not here.

        Examples
        --------
        >>> ComtipConfig.from_dict({"mfm": False}).mfm
        False

        """
        d = dict(d)
        if "context_tile" not in d:
            # Configs stored before the data settings left the network config held the scale itself.
            d["context_tile"] = d.get("context_scale") is not None
        for name in DATA_FIELDS:
            d.pop(name, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TypeError(f"Unknown ComtipConfig fields: {sorted(unknown)}")
        merged = {**STORED_DEFAULTS, **d}
        return cls(**{k: (dict(v) if k == "backbone_kwargs" else v) for k, v in merged.items()})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ComtipConfig:
        """Named starting points (their training recipe: :func:`preset_training`).

        ``"cpu"``: frozen ImageNet EfficientNet-Lite0 at 128 px + a 2-block token transformer with MFM;
        ``"gpu"`` (alias ``"paper"``): CLIP ViT-B/32 at 224 px, fine-tuned; ``"pathology"``: frozen UNI
        (local weights via ``checkpoint_path``) + a token transformer; ``"vit-tiny"``: ViT-Ti/16 at 112 px
        from scratch.

        Examples
        --------
        >>> ComtipConfig.preset("paper").backbone
        'clip-vit-b32'

        """
        _refuse_data_settings(overrides)
        return cls(**{**_preset(name)["config"], **overrides})

    def replace(self, **changes: Any) -> ComtipConfig:
        """Return a copy with some fields changed.

        Examples
        --------
        >>> ComtipConfig().replace(paat=False).paat
        False

        """
        _refuse_data_settings(changes)
        return dataclasses.replace(self, **changes)


#: How tiles are prepared and augmented: settings of the data, not of the network. They are fields of
#: :class:`~comtip_sc.train.TrainSettings` (``fit(..., colour_norm="section")`` routes them there), and the
#: trained model keeps the two that apply at prediction time (``model.colour_norm``, ``model.context_scale``).
DATA_FIELDS = ("colour_norm", "context_scale", "stain_jitter", "colour_jitter")


def _refuse_data_settings(changes: dict[str, Any]) -> None:
    given = [k for k in DATA_FIELDS if k in changes]
    if given:
        raise TypeError(
            f"{given} are data settings, not ComtipConfig fields: pass them to cs.tl.fit as keywords "
            f"(e.g. fit(sdata, {given[0]}=...)) or in cs.train.TrainSettings."
        )


#: What a stored config dict without these fields meant: the defaults of version 0.1 (a ViT-B/32 at 224 px,
#: trained whole), before the defaults became the ``cpu`` preset.
STORED_DEFAULTS: dict[str, Any] = {
    "backbone": "vit_base_patch32_224",
    "pretrained": False,
    "tile_px": 224,
    "freeze_backbone": "none",
    "token_depth": 0,
    "token_dim": None,
    "embed_dim": 256,
    "gene_dim": 256,
}

#: The ablation flags of the benchmark's peer families (see ``docs/model.md``).
FLAG_PRESETS: dict[str, dict[str, bool]] = {
    "comtip": {"use_names": True, "use_values": True, "mfm": True, "paat": True, "value_query": True},
    "clip": {"use_names": True, "use_values": True, "mfm": False, "paat": False, "value_query": False},
    "bleep": {"use_names": False, "use_values": True, "mfm": False, "paat": False, "value_query": False},
    "omiclip": {"use_names": True, "use_values": False, "mfm": False, "paat": False, "value_query": False},
}
