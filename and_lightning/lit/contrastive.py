"""LightningModule for label-free pre-training: SimCLR on two augmented views of each training clip.

The representation is what the adapter feeds its classification head (captured with a forward pre-hook), so
the same module pre-trains any adapter (CNN, AST, BEATs) and the later linear probe sees exactly that vector.
"""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from and_lightning.models.base import TargetAdapter
from and_lightning.ssl.augment import WaveAugment
from and_lightning.ssl.losses import nt_xent


class ContrastiveModule(L.LightningModule):
    """NT-Xent between projections of two `WaveAugment` views; labels in the batch are never read."""

    def __init__(
        self,
        model: TargetAdapter,
        optimizer: Callable[..., torch.optim.Optimizer],
        augment: WaveAugment,
        projection_dim: int = 128,
        hidden_dim: int = 256,
        temperature: float = 0.2,
        scheduler: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.augment = augment
        self.temperature = float(temperature)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        width = self._embedding_width()
        self.projector = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(hidden_dim, projection_dim))

    def _embedding_width(self) -> int:
        head = self.model.head()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"ssl: the head of {type(self.model).__name__} is a {type(head).__name__}; "
                            "contrastive pre-training needs a Linear head (its input is the representation)")
        return head.in_features

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] -> the head's input [B, D] (token-level inputs are averaged over tokens)."""
        captured: list[torch.Tensor] = []
        handle = self.model.head().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.model(wave)
        finally:
            handle.remove()
        x = captured[0]
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor | None:
        wave = batch["audio"]
        if len(wave) < 2:  # a one-clip last batch has no negatives: skipped
            return None
        z1 = self.projector(self.embed(self.augment(wave)))
        z2 = self.projector(self.embed(self.augment(wave)))
        loss = nt_xent(z1, z2, self.temperature)
        self.log(f"ssl_{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(wave))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
