"""One process of the 2-process gloo tests of tests/test_model_losses.py (run as a script, not collected).

argv: mode ("info_nce" or "network"), output folder, comma-separated local batch sizes.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def tiny_network():
    from comtip_sc.model import ComtipConfig, build_network

    cfg = ComtipConfig(
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
        gene_subsample=5,
        value_query_genes=4,
    )
    torch.manual_seed(0)
    net = build_network(cfg, GENES)
    net.set_gene_max([3.0] * len(GENES))
    return net.train()


GENES = ["CD3E", "EPCAM", "KRT19", "ALB", "MKI67", "PTPRC", "COL1A1", "VIM"]


def global_batch(n: int) -> dict[str, torch.Tensor]:
    """``n`` spots; spots measure 3 to 8 genes (padding after), so token counts differ between ranks."""
    g = torch.Generator().manual_seed(1)
    n_real = torch.randint(3, len(GENES) + 1, (n,), generator=g)
    mask = torch.arange(len(GENES))[None] < n_real[:, None]
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "gene_idx": torch.where(mask, torch.arange(len(GENES)).expand(n, -1), -1),
        "values": torch.rand(n, len(GENES), generator=g) * 3 * mask,
        "mask": mask,
    }


def network_step(net, batch: dict[str, torch.Tensor]) -> dict:
    """One training step's loss terms, parameter gradients, centring mean and one MFM mask draw."""
    torch.manual_seed(7)
    out = net(batch)
    out["loss"].backward()
    torch.manual_seed(11)
    _, ids_hidden = net.vision.random_mask(batch["image"].shape[0])
    return {
        "terms": {k: float(torch.as_tensor(v).detach()) for k, v in out.items()},
        "grads": {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None},
        "running_mean": net.gene_encoder.center.running_mean.clone(),
        "ids_hidden": ids_hidden,
    }


def main() -> None:
    from comtip_sc.model import info_nce

    mode, out_dir, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    lo, n = sum(sizes[:rank]), sum(sizes)
    rows = slice(lo, lo + sizes[rank])
    result: dict = {"rank": rank, "world": world}
    if mode == "info_nce":
        g = torch.Generator().manual_seed(0)
        img = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
        txt = F.normalize(img + 0.5 * torch.randn(n, 16, generator=g), dim=-1)
        img_l = img[rows].clone().requires_grad_(True)
        txt_l = txt[rows].clone().requires_grad_(True)
        scale = torch.tensor(7.0, requires_grad=True)
        loss = info_nce(img_l, txt_l, scale)
        loss.backward()
        result.update(loss=loss.detach(), g_img=img_l.grad, g_txt=txt_l.grad, g_scale=scale.grad)
    else:
        batch = {k: v[rows] for k, v in global_batch(n).items()}
        result.update(network_step(tiny_network(), batch))
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # Leave without running C++ destructors: tearing gloo down at interpreter exit can abort
    # ("terminate called without an active exception") after all work is done and saved.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
