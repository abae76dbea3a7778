"""Named trunks, local weights (files, Hugging Face cache, OpenAI CLIP layout, bundled EfficientNet-Lite0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from comtip_sc.model import TRUNK_PRESETS, ComtipConfig, VisionBranch, create_backbone, preset_training
from comtip_sc.model._effnet_lite import lite0_weights_file, map_lukemelas_lite0

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
TINY_VIT = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("name", sorted(TRUNK_PRESETS))
def test_every_trunk_preset_builds_with_tiny_overrides(name):
    preset = TRUNK_PRESETS[name]
    px, kw = (128, {}) if name == "efficientnet_lite0.imagenet" else (32, TINY_VIT)
    bb = create_backbone(name, px, **kw)
    assert bb.pretrained_cfg["architecture"] == preset.timm_name
    assert tuple(bb.pretrained_cfg["mean"]) == tuple(preset.pretrained_cfg["mean"])
    # The Python-object arguments reached the blocks.
    extra = preset.kwargs()
    if "mlp_layer" in extra:
        assert isinstance(bb.blocks[0].mlp, timm.layers.GluMlp)
        assert isinstance(bb.blocks[0].mlp.act, torch.nn.SiLU)
    if "reg_tokens" in extra:
        assert bb.num_reg_tokens == extra["reg_tokens"]
    if "init_values" in extra:
        assert isinstance(bb.blocks[0].ls1, timm.layers.LayerScale)
    vb = VisionBranch(bb, tile_px=px, token_depth=1, token_dim=32, token_heads=2)
    with torch.no_grad():
        g, z = vb.forward_full(torch.randn(2, 3, px, px))
        view = vb.forward_masked(torch.randn(2, 3, px, px))
    assert g.shape == (2, 32) and z.shape == (2, vb.num_patches, 32)
    assert view.visible.shape == (2, 1 + vb.n_keep, 32)


def test_foundation_model_without_its_file_names_the_file():
    with pytest.raises(FileNotFoundError, match="MahmoodLab/UNI2-h"):
        create_backbone("uni2-h", 32, pretrained=True, **TINY_VIT)
    cfg = ComtipConfig.preset("pathology")
    assert cfg.freeze_backbone == "all" and cfg.token_depth >= 1 and cfg.pretrained


def test_pretrained_cfg_overlay_is_merged_not_replaced(tmp_path):
    torch.manual_seed(1)
    ref = timm.create_model("resnet10t", num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    mean = (0.1, 0.2, 0.3)
    bb = create_backbone(
        "resnet10t", 64, checkpoint_path=str(tmp_path / "w.pth"), pretrained_cfg_overlay={"mean": mean}
    )
    assert tuple(bb.pretrained_cfg["mean"]) == mean  # the user's normalisation survives the weights file
    assert tuple(bb.pretrained_cfg["std"]) == tuple(ref.pretrained_cfg["std"])
    assert all(
        torch.equal(a, b) for a, b in zip(bb.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    # A user's mean/std also wins over a named trunk's.
    assert (
        tuple(
            create_backbone("uni", 32, pretrained_cfg_overlay={"mean": mean}, **TINY_VIT).pretrained_cfg[
                "mean"
            ]
        )
        == mean
    )
    with pytest.raises(ValueError, match="disagree"):
        create_backbone(
            "resnet10t", 64, checkpoint_path=str(tmp_path / "w.pth"), pretrained_cfg_overlay={"file": "x"}
        )


def test_a_users_trunk_checkpoint_is_unwrapped_and_not_kept_twice(tmp_path):
    # Training scripts save {"state_dict": ..., "epoch": ...} with DDP's "module." prefix; the trunk reads
    # the weights inside, and its config records the file instead of holding a second copy of them.
    ref = timm.create_model("resnet10t", num_classes=0)
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    bb = create_backbone("resnet10t", 64, checkpoint_path=str(tmp_path / "w.pth"))
    assert all(
        torch.equal(a, b) for a, b in zip(bb.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    assert "state_dict" not in bb.pretrained_cfg and bb.pretrained_cfg["file"] == str(tmp_path / "w.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*not a state dict"):
        create_backbone("resnet10t", 64, checkpoint_path=str(tmp_path / "list.pth"))


class _TouchOnUnpickle:
    """Unpickling it creates a file: the side effect a malicious weights file would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_users_trunk_file_with_pickled_objects_is_refused_unread(tmp_path):
    # A user's .pth is read by cs.model.read_weights, like every other weights file: a pickled object is
    # refused with a message naming the file, and its code never runs.
    marker = tmp_path / "ran"
    state = timm.create_model("resnet10t", num_classes=0).state_dict()
    torch.save({**state, "payload": _TouchOnUnpickle(marker)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w\.pth.*holds Python objects"):
        create_backbone("resnet10t", 64, checkpoint_path=str(tmp_path / "w.pth"))
    assert not marker.exists()


def _write_hub_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay out ``files`` like huggingface_hub's cache: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_hf_hub_name_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    from safetensors.torch import save

    torch.manual_seed(2)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0, **TINY_VIT)
    mean = [0.6, 0.5, 0.4]
    config = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 0,
        "model_args": {"img_size": 32, **TINY_VIT},
        "pretrained_cfg": {"mean": mean, "std": [0.2, 0.2, 0.2], "input_size": [3, 32, 32]},
    }
    _write_hub_snapshot(
        tmp_path / "hub",
        "some-lab/tiny-vit",
        {"config.json": json.dumps(config).encode(), "model.safetensors": save(ref.state_dict())},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(99)
    bb = create_backbone("hf-hub:some-lab/tiny-vit", 32, pretrained=True)
    assert all(
        torch.equal(a, b) for a, b in zip(bb.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    assert list(bb.pretrained_cfg["mean"]) == mean
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        create_backbone("hf-hub:some-lab/absent", 32, pretrained=True)


def _to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm CLIP ViT state dict in the OpenAI / open_clip layout (the inverse of timm's conversion)."""
    swaps = [
        ("patch_embed.proj", "conv1"),
        ("norm_pre", "ln_pre"),
        ("blocks.", "transformer.resblocks."),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    out = {}
    for k, v in sd.items():
        if k == "cls_token":
            k, v = "class_embedding", v[0, 0]
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        else:
            for a, b in swaps:
                k = k.replace(a, b)
        out[f"visual.{k}"] = v
    out["visual.proj"] = torch.randn(sd["cls_token"].shape[-1], 16)  # the image projection, not used
    out["token_embedding.weight"] = torch.randn(10, 16)  # a text tower key: ignored
    return out


def test_clip_vit_from_an_open_clip_checkpoint(tmp_path):
    torch.manual_seed(3)
    ref = timm.create_model("vit_base_patch32_clip_quickgelu_224", img_size=32, num_classes=0, **TINY_VIT)
    clip = _to_open_clip(ref.state_dict())
    assert not any(k.startswith("visual.blocks") for k in clip)
    torch.save(clip, tmp_path / "open_clip_pytorch_model.bin")
    torch.manual_seed(99)
    bb = create_backbone(
        "clip-vit-b32", 32, checkpoint_path=str(tmp_path / "open_clip_pytorch_model.bin"), **TINY_VIT
    )
    sd, sd_ref = bb.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys()
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    assert tuple(bb.pretrained_cfg["mean"]) == pytest.approx((0.48145466, 0.4578275, 0.40821073))


# -- ImageNet EfficientNet-Lite0 (bundled weights) ---------------------------------------------------------
def _synthetic(px: int = 128) -> torch.Tensor:
    i = np.arange(px, dtype=np.float32)
    c = np.arange(3, dtype=np.float32)[:, None, None]
    img = 0.5 + 0.5 * np.sin(0.05 * (c + 1) * i[None, :, None] + 0.03 * i[None, None, :] + c)
    return torch.from_numpy(img[None])


@pytest.fixture(scope="module")
def lite0_source():
    return torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)


def test_lite0_mapping_places_every_tensor(lite0_source):
    model = timm.create_model("tf_efficientnet_lite0")  # with its ImageNet classifier
    mapped = map_lukemelas_lite0(lite0_source, model)
    assert list(mapped) == list(model.state_dict())
    assert len(mapped) == len(lite0_source)  # nothing left over
    assert [id(v) for v in mapped.values()] == [
        id(v) for v in lite0_source.values()
    ]  # each tensor once, in order
    # BatchNorm statistics land on BatchNorm statistics, layer by layer.
    src_bn = [(k, v) for k, v in lite0_source.items() if k.endswith("running_var")]
    dst_bn = [(k, v) for k, v in mapped.items() if k.endswith("running_var")]
    assert len(src_bn) == len(dst_bn) == 49
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(src_bn, dst_bn, strict=True))
    # Without a classifier, only the classifier is left out.
    trunk = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    assert len(map_lukemelas_lite0(lite0_source, trunk)) == len(lite0_source) - 2
    with pytest.raises(ValueError, match="not the same architecture"):
        map_lukemelas_lite0(lite0_source, timm.create_model("tf_efficientnet_lite1", num_classes=0))


def test_lite0_trunk_reproduces_its_reference_output():
    ref = json.loads((DATA / "efficientnet_lite0_reference.json").read_text())
    bb = create_backbone("efficientnet_lite0.imagenet", 128, pretrained=True).eval()
    with torch.no_grad():
        f = bb.forward_head(bb.forward_features((_synthetic() - 0.5) / 0.5), pre_logits=True)[0]
    np.testing.assert_allclose(f[:16].numpy(), ref["pooled_features_first16"], atol=1e-4)
    assert float(f.norm()) == pytest.approx(ref["pooled_features_norm"], rel=1e-4)
    fresh = create_backbone("efficientnet_lite0.imagenet", 128).eval()  # random init: far from the reference
    with torch.no_grad():
        g = fresh.forward_head(fresh.forward_features((_synthetic() - 0.5) / 0.5), pre_logits=True)[0]
    assert not np.allclose(g[:16].numpy(), ref["pooled_features_first16"], atol=1e-2)


def test_lite0_mapped_weights_classify_natural_images(lite0_source):
    """An independent check of the mapping: ImageNet classes of photographs shipped with scikit-image."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(map_lukemelas_lite0(lite0_source, model))
    top = {}
    for name in ("chelsea", "coffee"):
        img = np.asarray(Image.fromarray(getattr(data, name)()).resize((224, 224)), dtype=np.float32) / 255
        x = (torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5
        with torch.no_grad():
            logits = model(x)[0]
        assert torch.isfinite(logits).all()
        top[name] = int(logits.argmax())
    assert 281 <= top["chelsea"] <= 285  # the cat photograph: one of ImageNet's domestic cat classes
    assert top["coffee"] == 967  # the cup of coffee: "espresso"


# -- presets and configs -----------------------------------------------------------------------------------
def test_cpu_preset_token_grid_and_recipe():
    cfg = ComtipConfig.preset("cpu")
    assert (cfg.backbone, cfg.freeze_backbone, cfg.pretrained) == ("efficientnet_lite0.imagenet", "all", True)
    vb = VisionBranch(
        create_backbone(cfg.backbone, cfg.tile_px), tile_px=cfg.tile_px, token_depth=1, freeze="all"
    )
    assert vb.num_patches >= 16  # at least a 4x4 grid
    assert preset_training("cpu")["lr"] == 1e-3 and preset_training("gpu")["lr"] == 1e-4
    assert ComtipConfig.preset("paper") == ComtipConfig.preset("gpu")
    assert ComtipConfig() == ComtipConfig.preset("cpu")


def test_old_configs_load_with_the_former_vit_behaviour():
    old = ComtipConfig.preset("vit-tiny").to_dict()
    for key in ("freeze_backbone", "token_depth", "token_dim", "token_heads", "token_pool"):
        old.pop(key)
    cfg = ComtipConfig.from_dict(old)
    assert (cfg.freeze_backbone, cfg.token_depth) == ("none", 0)
    new = ComtipConfig.preset("cpu", freeze_backbone=2)
    assert ComtipConfig.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    with pytest.raises(ValueError, match="token_depth"):
        ComtipConfig(freeze_backbone="all", token_depth=0)
