"""One LightningDataModule for every dataset: fold-based train/val/test splits, and all clips to predict."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
from torch.utils.data import DataLoader

from and_lightning.data.clips import ClipDataset, DatasetIndex


class AudioDataModule(L.LightningDataModule):
    """Serves clips of a `DatasetIndex` as {"audio": [B, T], "label": [B], "clip_id": list[str]} batches.

    `index` is a DatasetIndex or a zero-argument factory (e.g. a Hydra partial) called once in `prepare_data`
    / `setup`, so generating or scanning a dataset happens only when data is needed.
    """

    def __init__(
        self,
        index: DatasetIndex | Callable[[], DatasetIndex],
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        train_folds: Sequence[int] | None = None,
        val_folds: Sequence[int] | None = None,
        test_folds: Sequence[int] | None = None,
        predict_folds: Sequence[int] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self._index = index
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.folds = {"train": train_folds, "val": val_folds, "test": test_folds, "predict": predict_folds}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.expected_classes = num_classes

    @property
    def index(self) -> DatasetIndex:
        if callable(self._index):
            self._index = self._index()
            n = len(self._index.class_names)
            if self.expected_classes is not None and n != self.expected_classes:
                raise ValueError(
                    f"data.num_classes is {self.expected_classes} but dataset '{self._index.name}' "
                    f"has {n} classes: {self._index.class_names}"
                )
        return self._index

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def prepare_data(self) -> None:
        self.index  # generate / scan once, on one process

    def dataset(self, split: str) -> ClipDataset:
        folds = self.folds[split]
        records = self.index.folds(folds)
        if not records:
            raise ValueError(f"dataset '{self.index.name}': split '{split}' (folds {list(folds)}) has no clips")
        return ClipDataset(records, self.sample_rate, self.clip_seconds)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def describe(self) -> dict[str, Any]:
        """Split sizes, for logs."""
        return {split: len(self.index.folds(f)) for split, f in self.folds.items()}
