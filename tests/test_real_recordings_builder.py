"""benchmarks/real_recordings.py (issue 13 item 6) without the download: its file choice and its conversion into the
`data=folder` layout (16 kHz mono 16-bit WAV, leading silence cut, at most N seconds, level kept, repeated audio
dropped, a manifest naming each clip's package and licence) that `load_folder` reads."""
from __future__ import annotations

import csv
import importlib.util
import sys

import numpy as np
import soundfile as sf

from and_lightning.data.datasets import load_folder
from conftest import REPO

spec = importlib.util.spec_from_file_location("real_recordings", REPO / "benchmarks" / "real_recordings.py")
real = sys.modules["real_recordings"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)


def test_select_matches_the_pattern_and_spreads_a_capped_choice_over_the_sorted_files():
    files = [f"kits/{k}/Kick-{i}.wav" for k in ("A", "B") for i in range(4)] + ["kits/A/Snare-1.wav",
                                                                                 "kits/A/Kick-1.txt"]
    assert real.select(files, r"kick", r"B/Kick-3", 10) == [f"kits/A/Kick-{i}.wav" for i in range(4)] + [
        f"kits/B/Kick-{i}.wav" for i in range(3)]
    assert real.select(files, r"kick", r"$^", 3) == ["kits/A/Kick-0.wav", "kits/B/Kick-0.wav", "kits/B/Kick-3.wav"]


def test_build_folder_converts_into_the_folder_layout_with_a_manifest(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "x" / "pkg"
    src.mkdir(parents=True)
    noise = 0.5 * rng.uniform(-1, 1, (44100 * 3, 2)).astype(np.float32)
    stereo = np.concatenate([np.zeros((4410, 2), np.float32), noise])  # 0.1 s of silence first
    sf.write(src / "a.wav", stereo, 44100)
    sf.write(src / "copy.wav", stereo, 44100)  # the same audio under another name: dropped
    sf.write(src / "b.ogg", 0.2 * np.sin(np.arange(11025) / 5.0), 22050)  # 0.5 s, mono
    sf.write(src / "silent.flac", np.zeros(8000), 16000)  # nothing to hear: dropped
    facts = {"version": "1.0-1", "component": "main", "licence": "GPL-2+"}
    picked = [("kick", "pkg", src / "a.wav", facts), ("kick", "pkg", src / "copy.wav", facts),
              ("bird", "pkg", src / "b.ogg", facts), ("bird", "pkg", src / "silent.flac", facts)]
    rows = real.build_folder(picked, tmp_path, seconds=1.0)

    assert [r["clip"] for r in rows] == ["kick/pkg__pkg__a.wav", "bird/pkg__pkg__b.wav"]
    index = load_folder(tmp_path / "recordings")
    assert index.class_names == ["bird", "kick"] and len(index.records) == 2
    kick, sr = sf.read(tmp_path / "recordings" / "kick" / "pkg__pkg__a.wav")
    info = sf.info(tmp_path / "recordings" / "kick" / "pkg__pkg__a.wav")
    assert (sr, info.channels, info.subtype, len(kick)) == (16000, 1, "PCM_16", 16000)  # cut to 1 s
    assert abs(kick[0]) >= 0.01 * np.abs(kick).max()  # starts where the sound does
    assert 0.35 < np.abs(kick).max() < 0.5  # the level is kept: the mean of two channels of +-0.5 noise
    bird = sf.read(tmp_path / "recordings" / "bird" / "pkg__pkg__b.wav")[0]
    assert abs(len(bird) - 8000) <= 1  # 0.5 s at 16 kHz: shorter files are not padded
    with open(tmp_path / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert manifest == [{"clip": "kick/pkg__pkg__a.wav", "class": "kick", "package": "pkg", "source_file": "a.wav",
                         **facts},
                        {"clip": "bird/pkg__pkg__b.wav", "class": "bird", "package": "pkg", "source_file": "b.ogg",
                         **facts}]
