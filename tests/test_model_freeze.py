"""Freezing part of a trunk (timm's parameter groups), eval mode of frozen parts, lr multipliers and decay."""

from __future__ import annotations

import pytest
import timm
import torch

from comtip_sc.model import ComtipConfig, VisionBranch, create_backbone
from comtip_sc.model._freeze import check_freeze, freeze_trunk, trunk_groups
from comtip_sc.train import ComtipLightningModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_freeze_last_k_stages_of_a_cnn_keeps_frozen_batchnorm_fixed():
    torch.manual_seed(0)
    vb = VisionBranch(create_backbone("resnet10t", 64), tile_px=64, token_depth=1, token_dim=32, freeze=1)
    bb = vb.backbone
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable)
    assert not vb.trunk_frozen and not vb.mask_in_trunk
    vb.train()
    assert vb.training and vb.tokens.training and bb.layer4.training
    assert not bb.bn1.training and not bb.layer1.training and not bb.layer3[0].bn1.training
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running" in k}
    vb.forward_full(torch.randn(4, 3, 64, 64) * 3 + 1)
    after = bb.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("layer4.") for k in moved)  # only the trained stage's BN statistics


def test_freeze_vit_blocks_by_group_and_all():
    bb = create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
    freeze_trunk(bb, 1)
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in bb.named_parameters() if n.startswith(("blocks.2.", "norm."))}
    vb = VisionBranch(
        create_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1, embed_dim=32, num_heads=2),
        freeze="all",
        token_depth=1,
        token_dim=32,
        token_heads=2,
    )
    assert vb.trunk_frozen and not any(p.requires_grad for p in vb.backbone.parameters())
    vb.train()
    assert not vb.backbone.training
    with torch.enable_grad():
        assert vb.trunk_tokens(torch.randn(1, 3, 32, 32)).grad_fn is None  # cacheable: no graph


def test_trailing_norm_group_joins_the_last_stage():
    m = timm.create_model("convnext_atto", num_classes=0)
    groups = trunk_groups(m)
    assert len(groups) == 5 and "head.norm.weight" in groups[-1] and groups[-1][0].startswith("stages.3.")
    with pytest.raises(ValueError, match="freeze_backbone"):
        check_freeze(0)
    assert check_freeze("3") == 3


def test_backbone_lr_mult_and_layer_decay_groups():
    cfg = ComtipConfig.preset(
        "vit-tiny",
        tile_px=32,
        text_encoder="char-ngram",
        gene_dim=32,
        n_heads_gene=2,
        freeze_backbone=2,
        backbone_kwargs=dict(patch_size=8, depth=3, embed_dim=32, num_heads=2),
    )
    module = ComtipLightningModule(cfg, ["A", "B"], lr=1e-3, backbone_lr_mult=0.5, layer_decay=0.5)
    groups = module._param_groups()
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in module.network.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(id(p) for p in trainable)  # each trainable parameter once, frozen none
    bb = module.network.vision.backbone
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(bb.blocks[2].attn.qkv.weight)] == pytest.approx(1e-3 * 0.5)  # last layer
    assert lr_of[id(bb.blocks[1].attn.qkv.weight)] == pytest.approx(1e-3 * 0.5 * 0.5)
    assert lr_of[id(module.network.image_head.proj.weight)] == pytest.approx(1e-3)
    assert not bb.blocks[0].attn.qkv.weight.requires_grad
