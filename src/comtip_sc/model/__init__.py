"""CoMTIP network pieces: vision branch + MFM, Gene-Text Encoder + PAAT, losses and the network."""

from __future__ import annotations

from .._heap import keep_freed_memory
from .._presets import PRESET_NAMES, preset_training
from ._comtip_model import ComtipModel, ReferenceBank
from ._config import FLAG_PRESETS, ComtipConfig
from ._gene_names import char_ngram_embedding, embed_gene_names, minilm_available, resolve_text_encoder
from ._gene_text import AttentionPool, GeneTextEncoder
from ._inference import inference_autocast
from ._losses import (
    LogitScale,
    candidate_values,
    expected_value,
    info_nce,
    mfm_loss,
    paat_losses,
    pair_detection_loss,
    pair_ranking_loss,
    value_query_loss,
)
from ._network import ComtipNetwork, ProjectionHead, build_network
from ._paat import PairDiscriminator, corrupt_pairs
from ._retrieval import retrieve, top_k_neighbours
from ._tokens import TokenTransformer
from ._trunk import TRUNK_PRESETS, TrunkPreset
from ._vision import MaskedView, MaskFeatureGenerator, VisionBranch, build_vision, create_backbone
from ._weights import read_weights

__all__ = [
    "FLAG_PRESETS",
    "PRESET_NAMES",
    "TRUNK_PRESETS",
    "AttentionPool",
    "ComtipConfig",
    "ComtipModel",
    "ComtipNetwork",
    "GeneTextEncoder",
    "LogitScale",
    "MaskFeatureGenerator",
    "MaskedView",
    "PairDiscriminator",
    "ProjectionHead",
    "ReferenceBank",
    "TokenTransformer",
    "TrunkPreset",
    "VisionBranch",
    "build_network",
    "build_vision",
    "candidate_values",
    "char_ngram_embedding",
    "corrupt_pairs",
    "create_backbone",
    "embed_gene_names",
    "expected_value",
    "inference_autocast",
    "info_nce",
    "keep_freed_memory",
    "mfm_loss",
    "minilm_available",
    "paat_losses",
    "pair_detection_loss",
    "pair_ranking_loss",
    "preset_training",
    "read_weights",
    "resolve_text_encoder",
    "retrieve",
    "top_k_neighbours",
    "value_query_loss",
]
