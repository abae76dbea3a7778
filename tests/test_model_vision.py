"""Vision branch: masked view isolation, MFM generator, any timm ViT, local pretrained weights."""

from __future__ import annotations

import pytest
import timm
import torch

from comtip_sc.model import MaskFeatureGenerator, VisionBranch, create_backbone, mfm_loss

TINY = dict(patch_size=8, depth=2, embed_dim=64, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_branch(mask_ratio: float = 0.5) -> VisionBranch:
    torch.manual_seed(0)
    return VisionBranch(create_backbone("vit_tiny_patch16_224", 32, **TINY), mask_ratio).eval()


def patch_pixels(ids: torch.Tensor, grid: int = 4, p: int = 8) -> torch.Tensor:
    """Boolean pixel mask [B, 1, H, W] covering the patches ``ids`` of each sample."""
    m = torch.zeros(ids.shape[0], grid * grid, dtype=torch.bool).scatter_(1, ids, True)
    m = m.view(-1, 1, grid, grid)
    return m.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)


def test_masked_branch_never_sees_hidden_patches():
    vb = tiny_branch()
    images = torch.randn(3, 3, 32, 32)
    ids_keep, ids_hidden = vb.random_mask(3, generator=torch.Generator().manual_seed(1))
    assert ids_keep.shape == (3, 8) and ids_hidden.shape == (3, 8)
    # Masks differ per sample.
    assert not all(torch.equal(ids_keep[0], ids_keep[i]) for i in range(1, 3))
    with torch.no_grad():
        h = vb.forward_masked(images, ids_keep=ids_keep)
        assert torch.equal(h.ids_hidden, ids_hidden)
        hidden_px = patch_pixels(ids_hidden)
        changed_hidden = torch.where(hidden_px, torch.randn_like(images) * 10, images)
        h2 = vb.forward_masked(changed_hidden, ids_keep=ids_keep)
        assert torch.equal(h.visible, h2.visible)  # bit-for-bit: hidden pixels never reach H_O
        # Changing one visible patch does change H_O (for every sample).
        one_visible = patch_pixels(ids_keep[:, :1])
        changed_visible = torch.where(one_visible, images + 1.0, images)
        h3 = vb.forward_masked(changed_visible, ids_keep=ids_keep)
        for i in range(3):
            assert not torch.allclose(h.visible[i], h3.visible[i])
        # And the full view does see the hidden pixels.
        assert not torch.allclose(vb.forward_full(images)[1], vb.forward_full(changed_hidden)[1])


def test_random_mask_ratio_and_partition():
    vb = tiny_branch(mask_ratio=0.75)
    keep, hidden = vb.random_mask(5, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (5, 4) and hidden.shape == (5, 12)
    both = torch.cat([keep, hidden], 1).sort(1).values
    assert torch.equal(both, torch.arange(16).expand(5, -1))


def test_generator_learns_hidden_features_with_stop_gradient():
    vb = tiny_branch()
    gen = MaskFeatureGenerator(vb.dim, vb.num_patches, num_heads=2)
    images = torch.randn(4, 3, 32, 32)
    view = vb.forward_masked(images)
    _, z = vb.forward_full(images)
    target = z.gather(1, view.ids_hidden[..., None].expand(-1, -1, z.shape[-1]))
    pred = gen(view.visible, view.ids_hidden, vb.patch_pos_embed())
    assert pred.shape == target.shape
    loss = mfm_loss(pred, target)
    loss.backward()
    assert gen.mask_query.grad is not None and gen.mask_query.grad.abs().sum() > 0
    assert vb.backbone.patch_embed.proj.weight.grad.abs().sum() > 0  # through the masked branch
    # The target is detached inside mfm_loss: a loss on the target alone has no gradient path.
    vb.zero_grad()
    t_only = mfm_loss(torch.zeros_like(target), target)
    assert t_only.grad_fn is None
    assert float(mfm_loss(target, target, "cosine").detach()) < 1e-6


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch32_224"])
def test_any_timm_vit_name(name):
    # Depth/width shrunk so the test is quick; the ViT family structure stays that of ``name``.
    kw = dict(depth=1, embed_dim=32, num_heads=2)
    vb = VisionBranch(create_backbone(name, 64, **kw), 0.5)
    p = vb.num_patches
    assert p == (64 // vb.backbone.patch_embed.patch_size[0]) ** 2
    gen = MaskFeatureGenerator(vb.dim, p, num_heads=2)
    with torch.no_grad():
        view = vb.forward_masked(torch.randn(2, 3, 64, 64))
        pred = gen(view.visible, view.ids_hidden, vb.patch_pos_embed())
    assert view.visible.shape == (2, vb.num_prefix + vb.n_keep, 32)
    assert pred.shape == (2, p - vb.n_keep, 32)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_local_pretrained_weights(tmp_path, suffix):
    torch.manual_seed(3)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0, **TINY)
    path = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    else:
        torch.save(ref.state_dict(), path)
    torch.manual_seed(99)  # a different random init, so equality can only come from the file
    loaded = create_backbone("vit_tiny_patch16_224", 32, checkpoint_path=str(path), **TINY)
    sd_ref, sd = ref.state_dict(), loaded.state_dict()
    assert sd.keys() == sd_ref.keys()
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    fresh = create_backbone("vit_tiny_patch16_224", 32, **TINY)
    assert not torch.equal(fresh.state_dict()["pos_embed"], sd_ref["pos_embed"])


def test_pretrained_without_local_file_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_backbone("vit_tiny_patch16_224", 32, checkpoint_path=str(tmp_path / "missing.pth"), **TINY)


# -- every trunk path: ViT fine-tuned (masked inside the ViT), frozen ViT / CNN + token transformer --------
VIT1 = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)
PATHS = {
    "vit-finetuned": ("vit_tiny_patch16_224", 32, VIT1, dict(freeze="none")),
    "vit-finetuned+tokens": (
        "vit_tiny_patch16_224",
        32,
        VIT1,
        dict(freeze="none", token_depth=1, token_dim=32),
    ),
    "vit-frozen+tokens": ("vit_tiny_patch16_224", 32, VIT1, dict(freeze="all", token_depth=1, token_dim=32)),
    "cnn+tokens": ("resnet10t", 128, {}, dict(freeze="none", token_depth=1, token_dim=32)),
}


