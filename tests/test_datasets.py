"""Dataset loaders on tiny fixtures in the real ESC-50 / UrbanSound8K / GTZAN / folder layouts, and their errors."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from and_lightning.data.audio_io import AudioError
from and_lightning.data.clips import ClipDataset
from and_lightning.data.datasets import (
    DatasetError,
    load_esc50,
    load_folder,
    load_gtzan,
    load_urbansound8k,
    stratified_folds,
)
from fixtures_audio import (
    ESC50_HEADER,
    URBANSOUND8K_HEADER,
    make_esc50,
    make_folder,
    make_gtzan,
    make_urbansound8k,
    write_csv,
    write_tone,
)


def peak_hz(wave: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(wave.shape[-1], 1.0 / sample_rate)[spectrum.argmax()])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_id(index) -> dict:
    return {r.clip_id: r for r in index.records}


# ---------------------------------------------------------------- ESC-50

def test_esc50_records_labels_folds_and_ids(tmp_path):
    make_esc50(tmp_path, classes=["dog", "rooster", "pig"], folds=(1, 2, 3, 4, 5))

    index = load_esc50(tmp_path)

    assert index.name == "esc50"
    assert index.class_names == ["dog", "rooster", "pig"]
    assert len(index.records) == 15
    rec = by_id(index)["3-103020-A-2"]
    assert (rec.label, rec.fold) == (2, 3)
    assert Path(rec.path) == (tmp_path / "audio" / "3-103020-A-2.wav").resolve()
    assert rec.meta == {"category": "pig", "esc10": False, "src_file": "103020", "take": "A"}
    assert by_id(index)["1-101000-A-0"].meta["esc10"] is True
    assert all(index.class_names[r.label] == r.meta["category"] for r in index.records)
    assert sorted({r.fold for r in index.records}) == [1, 2, 3, 4, 5]
    assert [r.clip_id for r in index.folds([1])] == ["1-101000-A-0", "1-101010-A-1", "1-101020-A-2"]


def test_esc50_class_names_follow_target_not_csv_order(tmp_path):
    rows = make_esc50(tmp_path, classes=["dog", "rooster", "pig"], folds=(1,))
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, rows[::-1])  # pig, rooster, dog

    index = load_esc50(tmp_path)

    assert index.class_names == ["dog", "rooster", "pig"]
    assert by_id(index)["1-101020-A-2"].label == 2


def test_esc50_clip_dataset_resamples_44k_to_16k_and_fixes_length(tmp_path):
    make_esc50(tmp_path, classes=["dog", "rooster"], folds=(1, 2), sample_rate=44100, seconds=0.2)
    index = load_esc50(tmp_path)

    ds = ClipDataset(index.folds([2]), sample_rate=16000, clip_seconds=0.2)
    items = [ds[i] for i in range(len(ds))]

    assert [it["clip_id"] for it in items] == ["2-102000-A-0", "2-102010-A-1"]
    for it, target in zip(items, [0, 1]):
        assert it["audio"].shape == (3200,) and it["audio"].dtype == torch.float32
        assert it["label"].dtype == torch.long and it["label"].item() == target
        # the fixture's tone is 200 * (target + 1) Hz; a crop without resampling would put it at ~73 Hz
        assert peak_hz(it["audio"], 16000) == pytest.approx(200.0 * (target + 1), abs=5.0)

    padded = ClipDataset(index.folds([1]), sample_rate=16000, clip_seconds=0.5)[0]["audio"]
    assert padded.shape == (8000,)
    assert padded[:3000].abs().max() > 0.4 and torch.all(padded[3200:] == 0)


def test_esc50_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist.*esc50.csv"):
        load_esc50(tmp_path / "nowhere")


def test_esc50_missing_csv_names_the_expected_file(tmp_path):
    make_esc50(tmp_path, folds=(1,))
    (tmp_path / "meta" / "esc50.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta/esc50\.csv.*not found"):
        load_esc50(tmp_path)


def test_esc50_missing_column_names_the_column_and_file(tmp_path):
    rows = make_esc50(tmp_path, folds=(1,))
    header = [h for h in ESC50_HEADER if h != "target"]
    write_csv(tmp_path / "meta" / "esc50.csv", header, [{h: r[h] for h in header} for r in rows])
    with pytest.raises(DatasetError, match=r"esc50\.csv: missing required column\(s\) \['target'\]"):
        load_esc50(tmp_path)


def test_esc50_row_with_missing_audio_names_the_file(tmp_path):
    make_esc50(tmp_path, folds=(1, 2))
    (tmp_path / "audio" / "2-102010-A-1.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 listed audio file\(s\) do not exist: .*2-102010-A-1\.wav"):
        load_esc50(tmp_path)


def test_esc50_header_only_csv_has_no_clips(tmp_path):
    make_esc50(tmp_path, folds=(1,))
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, [])
    with pytest.raises(DatasetError, match=r"esc50\.csv: dataset 'esc50' has no clips"):
        load_esc50(tmp_path)


def test_esc50_target_with_two_names_is_an_error(tmp_path):
    rows = make_esc50(tmp_path, classes=["dog", "rooster"], folds=(1, 2))
    rows[2]["category"] = "cat"  # fold 2, target 0: was 'dog' on line 2
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, rows)
    with pytest.raises(DatasetError, match=r"esc50\.csv:4: class id 0 is named 'cat', but line 2 names it 'dog'"):
        load_esc50(tmp_path)


@pytest.mark.parametrize("make, csv_file, header, name_column, load", [
    (make_esc50, "meta/esc50.csv", ESC50_HEADER, "category", load_esc50),
    (make_urbansound8k, "metadata/UrbanSound8K.csv", URBANSOUND8K_HEADER, "class", load_urbansound8k)])
def test_a_class_name_with_two_ids_is_an_error(tmp_path, make, csv_file, header, name_column, load):
    rows = make(tmp_path, classes=["dog", "rooster"], folds=(1,))
    rows[1][name_column] = "dog"
    write_csv(tmp_path / csv_file, header, rows)
    with pytest.raises(DatasetError, match=re.escape(f"{Path(csv_file).name}:3: class 'dog' has id 1, but line 2 gives "
                                                     "it id 0")):
        load(tmp_path)


def test_esc50_gap_in_targets_is_an_error(tmp_path):
    rows = make_esc50(tmp_path, classes=["dog", "rooster", "pig"], folds=(1,))
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, [rows[0], rows[2]])
    with pytest.raises(DatasetError, match=r"class ids must be 0\.\.K-1.*missing ids \[1\]"):
        load_esc50(tmp_path)


@pytest.mark.parametrize("column, value, message", [
    ("fold", "6", r"esc50\.csv:2: fold must be in 1\.\.5, got 6"),
    ("target", "dog", r"esc50\.csv:2: column 'target' must be an integer, got 'dog'"),
])
def test_esc50_bad_field_values_name_line_and_column(tmp_path, column, value, message):
    rows = make_esc50(tmp_path, folds=(1,))
    rows[0][column] = value
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, rows)
    with pytest.raises(DatasetError, match=message):
        load_esc50(tmp_path)


def test_duplicate_rows_name_the_clip_id(tmp_path):
    rows = make_esc50(tmp_path, folds=(1,))
    write_csv(tmp_path / "meta" / "esc50.csv", ESC50_HEADER, rows + rows[:1])
    with pytest.raises(DatasetError, match="clip_id '1-101000-A-0' appears twice"):
        load_esc50(tmp_path)


# ---------------------------------------------------------------- UrbanSound8K

def test_urbansound8k_records_from_fold_folders(tmp_path):
    rows = make_urbansound8k(tmp_path, classes=["air_conditioner", "car_horn", "children_playing"],
                             folds=(1, 2, 10), clips_per_fold=2)
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", URBANSOUND8K_HEADER, rows[::-1])

    index = load_urbansound8k(tmp_path)

    assert index.name == "urbansound8k"
    assert index.class_names == ["air_conditioner", "car_horn", "children_playing"]
    assert len(index.records) == 18
    rec = by_id(index)["8001-1-0-1"]
    assert (rec.label, rec.fold) == (1, 10)
    assert Path(rec.path) == (tmp_path / "audio" / "fold10" / "8001-1-0-1.wav").resolve()
    assert rec.meta == {"class": "car_horn", "fsID": 8001, "start": 0.5, "end": 0.7, "salience": 2}
    assert all(Path(r.path).parent.name == f"fold{r.fold}" for r in index.records)
    assert sorted({r.fold for r in index.records}) == [1, 2, 10]


def test_urbansound8k_clip_dataset_resamples_22k_to_16k(tmp_path):
    make_urbansound8k(tmp_path, classes=["air_conditioner", "car_horn"], folds=(1,), sample_rate=22050)
    index = load_urbansound8k(tmp_path)

    item = ClipDataset(index.records, sample_rate=16000, clip_seconds=0.1)[1]

    assert item["clip_id"] == "7101-1-0-0" and item["label"].item() == 1
    assert item["audio"].shape == (1600,)
    full = ClipDataset(index.records, sample_rate=16000, clip_seconds=0.2)[1]["audio"]
    assert peak_hz(full, 16000) == pytest.approx(600.0, abs=5.0)


def test_urbansound8k_file_in_the_wrong_fold_folder_is_reported(tmp_path):
    make_urbansound8k(tmp_path, folds=(1, 2))
    src = tmp_path / "audio" / "fold2" / "7200-0-0-0.wav"
    src.rename(tmp_path / "audio" / "fold1" / src.name)
    with pytest.raises(FileNotFoundError, match=r"UrbanSound8K\.csv: 1 listed .*fold2/7200-0-0-0\.wav"):
        load_urbansound8k(tmp_path)


def test_urbansound8k_missing_csv_and_columns(tmp_path):
    rows = make_urbansound8k(tmp_path, folds=(1,))
    header = [h for h in URBANSOUND8K_HEADER if h not in ("classID", "fold")]
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", header, [{h: r[h] for h in header} for r in rows])
    with pytest.raises(DatasetError, match=r"missing required column\(s\) \['fold', 'classID'\]"):
        load_urbansound8k(tmp_path)

    (tmp_path / "metadata" / "UrbanSound8K.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata/UrbanSound8K\.csv"):
        load_urbansound8k(tmp_path)

def test_urbansound8k_fold_out_of_range(tmp_path):
    rows = make_urbansound8k(tmp_path, folds=(1,))
    rows[0]["fold"] = 11
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", URBANSOUND8K_HEADER, rows)
    with pytest.raises(DatasetError, match=r"fold must be in 1\.\.10, got 11"):
        load_urbansound8k(tmp_path)


# ---------------------------------------------------------------- GTZAN

@pytest.mark.parametrize("subdir", ["genres", "genres_original"])
def test_gtzan_genres_sorted_and_stratified_folds(tmp_path, subdir):
    make_gtzan(tmp_path, genres=["rock", "blues", "classical"], clips_per_genre=3, subdir=subdir)
    (tmp_path / subdir / "blues" / "notes.txt").write_text("not audio")

    index = load_gtzan(tmp_path, num_folds=2)

    assert index.name == "gtzan"
    assert index.class_names == ["blues", "classical", "rock"]
    assert [r.clip_id for r in index.records[:3]] == ["blues/blues.00000", "blues/blues.00001", "blues/blues.00002"]
    assert {(r.clip_id, r.label, r.fold) for r in index.records if r.clip_id.startswith("rock/")} == {
        ("rock/rock.00000", 2, 1), ("rock/rock.00001", 2, 2), ("rock/rock.00002", 2, 1)}
    assert by_id(index)["classical/classical.00001"].meta == {"class": "classical",
                                                             "rel_path": "classical/classical.00001.wav"}


def test_gtzan_default_ten_folds_and_original_au_files(tmp_path):
    make_gtzan(tmp_path, genres=["blues", "jazz"], clips_per_genre=2)
    write_tone(tmp_path / "genres" / "jazz" / "jazz.00002.au", sample_rate=22050, seconds=0.2, freq=500.0)

    index = load_gtzan(tmp_path)

    assert [(r.clip_id, r.fold) for r in index.records] == [
        ("blues/blues.00000", 1), ("blues/blues.00001", 2),
        ("jazz/jazz.00000", 1), ("jazz/jazz.00001", 2), ("jazz/jazz.00002", 3)]
    item = ClipDataset(index.records, sample_rate=16000, clip_seconds=0.2)[4]
    assert item["audio"].shape == (3200,)
    assert peak_hz(item["audio"], 16000) == pytest.approx(500.0, abs=5.0)


def test_gtzan_without_genre_folder_names_both_expected_folders(tmp_path):
    (tmp_path / "audio").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected .*/genres or .*/genres_original"):
        load_gtzan(tmp_path)


def test_gtzan_empty_genre_folder_is_an_error(tmp_path):
    make_gtzan(tmp_path, genres=["blues"], clips_per_genre=1)
    (tmp_path / "genres" / "pop").mkdir()
    with pytest.raises(DatasetError, match=r"genres/pop: class folder holds no audio files"):
        load_gtzan(tmp_path)


# ---------------------------------------------------------------- class-per-subfolder

def test_folder_nested_mixed_formats_and_stratified_folds(tmp_path):
    make_folder(tmp_path, {
        "dog": ["d3.wav", "d1.flac", "sub/d2.ogg", "d4.WAV", "d0.wav"],
        "cat": ["c1.wav", "c0.wav"],
    })
    (tmp_path / "dog" / "readme.md").write_text("ignored")
    make_folder(tmp_path / ".ipynb_checkpoints", {"x": ["hidden.wav"]})

    index = load_folder(tmp_path, num_folds=2)

    assert index.name == f"folder:{tmp_path.name}"
    assert index.class_names == ["cat", "dog"]
    assert [(r.clip_id, r.label, r.fold) for r in index.records] == [
        ("cat/c0", 0, 1), ("cat/c1", 0, 2),
        ("dog/d0", 1, 1), ("dog/d1", 1, 2), ("dog/d3", 1, 1), ("dog/d4", 1, 2), ("dog/sub/d2", 1, 1)]
    assert load_folder(tmp_path, num_folds=2).records == index.records  # deterministic

    ds = ClipDataset(index.records, sample_rate=8000, clip_seconds=0.25)
    for i in range(len(ds)):
        item = ds[i]
        assert item["audio"].shape == (2000,)
        assert torch.all(item["audio"][1600:] == 0)  # 0.2 s of audio, zero-padded to 0.25 s


def test_folder_extension_filter(tmp_path):
    make_folder(tmp_path, {"a": ["x.wav", "y.flac"], "b": ["z.flac"]})
    index = load_folder(tmp_path, extensions=("flac",), num_folds=5)
    assert [r.clip_id for r in index.records] == ["a/y", "b/z"]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        load_folder(tmp_path / "missing")

    with pytest.raises(DatasetError, match="no class subfolders found"):
        load_folder(tmp_path)

    make_folder(tmp_path, {"a": ["x.wav", "x.flac"]})
    with pytest.raises(DatasetError, match=r"'a/x.flac' and 'a/x.wav' give the same clip_id 'a/x'"):
        load_folder(tmp_path)

    (tmp_path / "a" / "x.flac").unlink()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no audio")
    with pytest.raises(DatasetError, match=r"/b: class folder holds no audio files with extensions"):
        load_folder(tmp_path)

    (tmp_path / "b" / "notes.txt").unlink()
    (tmp_path / "b").rmdir()
    write_tone(tmp_path / "stray.wav")
    with pytest.raises(DatasetError, match="must sit inside a class subfolder.*stray.wav"):
        load_folder(tmp_path)

    (tmp_path / "stray.wav").unlink()
    with pytest.raises(DatasetError, match="num_folds must be >= 1"):
        load_folder(tmp_path, num_folds=0)


def test_unreadable_clip_fails_lazily_with_an_audio_error_naming_it(tmp_path):
    make_folder(tmp_path, {"a": ["good.wav"]})
    (tmp_path / "a" / "bad.wav").write_bytes(b"RIFF not really a wave file")
    index = load_folder(tmp_path)  # indexing does not decode audio

    ds = ClipDataset(index.records, sample_rate=16000, clip_seconds=0.2)
    assert [r.clip_id for r in ds.records] == ["a/bad", "a/good"]
    assert ds[1]["audio"].shape == (3200,)
    with pytest.raises(AudioError, match=r"a/bad\.wav: cannot read audio"):
        ds[0]


def test_stratified_folds_hand_computed():
    folds = stratified_folds({"x": ["x/c", "x/a", "x/b", "x/d"], "y": ["y/q"]}, num_folds=3)
    assert folds == {"x/a": 1, "x/b": 2, "x/c": 3, "x/d": 1, "y/q": 1}
