"""Loss functions alone, including InfoNCE with negatives gathered across 2 gloo processes."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comtip_sc.model import (
    LogitScale,
    _losses,
    candidate_values,
    info_nce,
    mfm_loss,
    paat_losses,
    pair_detection_loss,
    pair_ranking_loss,
    value_query_loss,
)

B, D, WORLD = 8, 16, 2


def embeddings(seed: int = 0, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, D, generator=g), dim=-1)
    return img, txt


def test_info_nce_matches_definition():
    img, txt = embeddings()
    s = 10.0
    logits = s * img @ txt.T
    manual = 0.5 * sum(-torch.log_softmax(m, dim=1).diagonal().mean() for m in (logits, logits.T))
    assert torch.allclose(info_nce(img, txt, s), manual, atol=1e-6)
    assert info_nce(img, txt, s) < info_nce(img, txt.roll(1, 0), s)
    assert math.isclose(float(info_nce(img, img * 0 + img[:1], 1e-8)), math.log(B), rel_tol=1e-4)


def test_logit_scale_is_clamped():
    ls = LogitScale(0.07)
    with torch.no_grad():
        ls.log_scale.fill_(10.0)
    assert math.isclose(float(ls().detach()), 100.0, rel_tol=1e-5)


def test_mfm_loss_kinds_and_stop_gradient():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.randn(2, 3, 4, requires_grad=True)
    loss = mfm_loss(pred, target)
    loss.backward()
    assert target.grad is None and pred.grad is not None
    assert torch.allclose(loss, ((pred - target) ** 2).mean())
    cos = mfm_loss(pred, target, "cosine")
    assert torch.allclose(cos, (1 - F.cosine_similarity(pred, target, dim=-1)).mean())
    with pytest.raises(ValueError):
        mfm_loss(pred, target, "l1")


def test_value_query_loss_definition_and_skips():
    torch.manual_seed(0)
    cands = candidate_values(torch.tensor([3.0, 6.0]), 4)  # steps 1 and 2
    assert torch.allclose(cands, torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]]))
    txt = F.normalize(torch.randn(2, 4, D), dim=-1)
    img = F.normalize(torch.randn(3, D), dim=-1)
    true = torch.tensor([[1.0, 6.0], [2.5, 0.0], [0.0, 3.0]])
    valid = torch.tensor([[True, True], [True, False], [False, True]])
    # By hand: Gaussian soft target over the candidates (bandwidth = grid step), cross-entropy of the softmax.
    terms = []
    for i in range(3):
        for q in range(2):
            if not valid[i, q]:
                continue
            step = cands[q, 1] - cands[q, 0]
            target = torch.softmax(-0.5 * ((cands[q] - true[i, q]) / step) ** 2, dim=0)
            logp = torch.log_softmax(10.0 * txt[q] @ img[i], dim=0)
            terms.append(-(target * logp).sum())
    got = value_query_loss(img, txt, cands, true, valid, 10.0)
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-6)
    # Changing a skipped entry changes nothing; no valid entry at all gives a zero that keeps the graph.
    assert torch.allclose(value_query_loss(img, txt, cands, torch.where(valid, true, 9.0), valid, 10.0), got)
    img.requires_grad_(True)
    zero = value_query_loss(img, txt, cands, true, torch.zeros_like(valid), 10.0)
    zero.backward()
    assert float(zero) == 0.0 and img.grad is not None


def test_paat_terms():
    labels = torch.tensor([[True, False, False, False], [False, True, False, False]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    perfect = torch.where(labels, 10.0, -10.0)
    bce, acc = pair_detection_loss(perfect, labels, mask)
    assert float(bce) < 1e-3 and float(acc) == 1.0
    bce0, acc0 = pair_detection_loss(torch.zeros(2, 4), labels, mask)
    assert math.isclose(float(bce0), math.log(2), rel_tol=1e-5) and float(acc0) == 0.5  # balanced chance
    img, txt = embeddings()
    bad = F.normalize(txt + torch.randn_like(txt), dim=-1)
    rank = pair_ranking_loss(img, txt, bad, 10.0)
    manual = F.softplus(10.0 * ((img * bad).sum(-1) - (img * txt).sum(-1))).mean()
    assert torch.allclose(rank, manual, atol=1e-6)
    assert math.isclose(float(pair_ranking_loss(img, txt, txt, 10.0)), math.log(2), rel_tol=1e-6)
    out = paat_losses(perfect, labels, mask, img, txt, bad, 10.0)
    assert torch.allclose(out["paat"], out["paat_bce"] + out["paat_rank"])


# --------------------------------------------------------------------------------------- DDP (gloo)
WORKER = textwrap.dedent(
    """
    import importlib.util, os, sys
    import torch, torch.distributed as dist
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("losses", sys.argv[1])
    losses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(losses)
    out_dir, sizes = sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    img = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, 16, generator=g), dim=-1)
    lo = sum(sizes[:rank])
    img_l = img[lo:lo + sizes[rank]].clone().requires_grad_(True)
    txt_l = txt[lo:lo + sizes[rank]].clone().requires_grad_(True)
    scale = torch.tensor(7.0, requires_grad=True)
    loss = losses.info_nce(img_l, txt_l, scale)
    loss.backward()
    torch.save({"rank": rank, "world": world, "loss": loss.detach(), "g_img": img_l.grad, "g_txt": txt_l.grad,
                "g_scale": scale.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # Leave without running C++ destructors: tearing gloo down at interpreter exit can abort
    # ("terminate called without an active exception") after all work is done and saved.
    sys.stdout.flush()
    os._exit(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(tmp_path: Path, sizes: list[int]) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, str(script), _losses.__file__, str(tmp_path), ",".join(map(str, sizes))]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]  # both ranks must report
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == WORLD for r in results)
    return results