def path_branch(path: str) -> VisionBranch:
    name, px, kw, vkw = PATHS[path]
    torch.manual_seed(0)
    return VisionBranch(create_backbone(name, px, **kw), 0.5, tile_px=px, token_heads=2, **vkw).eval()


@pytest.mark.parametrize("path", list(PATHS))
def test_hidden_input_changes_nothing_on_every_path(path):
    vb = path_branch(path)
    px = PATHS[path][1]
    images = torch.randn(3, 3, px, px)
    ids_keep, ids_hidden = vb.random_mask(3, generator=torch.Generator().manual_seed(1))
    assert vb.num_patches == 16 and ids_keep.shape == (3, 8)
    with torch.no_grad():
        h = vb.forward_masked(images, ids_keep=ids_keep)
        assert torch.equal(h.ids_hidden, ids_hidden)
        assert h.visible.shape == (3, vb.num_prefix + 8, vb.dim)
        if vb.mask_in_trunk:  # the masked branch's input is the pixels: hidden pixels never reach H_O
            changed = torch.where(patch_pixels(ids_hidden), torch.randn_like(images) * 10, images)
            h2 = vb.forward_masked(changed, ids_keep=ids_keep)
            one_visible = torch.where(patch_pixels(ids_keep[:, :1]), images + 1.0, images)
            h3 = vb.forward_masked(one_visible, ids_keep=ids_keep)
        else:  # the masked branch's input is the trunk's tokens: hidden tokens never reach H_O
            tokens = vb.trunk_tokens(images)
            assert torch.equal(vb.forward_masked_from_tokens(tokens, ids_keep).visible, h.visible)
            hidden = torch.zeros(3, 16, 1, dtype=torch.bool).scatter_(1, ids_hidden[..., None], True)
            h2 = vb.forward_masked_from_tokens(
                torch.where(hidden, torch.randn_like(tokens) * 10, tokens), ids_keep
            )
            first = torch.zeros_like(hidden).scatter_(1, ids_keep[:, :1, None], True)
            # (a random change: a constant shift per token would vanish in the token transformer's LayerNorm)
            h3 = vb.forward_masked_from_tokens(
                torch.where(first, tokens + torch.randn_like(tokens), tokens), ids_keep
            )
        assert torch.equal(h.visible, h2.visible)
        for i in range(3):
            assert not torch.allclose(h.visible[i], h3.visible[i])
        # The full view sees everything, and the generator's position embedding covers the grid.
        assert vb.forward_full(images)[1].shape == (3, 16, vb.dim)
        assert vb.patch_pos_embed().shape == (1, 16, vb.dim)


@pytest.mark.parametrize("path", ["vit-frozen+tokens", "cnn+tokens"])
def test_generator_trains_the_token_transformer(path):
    vb = path_branch(path).train()
    gen = MaskFeatureGenerator(vb.dim, vb.num_patches, num_heads=2)
    px = PATHS[path][1]
    images = torch.randn(4, 3, px, px)
    view = vb.forward_masked(images)
    _, z = vb.forward_full(images)
    target = z.gather(1, view.ids_hidden[..., None].expand(-1, -1, z.shape[-1]))
    mfm_loss(gen(view.visible, view.ids_hidden, vb.patch_pos_embed()), target).backward()
    assert vb.tokens.pos_embed.grad.abs().sum() > 0
    trunk_grads = [p.grad for p in vb.backbone.parameters() if p.grad is not None]
    assert (len(trunk_grads) == 0) == vb.trunk_frozen


def test_cnn_without_token_transformer_has_no_masked_view():
    vb = VisionBranch(create_backbone("resnet10t", 64), tile_px=64)
    assert not vb.supports_mfm
    g, z = vb.forward_full(torch.randn(2, 3, 64, 64))
    assert g.shape == (2, 512) and z.shape == (2, 4, 512)
    with pytest.raises(ValueError, match="token_depth"):
        vb.forward_masked(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 2"):
        VisionBranch(create_backbone("resnet10t", 32), tile_px=32, token_depth=1)
