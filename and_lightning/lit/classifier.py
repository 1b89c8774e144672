"""LightningModule that trains a target adapter as a classifier under a training strategy."""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from and_lightning.models.base import TargetAdapter


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of `model`; `freeze_backbone=True` trains only the head (linear probe)."""

    def __init__(
        self,
        model: TargetAdapter,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        freeze_backbone: bool = False,
        config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.freeze_backbone = freeze_backbone
        self.save_hyperparameters({"config": config or {}, "num_classes": num_classes,
                                   "freeze_backbone": freeze_backbone})
        if freeze_backbone:
            head = set(map(id, model.head().parameters()))
            for p in model.parameters():
                p.requires_grad_(id(p) in head)
        self.acc = torch.nn.ModuleDict({s: MulticlassAccuracy(num_classes, average="micro")
                                        for s in ("train_", "val_", "test_")})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Every module trains (dropout and BatchNorm as in training) even when the model was in eval mode
        before `fit` (Lightning keeps the mode it finds, e.g. after a prediction pass); a frozen backbone stays
        in eval mode (BatchNorm statistics and dropout frozen too). Re-applied every batch, since validation
        switches modes in between."""
        self.train()
        if self.freeze_backbone:
            self.model.eval()
            self.model.head().train()

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.run(audio, lengths)

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        logits = self(batch["audio"], batch.get("length"))
        loss = F.cross_entropy(logits, batch["label"])
        acc = self.acc[split + "_"]
        acc(logits, batch["label"])
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(logits))
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
