"""Builders for tiny on-disk audio datasets in their real folder layouts (ESC-50, UrbanSound8K, GTZAN, folder).

Every clip is a short sine tone written with soundfile; builders return the metadata rows they wrote.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC50_CLASSES = ["dog", "rooster", "pig"]  # official targets 0, 1, 2
ESC10_CLASSES = {"dog", "rooster"}
URBANSOUND8K_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
URBANSOUND8K_CLASSES = ["air_conditioner", "car_horn", "children_playing"]  # official classIDs 0, 1, 2
GTZAN_GENRES = ["blues", "classical", "rock"]


def write_tone(path: str | Path, sample_rate: int = 22050, seconds: float = 0.2, freq: float = 440.0,
               channels: int = 1, subtype: str | None = None) -> np.ndarray:
    """Write a sine tone (amplitude 0.5, same in every channel, format from the suffix); return [frames, channels]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    data = np.repeat((0.5 * np.sin(2 * np.pi * freq * t))[:, None], channels, axis=1).astype(np.float32)
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return data


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[dict]) -> None:
    """Write `rows` (dicts keyed by `header`) as a CSV with a header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def make_esc50(root: str | Path, classes: Sequence[str] = ESC50_CLASSES, folds: Sequence[int] = (1, 2, 3, 4, 5),
               clips_per_fold: int = 1, sample_rate: int = 44100, seconds: float = 0.2) -> list[dict]:
    """ESC-50 layout: `root/meta/esc50.csv` + `root/audio/{fold}-{src_file}-{take}-{target}.wav`."""
    root = Path(root)
    rows = []
    for fold in folds:
        for target, category in enumerate(classes):
            for k in range(clips_per_fold):
                src_file = 100000 + 1000 * fold + 10 * target + k
                filename = f"{fold}-{src_file}-A-{target}.wav"
                write_tone(root / "audio" / filename, sample_rate, seconds, freq=200.0 * (target + 1))
                rows.append({"filename": filename, "fold": fold, "target": target, "category": category,
                             "esc10": category in ESC10_CLASSES, "src_file": src_file, "take": "A"})
    write_csv(root / "meta" / "esc50.csv", ESC50_HEADER, rows)
    return rows


def make_urbansound8k(root: str | Path, classes: Sequence[str] = URBANSOUND8K_CLASSES,
                      folds: Sequence[int] = (1, 2, 3), clips_per_fold: int = 1, sample_rate: int = 22050,
                      seconds: float = 0.2) -> list[dict]:
    """UrbanSound8K layout: `root/metadata/UrbanSound8K.csv` + `root/audio/fold{N}/{fsID}-{classID}-0-{k}.wav`."""
    root = Path(root)
    rows = []
    for fold in folds:
        for class_id, name in enumerate(classes):
            fs_id = 7000 + 100 * fold + class_id
            for k in range(clips_per_fold):
                filename = f"{fs_id}-{class_id}-0-{k}.wav"
                write_tone(root / "audio" / f"fold{fold}" / filename, sample_rate, seconds,
                           freq=300.0 * (class_id + 1))
                rows.append({"slice_file_name": filename, "fsID": fs_id, "start": 0.5 * k,
                             "end": 0.5 * k + seconds, "salience": 1 + k % 2, "fold": fold,
                             "classID": class_id, "class": name})
    write_csv(root / "metadata" / "UrbanSound8K.csv", URBANSOUND8K_HEADER, rows)
    return rows


def make_gtzan(root: str | Path, genres: Sequence[str] = GTZAN_GENRES, clips_per_genre: int = 3,
               subdir: str = "genres", sample_rate: int = 22050, seconds: float = 0.2) -> list[Path]:
    """GTZAN layout: `root/<subdir>/<genre>/<genre>.0000k.wav` (`subdir` 'genres', or Kaggle's 'genres_original')."""
    paths = []
    for g, genre in enumerate(genres):
        for k in range(clips_per_genre):
            path = Path(root) / subdir / genre / f"{genre}.{k:05d}.wav"
            write_tone(path, sample_rate, seconds, freq=250.0 * (g + 1))
            paths.append(path)
    return paths


def make_folder(root: str | Path, files: dict[str, Sequence[str]], sample_rate: int = 16000,
                seconds: float = 0.2) -> list[Path]:
    """Class-per-subfolder layout: `root/<class>/<relative file>` for each class and file name given."""
    paths = []
    for c, (cls, names) in enumerate(files.items()):
        for name in names:
            path = Path(root) / cls / name
            write_tone(path, sample_rate, seconds, freq=220.0 * (c + 1))
            paths.append(path)
    return paths