def single_process_reference(
    sizes: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    img, txt = embeddings(0, n=sum(sizes))
    img, txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    scale = torch.tensor(7.0, requires_grad=True)
    loss = info_nce(img, txt, scale)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, scale.grad


def test_info_nce_gathered_across_two_gloo_processes(tmp_path):
    sizes = [B // 2, B // 2]
    res = run_gloo(tmp_path, sizes)
    loss, g_img, g_txt, g_scale = single_process_reference(sizes)
    # The mean of the per-rank losses (what DDP optimises) is the full-batch loss ...
    local = torch.stack([r["loss"] for r in res])
    assert torch.allclose(local.mean(), loss, atol=1e-6)
    assert not torch.allclose(local[0], local[1])  # ranks really saw different rows
    # ... and each rank's gradient w.r.t. its own rows is WORLD x the full-batch gradient of those rows:
    # gather-with-grad returns the other ranks' loss gradients to the owner, DDP then divides by WORLD.
    for r, out in enumerate(res):
        rows = slice(r * sizes[0], (r + 1) * sizes[0])
        assert torch.allclose(out["g_img"], WORLD * g_img[rows], atol=1e-5)
        assert torch.allclose(out["g_txt"], WORLD * g_txt[rows], atol=1e-5)
    # The (replicated) temperature gets the local loss's gradient; DDP's average is the global gradient.
    assert torch.allclose(torch.stack([r["g_scale"] for r in res]).mean(), g_scale, atol=1e-5)


def test_info_nce_gather_with_unequal_local_batches(tmp_path):
    sizes = [3, 5]
    res = run_gloo(tmp_path, sizes)
    loss, _, _, _ = single_process_reference(sizes)
    weighted = sum(n * r["loss"] for n, r in zip(sizes, res, strict=True)) / sum(sizes)
    assert torch.allclose(weighted, loss, atol=1e-6)
    # Gradients: each rank receives the sum over ranks of d(local loss)/d(its rows); rebuild that sum here.
    img, txt = embeddings(0, n=sum(sizes))
    img = img.clone().requires_grad_(True)
    total, lo = 0.0, 0
    for n in sizes:
        rows, labels = slice(lo, lo + n), torch.arange(lo, lo + n)
        total = total + 0.5 * (
            F.cross_entropy(7.0 * img[rows] @ txt.T, labels)
            + F.cross_entropy(7.0 * txt[rows] @ img.T, labels)
        )
        lo += n
    total.backward()
    for r, out in enumerate(res):
        lo = sum(sizes[:r])
        assert torch.allclose(out["g_img"], img.grad[lo : lo + sizes[r]], atol=1e-5)
