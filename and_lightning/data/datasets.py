"""Loaders that index ESC-50, UrbanSound8K, GTZAN and class-per-subfolder audio into a `DatasetIndex`.

Only files and metadata are checked here; audio content is decoded (and its errors raised) lazily by `ClipDataset`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from and_lightning.data.clips import ClipRecord, DatasetIndex

ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
URBANSOUND8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
GTZAN_DIRS = ("genres", "genres_original")
_MAX_LISTED = 5


class DatasetError(ValueError):
    """A dataset folder or its metadata does not match the expected layout."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A folder or file the dataset layout requires does not exist."""


def load_esc50(root: str | os.PathLike) -> DatasetIndex:
    """Index ESC-50 (`root/meta/esc50.csv` + `root/audio/*.wav`, folds 1-5); label = `target`, clip_id = file stem."""
    root = _existing_root(root, "ESC-50 (meta/esc50.csv and audio/*.wav)")
    return _index_csv(
        "esc50", "ESC-50", root / "meta" / "esc50.csv", ESC50_COLUMNS, label="target", class_name="category",
        file="filename", num_folds=5, audio_dir=lambda fold: root / "audio",
        meta=lambda row, at: {"category": row["category"], "esc10": row["esc10"].strip().lower() == "true",
                              "src_file": row["src_file"], "take": row["take"]})


def load_urbansound8k(root: str | os.PathLike) -> DatasetIndex:
    """Index UrbanSound8K (`root/metadata/UrbanSound8K.csv` + `root/audio/fold{N}/<file>`, folds 1-10)."""
    root = _existing_root(root, "UrbanSound8K (metadata/UrbanSound8K.csv and audio/fold1..fold10/)")
    return _index_csv(
        "urbansound8k", "UrbanSound8K", root / "metadata" / "UrbanSound8K.csv", URBANSOUND8K_COLUMNS, label="classID",
        class_name="class", file="slice_file_name", num_folds=10, audio_dir=lambda fold: root / "audio" / f"fold{fold}",
        meta=lambda row, at: {"class": row["class"], "fsID": _int_field(row, "fsID", *at),
                              "start": _float_field(row, "start", *at), "end": _float_field(row, "end", *at),
                              "salience": _int_field(row, "salience", *at)})


def _index_csv(name: str, dataset: str, csv_path: Path, columns: Sequence[str], *, label: str, class_name: str,
               file: str, num_folds: int, audio_dir: Callable[[int], Path],
               meta: Callable[[dict[str, str], tuple[Path, int]], dict[str, Any]]) -> DatasetIndex:
    """Index a dataset whose metadata CSV lists one clip per row: its class id (`label` column) and name, its file
    (in `audio_dir(fold)`) and fold; `meta(row, (csv_path, line))` gives the record's other fields."""
    records, pairs, missing = [], [], []
    for line, row in _read_csv(csv_path, columns, dataset):
        class_id = _int_field(row, label, csv_path, line)
        fold = _fold_field(row, csv_path, line, num_folds)
        audio = audio_dir(fold) / row[file]
        if not audio.is_file():
            missing.append(audio)
        pairs.append((class_id, row[class_name], csv_path, line))
        records.append(ClipRecord(clip_id=Path(row[file]).stem, path=str(audio), label=class_id, fold=fold,
                                  meta=meta(row, (csv_path, line))))
    _raise_if_missing(missing, csv_path)
    return _index(name, records, _class_names_from_pairs(pairs), csv_path)


def load_gtzan(root: str | os.PathLike, num_folds: int = 10,
               extensions: Sequence[str] = (".wav", ".au")) -> DatasetIndex:
    """Index GTZAN (`root/genres/<genre>/*` or the Kaggle `root/genres_original/`); clip_id = `<genre>/<stem>`.

    GTZAN has no official folds: each genre's sorted files get fold `i % num_folds + 1`.
    """
    root = _existing_root(root, "GTZAN (genres/<genre>/*.wav or genres_original/<genre>/*.wav)")
    base = next((root / d for d in GTZAN_DIRS if (root / d).is_dir()), None)
    if base is None:
        raise DatasetFileNotFoundError(
            f"{root}: no GTZAN genre folder; expected {' or '.join(str(root / d) for d in GTZAN_DIRS)}")
    return _index_class_folders("gtzan", base, extensions, num_folds, recursive=False)


