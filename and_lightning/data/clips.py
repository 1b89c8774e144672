"""Clip records and the map-style dataset every loader produces (one stable `clip_id` per item)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from and_lightning.data.audio_io import fix_length, load_audio


@dataclass(frozen=True)
class ClipRecord:
    """One audio clip on disk: a stable id, its file, its class index, its fold and free-form metadata."""

    clip_id: str
    path: str
    label: int
    fold: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class DatasetIndex:
    """Everything a loader found: the records, the class names (index = label) and the dataset's name."""

    name: str
    records: list[ClipRecord]
    class_names: list[str]

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError(f"dataset '{self.name}': no clips found")
        ids = [r.clip_id for r in self.records]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset '{self.name}': clip_ids are not unique")

    def folds(self, folds: Sequence[int] | None) -> list[ClipRecord]:
        """Records whose fold is in `folds` (all records when `folds` is None)."""
        if folds is None:
            return list(self.records)
        wanted = set(int(f) for f in folds)
        return [r for r in self.records if r.fold in wanted]


class ClipDataset(Dataset):
    """Loads each record as a mono waveform at `sample_rate`, cropped/zero-padded to `clip_seconds`; "length" is
    the number of samples before padding (adapters that `uses_lengths` leave the padding out)."""

    def __init__(self, records: Sequence[ClipRecord], sample_rate: int, clip_seconds: float):
        self.records = list(records)
        self.sample_rate = int(sample_rate)
        self.num_samples = int(round(clip_seconds * sample_rate))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        wave, _ = load_audio(rec.path, self.sample_rate)
        return {
            "audio": fix_length(wave, self.num_samples),
            "length": torch.tensor(min(wave.shape[-1], self.num_samples), dtype=torch.long),
            "label": torch.tensor(rec.label, dtype=torch.long),
            "clip_id": rec.clip_id,
        }
