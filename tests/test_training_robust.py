"""Training that is interrupted or goes non-finite: resuming gives the uninterrupted weights, NaN stops cleanly."""

import lightning as L
import numpy as np
import pytest
import torch

import comtip_sc as cs
from comtip_sc.train import ComtipLightningModule, NonFiniteLossError


@pytest.fixture(scope="module")
def toy():
    return cs.datasets.toy_tissue(n_rows=6, n_cols=6, n_genes=30, seed=0)


def _fit(sdata, root, config, **kw):
    return cs.tl.fit(
        sdata,
        config=config,
        tile_um=100,
        batch_size=16,
        seed=0,
        val_sections=None,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        **kw,
    )


class _StopAfterFirstEpoch(L.Callback):
    """Interrupt a run planned for more epochs once the first epoch's checkpoint is written."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resumed_fit_ends_with_the_uninterrupted_weights(toy, tmp_path, tiny_config, one_torch_thread):
    straight = _fit(toy, tmp_path / "a", tiny_config, max_epochs=2)
    # Same plan (2 epochs: the learning-rate schedule spans both), interrupted after the first.
    first = _fit(toy, tmp_path / "b", tiny_config, max_epochs=2, callbacks=[_StopAfterFirstEpoch()])
    assert 2 * first.history["global_steps"] == straight.history["global_steps"]
    (last,) = (tmp_path / "b").rglob("last.ckpt")
    resumed = _fit(toy, tmp_path / "b2", tiny_config, max_epochs=2, ckpt_path=str(last))
    assert resumed.history["global_steps"] == straight.history["global_steps"]
    a, b = straight.network.state_dict(), resumed.network.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ after resuming: {differ[:5]}"


class _InjectInf(L.Callback):
    """Put an infinite expression value into the first batch of the second epoch (as a corrupt input would)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            batch["values"][0, 0] = float("inf")


def test_non_finite_loss_stops_naming_step_and_term(toy, tmp_path, tiny_config, one_torch_thread):
    with pytest.raises(NonFiniteLossError) as info:
        _fit(toy, tmp_path, tiny_config, max_epochs=3, callbacks=[_InjectInf()])
    msg = str(info.value)
    steps_per_epoch = int(np.ceil(toy.tables["table"].n_obs / 16))
    assert f"global step {steps_per_epoch} " in msg and "epoch 1" in msg
    named = msg.split("loss term(s)")[1].split("became")[0]
    assert any(t in named for t in ("info_nce", "mfm", "paat", "value_query"))
    (last,) = tmp_path.rglob("last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == steps_per_epoch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    module = ComtipLightningModule.load_from_checkpoint(last, map_location="cpu")
    assert all(torch.isfinite(p).all() for p in module.parameters())