def load_folder(root: str | os.PathLike, extensions: Sequence[str] = (".wav", ".flac", ".ogg"),
                num_folds: int = 5, name: str | None = None) -> DatasetIndex:
    """Index a class-per-subfolder tree (`root/<class>/**/<clip>.<ext>`); clip_id = relative path, no extension.

    Folds are deterministic and stratified: each class's sorted files get fold `i % num_folds + 1`.
    """
    root = _existing_root(root, "one subfolder per class holding audio files")
    exts = _normalise_extensions(extensions)
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if stray:
        raise DatasetError(f"{root}: audio files must sit inside a class subfolder, found at top level: "
                           f"{_listing(stray)}")
    return _index_class_folders(name or f"folder:{root.name}", root, exts, num_folds, recursive=True)


def folder_classes(root: str | os.PathLike) -> list[str]:
    """The class names `load_folder(root)` indexes, in label order (sorted subfolder names). conf/data/folder.yaml
    and conf/concepts/folder.yaml read them as `${folder_classes:<root>}` (data.num_classes, the concept set)."""
    base = _existing_root(root, "one subfolder per class holding audio files")
    names = [d.name for d in _class_dirs(base)]
    if not names:
        raise DatasetError(f"{base}: no class subfolders found (expected {base}/<class>/<clip>.wav)")
    return names


def stratified_folds(paths_by_class: dict[str, list[str]], num_folds: int) -> dict[str, int]:
    """Map each path to fold `i % num_folds + 1`, `i` being its rank in its class's sorted path list."""
    if num_folds < 1:
        raise DatasetError(f"num_folds must be >= 1, got {num_folds}")
    return {p: i % num_folds + 1 for paths in paths_by_class.values() for i, p in enumerate(sorted(paths))}


def _index_class_folders(name: str, base: Path, extensions: Sequence[str], num_folds: int,
                         recursive: bool) -> DatasetIndex:
    exts = _normalise_extensions(extensions)
    class_dirs = _class_dirs(base)
    if not class_dirs:
        raise DatasetError(f"{base}: no class subfolders found (expected {base}/<class>/<clip>{exts[0]})")
    files_by_class: dict[str, list[str]] = {}
    for d in class_dirs:
        found = [p for p in (d.rglob("*") if recursive else d.iterdir()) if p.suffix.lower() in exts
                 and not any(part.startswith(".") for part in p.relative_to(base).parts)]
        broken = [f"{p} -> {os.readlink(p)}" for p in found if p.is_symlink() and not p.exists()]
        if broken:
            raise DatasetFileNotFoundError(f"{d}: symbolic link(s) to missing files: {_listing(broken)}")
        rel = [p.relative_to(base).as_posix() for p in found if p.is_file()]
        if not rel:
            raise DatasetError(f"{d}: class folder holds no audio files with extensions {list(exts)}")
        files_by_class[d.name] = rel
    folds = stratified_folds(files_by_class, num_folds)
    class_names = list(files_by_class)
    records, seen = [], {}
    for label, cls in enumerate(class_names):
        for rel in sorted(files_by_class[cls]):
            clip_id = rel.rsplit(".", 1)[0]
            if clip_id in seen:
                raise DatasetError(f"{base}: '{seen[clip_id]}' and '{rel}' give the same clip_id '{clip_id}'")
            seen[clip_id] = rel
            records.append(ClipRecord(clip_id=clip_id, path=str(base / rel), label=label, fold=folds[rel],
                                      meta={"class": cls, "rel_path": rel}))
    return _index(name, records, class_names, base)


