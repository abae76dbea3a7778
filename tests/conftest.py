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
