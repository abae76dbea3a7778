"""Loss functions alone, and the whole training loss of 2 gloo processes against one process."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import comtip_sc
from comtip_sc.model import (
    LogitScale,
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
WORKER = Path(__file__).with_name("_ddp_worker.py")
# The worker's network and batch builders also make the one-process reference here.
_spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
_ddp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ddp_worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(tmp_path: Path, sizes: list[int], mode: str = "info_nce") -> list[dict]:
    port = _free_port()
    # The workers import the same comtip_sc as this test process.
    src = str(Path(comtip_sc.__file__).parents[1])
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, str(WORKER), mode, str(tmp_path), ",".join(map(str, sizes))]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
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


@pytest.mark.parametrize("sizes", [[B // 2, B // 2], [3, 5]])
def test_info_nce_gathered_across_two_gloo_processes(tmp_path, sizes):
    res = run_gloo(tmp_path, sizes)
    loss, g_img, g_txt, g_scale = single_process_reference(sizes)
    # The mean of the per-rank losses (what DDP optimises) is the full-batch loss, also with unequal
    # local batches ...
    local = torch.stack([r["loss"] for r in res])
    assert torch.allclose(local.mean(), loss, atol=1e-6)
    assert not torch.allclose(local[0], local[1])  # ranks really saw different rows
    # ... and each rank's gradient w.r.t. its own rows is WORLD x the full-batch gradient of those rows:
    # gather-with-grad returns the other ranks' loss gradients to the owner, DDP then divides by WORLD.
    for r, out in enumerate(res):
        rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
        assert torch.allclose(out["g_img"], WORLD * g_img[rows], atol=1e-5)
        assert torch.allclose(out["g_txt"], WORLD * g_txt[rows], atol=1e-5)
    # The (replicated) temperature gets the local loss's gradient; DDP's average is the global gradient.
    assert torch.allclose(torch.stack([r["g_scale"] for r in res]).mean(), g_scale, atol=1e-5)


def test_full_loss_and_gradients_of_two_gloo_processes_match_one_process(tmp_path):
    """InfoNCE + MFM + PAAT + value query with global centring: DDP == one process on the global batch."""
    sizes = [4, 4]
    res = run_gloo(tmp_path, sizes, mode="network")
    net = _ddp_worker.tiny_network()
    ref = _ddp_worker.network_step(net, _ddp_worker.global_batch(sum(sizes)))
    for term in ("loss", "info_nce", "mfm", "paat", "paat_bce", "paat_rank", "paat_acc", "value_query"):
        per_rank = [r["terms"][term] for r in res]
        # What DDP optimises (and what Lightning logs with sync_dist) is the mean over ranks.
        assert math.isclose(sum(per_rank) / WORLD, ref["terms"][term], rel_tol=1e-5, abs_tol=1e-6), term
    assert res[0]["terms"]["loss"] != res[1]["terms"]["loss"]  # the ranks held different spots
    # DDP averages the parameter gradients over ranks: that average is the one-process gradient.
    assert set(res[0]["grads"]) == set(ref["grads"])
    assert len(ref["grads"]) > 20
    for name, g in ref["grads"].items():
        avg = (res[0]["grads"][name] + res[1]["grads"][name]) / WORLD
        assert torch.allclose(avg, g, atol=1e-5, rtol=1e-4), name
    # Every rank centred on (and tracked) the global batch mean.
    for r in res:
        assert torch.allclose(r["running_mean"], ref["running_mean"], atol=1e-6)
    # Random masks: the ranks draw different rows of the global draw, not the same mask twice.
    assert not torch.equal(res[0]["ids_hidden"], res[1]["ids_hidden"])
    assert torch.equal(torch.cat([r["ids_hidden"] for r in res]), ref["ids_hidden"])


def test_paat_balance_with_a_class_missing():
    # No mismatched token: the BCE is the negatives' alone; no real token at all: zero and chance.
    labels = torch.zeros(2, 3, dtype=torch.bool)
    mask = torch.ones(2, 3, dtype=torch.bool)
    logits = torch.tensor([[-2.0, 1.0, -3.0], [0.5, -1.0, -2.0]], requires_grad=True)
    bce, acc = pair_detection_loss(logits, labels, mask)
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits, labels.float()))
    assert float(acc) == pytest.approx(4 / 6)
    bce.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    none, chance = pair_detection_loss(logits, labels, torch.zeros_like(mask))
    assert float(none) == 0.0 and float(chance) == 0.5 and none.requires_grad