def _class_dirs(base: Path) -> list[Path]:
    """The class subfolders of `base` (hidden ones aside), sorted by name: label i is the i-th."""
    return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _existing_root(root: str | os.PathLike, expected: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetFileNotFoundError(f"{path}: dataset root folder does not exist (expected {expected})")
    return path


def _read_csv(path: Path, required: Iterable[str], dataset: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a metadata CSV as (line number, {column: stripped value}), after checking its columns."""
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{path}: {dataset} metadata CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing required column(s) {missing}; found columns {header}")
        rows = []
        for line, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DatasetError(f"{path}:{line}: expected {len(header)} fields, got {len(values)}")
            rows.append((line, {h: v.strip() for h, v in zip(header, values)}))
    return rows


def _int_field(row: dict[str, str], column: str, csv_path: Path, line: int) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise DatasetError(f"{csv_path}:{line}: column '{column}' must be an integer, got {row[column]!r}") from None


def _float_field(row: dict[str, str], column: str, csv_path: Path, line: int) -> float:
    try:
        return float(row[column])
    except ValueError:
        raise DatasetError(f"{csv_path}:{line}: column '{column}' must be a number, got {row[column]!r}") from None


def _fold_field(row: dict[str, str], csv_path: Path, line: int, num_folds: int) -> int:
    fold = _int_field(row, "fold", csv_path, line)
    if not 1 <= fold <= num_folds:
        raise DatasetError(f"{csv_path}:{line}: fold must be in 1..{num_folds}, got {fold}")
    return fold


def _class_names_from_pairs(pairs: list[tuple[int, str, Path, int]]) -> list[str]:
    """Class names indexed by class id, checking ids are 0..K-1 and ids and names pair one-to-one."""
    name_of: dict[int, tuple[str, int]] = {}
    id_of: dict[str, tuple[int, int]] = {}
    for class_id, name, csv_path, line in pairs:
        if class_id in name_of and name_of[class_id][0] != name:
            raise DatasetError(f"{csv_path}:{line}: class id {class_id} is named '{name}', but line "
                               f"{name_of[class_id][1]} names it '{name_of[class_id][0]}'")
        if name in id_of and id_of[name][0] != class_id:
            raise DatasetError(f"{csv_path}:{line}: class '{name}' has id {class_id}, but line "
                               f"{id_of[name][1]} gives it id {id_of[name][0]}")
        name_of.setdefault(class_id, (name, line))
        id_of.setdefault(name, (class_id, line))
    gaps = sorted(set(range(max(name_of, default=-1) + 1)) - set(name_of))
    negative = sorted(i for i in name_of if i < 0)
    if gaps or negative:
        csv_path = pairs[0][2]
        raise DatasetError(f"{csv_path}: class ids must be 0..K-1 with every id present; "
                           f"missing ids {gaps[:20]}, negative ids {negative}")
    return [name_of[i][0] for i in range(len(name_of))]


def _raise_if_missing(missing: list[Path], csv_path: Path) -> None:
    if missing:
        raise DatasetFileNotFoundError(f"{csv_path}: {len(missing)} listed audio file(s) do not exist: "
                                       f"{_listing(str(p) for p in missing)}")


def _index(name: str, records: list[ClipRecord], class_names: list[str], source: Path) -> DatasetIndex:
    if not records:
        raise DatasetError(f"{source}: dataset '{name}' has no clips")
    first_of: dict[str, str] = {}
    for r in records:
        if r.clip_id in first_of:
            raise DatasetError(f"{source}: clip_id '{r.clip_id}' appears twice ({first_of[r.clip_id]}, {r.path})")
        first_of[r.clip_id] = r.path
    return DatasetIndex(name=name, records=records, class_names=class_names)


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not exts:
        raise DatasetError("extensions must name at least one audio file extension, e.g. ('.wav',)")
    return exts


def _listing(items: Iterable[Any]) -> str:
    items = list(items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(str(i) for i in items[:_MAX_LISTED]) + more
