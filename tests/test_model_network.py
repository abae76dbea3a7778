"""End-to-end tests of the CoMTIP network on a tiny ViT and a synthetic, learnable toy batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comtip_sc.model import ComtipConfig, ComtipNetwork, build_network, candidate_values, corrupt_pairs

N_CLASSES, N_GENES, TILE = 4, 24, 32
# Real symbols: their character n-grams are as varied as in a real panel (unlike GENE0, GENE1, ...).
GENES = (
    "CD3E EPCAM KRT19 ALB MKI67 PTPRC COL1A1 ACTA2 VIM CD68 LYZ MS4A1 CD79A NKG7 GNLY CD8A "
    "FOXP3 PECAM1 VWF ERBB2 ESR1 PGR KRT5 TFF1"
).split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> ComtipConfig:
    base = dict(
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        freeze_backbone="none",
        token_depth=0,
        token_dim=None,
        tile_px=TILE,
        backbone_kwargs=dict(patch_size=8, depth=2, embed_dim=64, num_heads=2),
        embed_dim=32,
        gene_dim=32,
        n_heads_gene=2,
        char_ngram_dim=64,
        text_encoder="char-ngram",
        value_hidden=32,
    )
    base.update(overrides)
    return ComtipConfig(**base)


class ToyTissue:
    """Spots of 4 latent classes: the class sets both the tile's texture and each gene's mean value."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        # Each gene has its own base level (as real genes do) plus a class-specific programme on top.
        base = torch.rand(N_GENES, generator=g) * 4.0
        self.mu = base + 1.5 * torch.randint(0, 2, (N_CLASSES, N_GENES), generator=g).float()
        self.colour = torch.randn(N_CLASSES, 3, 1, 1, generator=g)
        self.freq = torch.linspace(0.5, 2.0, N_CLASSES)

    def batch(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        cls = torch.randint(0, N_CLASSES, (n,), generator=g)
        yy, xx = torch.meshgrid(torch.arange(TILE), torch.arange(TILE), indexing="ij")
        waves = torch.sin(self.freq[cls, None, None] * (xx + yy)[None].float())  # class texture
        image = self.colour[cls] * (1.0 + waves[:, None]) + 0.3 * torch.randn(n, 3, TILE, TILE, generator=g)
        values = (self.mu[cls] + 0.2 * torch.randn(n, N_GENES, generator=g)).clamp(min=0)
        # Each spot carries a random 80-100% of the panel, in random order: rows differ in gene sets.
        gene_idx = torch.stack([torch.randperm(N_GENES, generator=g) for _ in range(n)])
        values = values.gather(1, gene_idx)
        n_real = torch.randint(int(0.8 * N_GENES), N_GENES + 1, (n,), generator=g)
        mask = torch.arange(N_GENES)[None] < n_real[:, None]
        gene_idx = gene_idx.masked_fill(~mask, -1)
        return {"image": image, "gene_idx": gene_idx, "values": values, "mask": mask, "cls": cls}


def train(net: ComtipNetwork, steps: int, data: ToyTissue, lr: float = 1.5e-3, batch: int = 16) -> list[dict]:
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    hist = []
    net.train()
    for step in range(steps):
        out = net(data.batch(batch, seed=1000 + step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})
    return hist


@pytest.fixture(scope="module")
def trained() -> tuple[ComtipNetwork, list[dict], ToyTissue]:
    torch.manual_seed(0)
    data = ToyTissue(0)
    net = build_network(tiny_config(), GENES)
    net.set_gene_max((data.mu.max(0).values + 1.0).tolist())  # what fit sets from its data
    hist = train(net, 100, data)
    return net, hist, data


def test_each_loss_term_finite_and_falls(trained):
    _, hist, _ = trained
    for key in ("loss", "info_nce", "mfm", "paat_bce", "paat_rank", "value_query"):
        vals = np.array([h[key] for h in hist])
        assert np.isfinite(vals).all(), key
        first, last = vals[:3].mean(), vals[-3:].mean()
        assert last < first, f"{key}: first {first:.4f} -> last {last:.4f}"


def test_paat_discriminator_beats_chance_on_held_out(trained):
    net, _, data = trained
    net.eval()
    g = torch.Generator().manual_seed(12345)
    b = data.batch(64, seed=999_999)  # never seen in training
    with torch.no_grad():
        bad, labels = corrupt_pairs(b["values"], b["mask"], 0.3, g)
        enc = net.gene_encoder(b["gene_idx"], bad, b["mask"])
        logits = net.discriminator(enc["tokens"])
    m = b["mask"]
    pred = logits > 0
    tpr = (pred & labels & m).sum() / (labels & m).sum()
    tnr = (~pred & ~labels & m).sum() / (~labels & m).sum()
    balanced = 0.5 * float(tpr + tnr)
    assert balanced > 0.6, f"balanced accuracy {balanced:.3f}"


def test_trained_embeddings_retrieve_matching_class(trained):
    net, _, data = trained
    net.eval()
    b = data.batch(64, seed=424242)
    with torch.no_grad():
        img = net.encode_image(b["image"])
        txt = net.encode_genes(b["gene_idx"], b["values"], b["mask"])
    nearest = (img @ txt.T).argmax(1)
    acc = float((b["cls"][nearest] == b["cls"]).float().mean())
    assert acc > 0.5, acc  # chance is 0.25


@pytest.mark.parametrize(
    ("flags", "absent"),
    [
        (dict(mfm=False), {"mfm"}),
        (dict(paat=False), {"paat", "paat_bce", "paat_rank", "paat_acc"}),
        (dict(mfm=False, paat=False), {"mfm", "paat", "paat_bce", "paat_rank", "paat_acc"}),
        (
            dict(use_values=False, paat=False, value_query=False),
            {"paat", "paat_bce", "paat_rank", "paat_acc", "value_query"},
        ),
        (dict(use_names=False), set()),
        (dict(value_query=False), {"value_query"}),
    ],
)
def test_flags_switch_terms_off(flags, absent):
    torch.manual_seed(0)
    net = build_network(tiny_config(**flags), GENES)
    net.set_gene_max([5.0] * len(GENES))
    out = net(ToyTissue(0).batch(4, seed=1))
    assert absent.isdisjoint(out), set(out) & absent
    assert {"loss", "info_nce"} <= set(out)
    assert ("value_query" in out) == net.config.value_query
    names = dict(net.named_parameters())
    assert any(k.startswith("mfm_generator") for k in names) == net.config.mfm
    assert any(k.startswith("discriminator") for k in names) == net.config.paat
    assert hasattr(net.gene_encoder, "value_mlp") == net.config.use_values
    assert hasattr(net.gene_encoder, "name_emb") == net.config.use_names
    out["loss"].backward()
    # Nothing that exists is left out of the graph (DDP would otherwise need find_unused_parameters).
    unused = [k for k, p in names.items() if p.grad is None]
    assert not unused, unused


def test_value_query_needs_gene_max():
    # A bare network does not know the value range of its genes: no term (fit sets it, so does load).
    net = build_network(tiny_config(), GENES)
    assert "value_query" not in net(ToyTissue(0).batch(4, seed=1))


def test_zero_shot_read_out_tracks_true_values(trained):
    net, _, data = trained
    net.eval()
    b = data.batch(64, seed=777_777)  # never seen in training
    with torch.no_grad():
        img = net.encode_image(b["image"])
        genes = torch.arange(len(GENES))
        pred = net.read_values(img, genes, candidate_values(net.stat_max, 16))
    # True value of every gene at every spot, back in vocabulary order (batches shuffle genes per spot).
    true = data.mu[b["cls"]]
    r = [np.corrcoef(pred[:, g].numpy(), true[:, g].numpy())[0, 1] for g in range(len(GENES))]
    r = np.nan_to_num(r)
    # The class sets each gene's mean; a gene whose level does not depend on the class has r ~ 0 by design.
    varies = (data.mu.max(0).values - data.mu.min(0).values) > 0
    assert np.mean(r[varies.numpy()]) > 0.5, np.round(r, 2)


def test_mfm_off_generator_gets_no_grad():
    torch.manual_seed(0)
    net = build_network(tiny_config(), GENES)
    net.config = net.config.replace(mfm=False)  # module exists, flag off: the term must not run
    out = net(ToyTissue(0).batch(4, seed=1))
    out["loss"].backward()
    assert "mfm" not in out
    assert all(p.grad is None for p in net.mfm_generator.parameters())


def test_gradients_reach_both_branches():
    torch.manual_seed(0)
    net = build_network(tiny_config(), GENES)
    net(ToyTissue(0).batch(4, seed=1))["loss"].backward()
    for prefix in (
        "vision.backbone.patch_embed",
        "vision.backbone.blocks.0",
        "gene_encoder.name_proj",
        "gene_encoder.value_mlp",
        "gene_encoder.bind_mlp",
        "image_head",
        "gene_head",
        "mfm_generator",
        "discriminator",
        "logit_scale",
    ):
        grads = [p.grad for k, p in net.named_parameters() if k.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert sum(float(g.abs().sum()) for g in grads) > 0, prefix


def test_same_seed_same_losses_and_weights():
    def run():
        torch.manual_seed(7)
        net = build_network(tiny_config(), GENES)
        hist = train(net, 3, ToyTissue(0), batch=8)
        return hist, net.state_dict()

    h1, s1 = run()
    h2, s2 = run()
    assert h1 == h2
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_embeddings_normalised_and_names_only_uses_topk():
    torch.manual_seed(0)
    net = build_network(tiny_config(use_values=False, paat=False, value_query=False, top_k_names=5), GENES)
    b = ToyTissue(0).batch(3, seed=2)
    img = net.encode_image(b["image"])
    txt = net.encode_genes(b["gene_idx"], b["values"], b["mask"])
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    # Names only: genes outside each spot's top 5 do not matter, whatever their value.
    v2 = b["values"].clone()
    top = b["values"].masked_fill(~b["mask"], -1).topk(5, dim=1).indices
    low = torch.ones_like(v2, dtype=torch.bool).scatter_(1, top, False)
    v2[low] = torch.rand(int(low.sum())) * 0.01 - 10  # change, keep them below the top 5
    net.eval()
    with torch.no_grad():
        a = net.encode_genes(b["gene_idx"], b["values"], b["mask"])
        c = net.encode_genes(b["gene_idx"], v2, b["mask"])
    assert torch.allclose(a, c, atol=1e-6)


def test_config_roundtrip_and_resolved_text_backend():
    net = build_network(tiny_config(text_encoder="auto", use_names=True), GENES[:3])
    assert net.config.text_encoder in ("minilm", "char-ngram")
    cfg = ComtipConfig.from_dict(net.config.to_dict())
    assert cfg == net.config
    with pytest.raises(ValueError, match="paat"):
        tiny_config(use_values=False, paat=True, value_query=False)
    with pytest.raises(ValueError, match="value_query"):
        tiny_config(use_values=False, paat=False, value_query=True)


def test_added_genes_extend_the_value_range_with_unknowns():
    net = build_network(tiny_config(), GENES)
    net.set_gene_max([5.0] * len(GENES))
    net.add_genes(["NEWGENE1", "NEWGENE2"])
    assert len(net.stat_max) == len(GENES) + 2 and torch.isnan(net.stat_max[-2:]).all()
    # Training still queries only genes with a known range, and runs with the grown vocabulary.
    assert "value_query" in net(ToyTissue(0).batch(4, seed=1))


def test_value_queries_read_each_spots_true_values():
    torch.manual_seed(0)
    net = build_network(tiny_config(value_query_genes=5), GENES)
    net.set_gene_max([5.0] * len(GENES))
    b = ToyTissue(0).batch(6, seed=3)  # genes shuffled per spot, some padded away
    q = net._sample_queries(b, None)
    assert len(q["genes"]) == 5 and q["candidates"].shape == (5, net.config.value_query_candidates)
    for i in range(6):
        for j, g in enumerate(q["genes"].tolist()):
            where = (b["gene_idx"][i] == g) & b["mask"][i]
            assert bool(q["valid"][i, j]) == bool(where.any())
            if where.any():
                assert float(q["true"][i, j]) == pytest.approx(float(b["values"][i][where]))


def _host_reads(fn) -> int:
    """Reads of tensor values back to the host while ``fn`` runs (each one a wait for the GPU there)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name in ("aten::_local_scalar_dense", "aten::nonzero") for e in prof.events())


def test_a_training_forward_reads_nothing_back_to_the_host():
    # Centring, PAAT's class balance and the value-query genes are decided on the device: a host read
    # would make the host wait for the GPU in every step.
    torch.manual_seed(0)
    net = build_network(tiny_config(value_query_genes=5), GENES).train()
    net.set_gene_max([5.0] * len(GENES))
    batch = ToyTissue(0).batch(6, seed=3)
    net(batch)  # the first step lists the genes with a known range, once
    assert _host_reads(lambda: net(batch)["loss"].backward()) == 0
    # New statistics are picked up.
    net.set_gene_max([5.0] * 3 + [float("nan")] * (len(GENES) - 3))
    assert set(net._sample_queries(batch, None)["genes"].tolist()) <= {0, 1, 2}
    net.stat_max[3] = 5.0  # changed in place
    assert 3 in net._known_genes().tolist()


def test_sentence_centring_on_the_device_keeps_its_rules():
    from comtip_sc.model._gene_text import SentenceCentering

    c = SentenceCentering(2, momentum=0.5).train()
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.allclose(c(x), x - x.mean(0))  # the batch's own mean
    assert torch.allclose(c.running_mean, x.mean(0))  # the first batch replaces the zero start
    y = torch.tensor([[5.0, 8.0], [7.0, 10.0]])
    c(y)
    assert torch.allclose(c.running_mean, 0.5 * x.mean(0) + 0.5 * y.mean(0))
    before = c.running_mean.clone()
    one = torch.tensor([[100.0, 100.0]])
    assert torch.allclose(c(one), one - before)  # one sentence: the running mean, left unchanged
    assert torch.equal(c.running_mean, before) and int(c.num_batches_tracked) == 2
    # Only the first n_ref rows (the true sentences) set the mean.
    assert torch.allclose(c(torch.cat([x, y]), n_ref=2)[:2], x - x.mean(0))
