"""The LightningModule: a short CPU fit, logged terms, LR schedule, checkpoint reload."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from comtip_sc.model import ComtipConfig
from comtip_sc.train import ComtipLightningModule
from comtip_sc.train._plan import lr_factor

GENES = ["CD3E", "EPCAM", "KRT19", "ALB", "MKI67", "PTPRC", "COL1A1", "VIM"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config() -> ComtipConfig:
    return ComtipConfig(
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        freeze_backbone="none",
        token_depth=0,
        token_dim=None,
        tile_px=32,
        backbone_kwargs=dict(patch_size=8, depth=1, embed_dim=32, num_heads=2),
        embed_dim=16,
        gene_dim=16,
        n_heads_gene=2,
        char_ngram_dim=32,
        text_encoder="char-ngram",
        value_hidden=16,
    )


def spots(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(3, 32, 32, generator=g),
            "gene_idx": torch.arange(len(GENES)),
            "values": torch.rand(len(GENES), generator=g) * 3,
            "mask": torch.ones(len(GENES), dtype=torch.bool),
        }
        for _ in range(n)
    ]


def trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_fit_logs_every_term_and_reloads_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = ComtipLightningModule(config(), GENES, lr=1e-3, warmup_steps=1)
    data = spots(16)
    tr = trainer(
        tmp_path,
        max_steps=4,
        limit_val_batches=1,
        val_check_interval=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    tr.fit(module, DataLoader(data, batch_size=4), DataLoader(data[:4], batch_size=4))
    logged = set(tr.logged_metrics)
    for term in ("loss", "info_nce", "mfm", "paat", "paat_bce", "paat_rank", "paat_acc"):
        assert f"train/{term}_step" in logged or f"train/{term}" in logged, term
        assert f"val/{term}" in logged, term
    ckpt = tmp_path / "final.ckpt"
    tr.save_checkpoint(ckpt)
    # Genes added after training are part of the checkpoint and come back on reload.
    module.network.add_genes(["FOXP3"])
    tr.save_checkpoint(tmp_path / "grown.ckpt")

    reloaded = ComtipLightningModule.load_from_checkpoint(ckpt)
    assert reloaded.network.gene_names == GENES
    assert reloaded.hparams.lr == 1e-3 and reloaded.network.config.text_encoder == "char-ngram"
    sd, sd2 = module.network.state_dict(), reloaded.network.state_dict()
    for k, v in sd2.items():
        if k in ("gene_encoder.name_emb", "gene_encoder.gene_residual.weight"):
            v, sd[k] = v[: len(GENES)], sd[k][: len(GENES)]
        assert torch.equal(v, sd[k]), k
    grown = ComtipLightningModule.load_from_checkpoint(tmp_path / "grown.ckpt")
    assert grown.network.gene_names == [*GENES, "FOXP3"]

    reloaded.eval()
    module.eval()
    b = {k: torch.stack([d[k] for d in data[:3]]) for k in data[0]}
    with torch.no_grad():
        assert torch.allclose(
            module.network.encode_image(b["image"]), reloaded.network.encode_image(b["image"])
        )
        a = module.network.encode_genes(b["gene_idx"], b["values"], b["mask"])
        c = reloaded.network.encode_genes(b["gene_idx"], b["values"], b["mask"])
    assert torch.allclose(a, c, atol=1e-6)


def test_optimizer_groups_and_schedule(tmp_path):
    module = ComtipLightningModule(config(), GENES, lr=1e-3, weight_decay=0.1, backbone_lr_mult=0.1)
    groups = module._param_groups()
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_params
    assert sorted({g["lr"] for g in groups}) == pytest.approx([1e-4, 1e-3])
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(module.network.logit_scale.log_scale) in no_decay
    assert id(module.network.vision.backbone.pos_embed) in no_decay
    # Warm-up rises linearly, then a cosine decays to min_lr_ratio.
    f = [lr_factor(s, 10, 100, 0.1) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:])) and f[100] == pytest.approx(0.1)
