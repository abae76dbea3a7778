"""Non-contrastive baselines of the benchmark: ST-Net-like regression, frozen features + ridge, mean.

They share everything with the CoMTIP rows that is not the method itself: the same vision branch (trunk,
its weights and freezing, token transformer; ``comtip_sc.model.build_vision``), the same tiles (the
fold's tile caches, and its trunk-token cache when the trunk is frozen), the same collate (trunk
normalisation, flip/rot90 augmentation for training), batch size, epochs, optimiser schedule and seed. Predictions are ``(n_test, n_genes)`` arrays on the normalised log1p scale, in panel order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from comtip_sc.model import ComtipConfig, build_vision, create_backbone
from comtip_sc.pp import cache_trunk_tokens
from comtip_sc.tl import ridge_cv
from comtip_sc.train import SentenceCollate, SpotDataModule, SpotSentences, lr_factor

#: HEST-Benchmark's PCA size.
MAX_PCA = 256


def _backbone(config: ComtipConfig) -> nn.Module:
    return create_backbone(
        config.backbone,
        config.tile_px,
        pretrained=config.pretrained,
        checkpoint_path=config.checkpoint_path,
        **config.backbone_kwargs,
    )


def _norm_stats(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's expected mean/std, read exactly as :class:`~comtip_sc.model.ComtipNetwork` reads them."""
    cfg = backbone.pretrained_cfg
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))


def _pooled(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's own global token (CLS or mean), the vector CoMTIP's image head also starts from."""
    return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def tile_dataset(tiles: Any, values: np.ndarray) -> SpotSentences:
    """Tiles + panel values as the items :class:`~comtip_sc.train.SentenceCollate` expects."""
    return SpotSentences(tiles, values, np.arange(values.shape[1]), group=0)


class RegressionModule(L.LightningModule):
    """ST-Net-like image → expression regression: CoMTIP's vision branch + one linear head, trained with MSE.

    Parameters
    ----------
    config
        The CoMTIP config of the benchmark; only its vision fields are used.
    n_genes
        Panel size (outputs).
    train_mean
        Per-gene training mean; initialises the head's bias, so that the few CPU epochs are spent on
        spot-to-spot variation rather than on learning each gene's offset.
    lr, weight_decay, warmup_frac
        AdamW with linear warm-up and cosine decay, as :class:`~comtip_sc.train.ComtipLightningModule`.

    Examples
    --------
    >>> cfg = ComtipConfig.preset("vit-tiny", tile_px=32,
    ...     backbone_kwargs=dict(patch_size=8, depth=1, embed_dim=32, num_heads=2))
    >>> RegressionModule(cfg, 3, np.zeros(3))({"image": torch.zeros(2, 3, 32, 32)}).shape
    torch.Size([2, 3])

    """

    def __init__(
        self,
        config: ComtipConfig,
        n_genes: int,
        train_mean: np.ndarray,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_frac: float = 0.05,
    ) -> None:
        super().__init__()
        self.vision = build_vision(config)
        self.head = nn.Linear(self.vision.dim, n_genes)
        with torch.no_grad():
            self.head.bias.copy_(torch.as_tensor(train_mean, dtype=torch.float32))
        self.lr, self.weight_decay, self.warmup_frac = lr, weight_decay, warmup_frac

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted panel expression ``[B, n_genes]`` of a batch of images or cached trunk tokens."""
        if "tokens" in batch:
            pooled, _ = self.vision.forward_from_tokens(batch["tokens"])
        else:
            pooled, _ = self.vision.forward_full(batch["image"])
        return self.head(pooled)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """MSE between predicted and observed normalised expression."""
        loss = F.mse_loss(self(batch), batch["values"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["values"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no decay on 1-d parameters and tokens) + warm-up/cosine per step."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue  # a frozen trunk
            (no_decay if p.ndim < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(round(self.warmup_frac * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _device(accelerator: str) -> torch.device:
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


@torch.no_grad()
def _predict_batches(fn, dataset: Dataset, collate: SentenceCollate, batch_size: int, device) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = [fn({k: v.to(device) for k, v in b.items()}).float().cpu() for b in loader]
    return torch.cat(out).numpy()


def fit_regression(
    config: ComtipConfig,
    train_tiles: Any,
    train_values: np.ndarray,
    test_tiles: Any,
    *,
    max_epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    accelerator: str = "auto",
    precision: str = "32-true",
    default_root_dir: str | None = None,
    token_cache: str | None = None,
) -> np.ndarray:
    """Train the ST-Net-like regressor on the training spots and predict the test spots.

    With a frozen trunk under a token transformer, training reads the trunk's tokens from ``token_cache``
    (built there, or reused when CoMTIP's fits built it for the same trunk and tiles), as CoMTIP's fits do.

    Returns
    -------
    ``(n_test, n_genes)`` predictions on the normalised log1p scale.

    """
    L.seed_everything(seed, workers=True)
    module = RegressionModule(config, train_values.shape[1], train_values.mean(0), lr, weight_decay)
    mean, std = _norm_stats(module.vision.backbone)
    if token_cache is not None and module.vision.trunk_frozen and module.vision.tokens is not None:
        train_tiles = cache_trunk_tokens(train_tiles, module.vision, token_cache, mean=mean, std=std)
    ds = tile_dataset(train_tiles, train_values)
    dm = SpotDataModule([ds], batch_size=batch_size, mean=mean, std=std)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=default_root_dir,
        deterministic=not torch.cuda.is_available(),
    )
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    device = _device(accelerator)
    module = module.to(device).eval()
    test = tile_dataset(test_tiles, np.zeros((len(test_tiles), 0), np.float32))
    return _predict_batches(module, test, SentenceCollate(mean, std), batch_size * 2, device)


def frozen_features(
    config: ComtipConfig, tiles: Sequence[Any], *, seed: int, batch_size: int = 64, accelerator: str = "auto"
) -> list[np.ndarray]:
    """Global-token features of one frozen backbone (built once, seeded) for each tile collection."""
    torch.manual_seed(seed)
    backbone = _backbone(config).eval()
    device = _device(accelerator)
    backbone = backbone.to(device)
    collate = SentenceCollate(*_norm_stats(backbone))
    return [
        _predict_batches(
            lambda b: _pooled(backbone, b["image"]),
            tile_dataset(t, np.zeros((len(t), 0), np.float32)),
            collate,
            batch_size,
            device,
        )
        for t in tiles
    ]


def ridge_on_features(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, folds: np.ndarray | None = None
) -> np.ndarray:
    """HEST-style probe: StandardScaler → PCA(≤256) → ridge, its penalty chosen as the CoMTIP head's is.

    ``folds`` are the training spots' spatial CV folds (:func:`~comtip_sc.tl.spatial_folds`);
    ``None``: leave-one-spot-out.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)); y = x[:, :2] @ np.ones((2, 3))
    >>> ridge_on_features(x, y, x[:5], folds=np.arange(40) % 5).shape
    (5, 3)

    """
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_comp = int(min(MAX_PCA, train_x.shape[0] - 1, train_x.shape[1]))
    reduce = make_pipeline(StandardScaler(), PCA(n_components=n_comp, random_state=0))
    ridge = ridge_cv(reduce.fit_transform(train_x), train_y, folds)
    return ridge.predict(reduce.transform(test_x)).astype(np.float32)


def train_mean(train_y: np.ndarray, n_test: int) -> np.ndarray:
    """Every test spot gets each gene's training mean (PCC is 0 by construction; MSE/MAE are the floor to beat)."""
    return np.repeat(train_y.mean(0, keepdims=True), n_test, axis=0).astype(np.float32)
