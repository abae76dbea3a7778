"""The benchmark's presets: what a run holds fixed across rows (trunk, tiles, recipe, seeds)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from comtip_sc.model import ComtipConfig, preset_training


@dataclass(frozen=True)
class BenchPreset:
    """Everything a run holds fixed across rows."""

    name: str
    config: ComtipConfig
    tile_um: dict[str, float]
    epochs: int
    #: Per dataset: the ``colour_norm`` data setting of its tiles, for every row (missing: tiles as scanned).
    colour_norm: dict[str, str | None] = dataclasses.field(default_factory=dict)
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.05
    #: The seed of one fit; a run sets it to each of ``seeds`` in turn.
    seed: int = 0
    #: Every row is trained once per seed; the tables report the mean over folds and seeds.
    seeds: tuple[int, ...] = (0,)
    n_genes: int = 250
    min_counts: int = 100
    #: Torch CPU threads (None: leave torch's default). See ``cpu`` below.
    threads: int | None = None


def _smoke_config() -> ComtipConfig:
    # The cpu preset's structure in miniature: a frozen CNN trunk read as 2x2 tokens under a token
    # transformer, so the smoke run goes through the trunk-token cache as the cpu run does.
    return ComtipConfig(
        backbone="resnet10t",
        pretrained=False,
        tile_px=64,
        freeze_backbone="all",
        token_depth=1,
        token_dim=32,
        embed_dim=32,
        gene_dim=32,
        n_heads_gene=2,
        text_encoder="char-ngram",
        top_k_names=20,
    )


def get_preset(name: str) -> BenchPreset:
    """The ``smoke``, ``cpu`` and ``gpu`` presets of the benchmark.

    ``cpu`` is the package's ``cpu`` preset with its training recipe (lr 1e-3, 12 epochs): the ImageNet
    EfficientNet-Lite0 trunk installed with the package, frozen, read as 4x4 tokens at 128 px, under a
    2-block token transformer (width 128) that hosts MFM; every fit trains on cached trunk tokens, so each
    fold-seed task runs the trunk once per tile and dihedral view. It runs torch on one thread by default
    (``COMTIP_BENCH_THREADS`` overrides): on the shared 2-core machine, two threads were 4-7× *slower*
    per step than one (threads spin-waiting on cores that other processes hold).

    Tile sizes: her2st 150 µm (the 100 µm spot plus a margin; the package default). MOB 200 µm: its
    images are ~4.4 µm/px, so a 150 µm tile is only ~34 native pixels, upsampled ~2-3×; 200 µm (~45 px)
    keeps the spot and its immediate neighbourhood (neighbours sit 141 µm away), i.e. enough of the
    bulb's laminar layer structure to tell layers apart, while staying under two spot pitches.

    ``gpu``: ViT-B/32 from scratch at batch 64, 20 epochs, 5e-4 (a guess, not tuned).

    Examples
    --------
    >>> get_preset("cpu").config.tile_px
    128

    """
    threads = int(os.environ.get("COMTIP_BENCH_THREADS", "1"))
    if name == "smoke":
        return BenchPreset(
            "smoke",
            _smoke_config(),
            {"toy": 100.0},
            epochs=1,
            colour_norm={"toy": "section"},
            batch_size=16,
            lr=1e-3,
            n_genes=40,
            threads=threads,
        )
    tile_um = {"her2st": 150.0, "mob": 200.0}
    colour = {"her2st": None, "mob": "section"}
    if name == "cpu":
        cfg = ComtipConfig.preset("cpu")
        recipe = preset_training("cpu")
        return BenchPreset(
            "cpu",
            cfg,
            tile_um,
            epochs=recipe["max_epochs"],
            colour_norm=colour,
            lr=recipe["lr"],
            seeds=(0, 1, 2),
            threads=threads,
        )
    if name == "gpu":
        cfg = ComtipConfig.preset("gpu", backbone="vit_base_patch32_224")
        return BenchPreset("gpu", cfg, tile_um, epochs=20, colour_norm=colour, batch_size=64, lr=5e-4)
    raise ValueError(f"Unknown benchmark preset {name!r}; choose smoke, cpu or gpu.")
