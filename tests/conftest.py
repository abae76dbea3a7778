"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The public datasets live next to the repository, never inside it.
SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when the folder is absent (e.g. on CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real-data folder {SHARED_DATA} not found (expected ../shared/data next to the repository)"
        )
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one intra-op torch thread.

    The models in the tests are tiny: one thread is several times faster than two fighting over small
    kernels (and over the cores with whatever else runs).
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_config():
    """A CoMTIP config small enough to train in seconds on a CPU (32 px tiles, one ViT block)."""
    from comtip_sc.model import ComtipConfig

    return ComtipConfig.preset(
        "vit-tiny",
        tile_px=32,
        embed_dim=32,
        gene_dim=32,
        n_heads_gene=2,
        text_encoder="char-ngram",
        backbone_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_config, tmp_path_factory):
    """One tiny model per test session, trained for one epoch on ``toy_tissue(n_rows=8, n_cols=8, n_genes=30)``.

    Tests share it read-only: none may train it further or change its vocabulary.
    """
    import comtip_sc as cs

    sdata = cs.datasets.toy_tissue(n_rows=8, n_cols=8, n_genes=30, seed=0)
    return cs.tl.fit(
        sdata,
        config=tiny_config,
        tile_um=100,
        max_epochs=1,
        batch_size=16,
        seed=0,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path_factory.mktemp("tiny_model")),
        enable_model_summary=False,
    )


@pytest.fixture(scope="session")
def frozen_cnn_config():
    """Factory of a frozen, randomly initialised ResNet-10t at 64 px (2x2 tokens) under a 1-block token
    transformer: the ``cpu`` preset's structure (frozen CNN, token cache) at test size."""
    from comtip_sc.model import ComtipConfig

    def make(**overrides):
        settings = dict(
            backbone="resnet10t",
            pretrained=False,
            tile_px=64,
            freeze_backbone="all",
            token_depth=1,
            token_dim=32,
            embed_dim=16,
            gene_dim=16,
            n_heads_gene=2,
            text_encoder="char-ngram",
        )
        return ComtipConfig(**{**settings, **overrides})

    return make


@pytest.fixture
def fit_quiet(tmp_path):
    """``cs.tl.fit`` on the toy tissue with 100 µm tiles, batch 8, seed 0, quiet, writing under ``tmp_path``."""
    import comtip_sc as cs

    def run(sdata, config, **kw):
        settings = dict(
            tile_um=100,
            batch_size=8,
            seed=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        return cs.tl.fit(sdata, config=config, **{**settings, **kw})

    return run
