"""Units wired to known acoustic features (tests/planted_net.py: loudness, high- and low-band energy, pulse rate,
spectral flatness, pitch rise), dissected through `dissect` with the default offline backends (acoustic captioner
fitted on the probing set, extractive summaries, MiniLM Module B, lexicon filter) on 60 synthetic clips: each
unit's description names its feature. Issue 13 acceptance: "loud" for the loudness unit, "rising" for the
pitch-rise unit (old main: 5 of 6, the loudness unit unnamed because no clip reached the absolute -18 dBFS).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from and_lightning.dissection import dissect
from and_lightning.stages.describe import read_descriptions
from conftest import compose_cfg
from planted_net import EXPECTED, FEATURES

PLANTED = ["data=synth", "data.index.clips_per_class=6", "model=custom", "model.net._target_=planted_net.PlantedNet",
           "model.layers={planted: planted, head: fc}", "ckpt_path=null", "layers=planted", "logger=none",
           "evaluate.tasks=[]"]


def names(description: str, feature: str) -> bool:
    """Whether a description names the feature: one of its words, none of the opposite ones."""
    words = set(re.findall(r"[a-z]+(?:-[a-z]+)*", description.lower()))
    right, opposite = EXPECTED[feature]
    return bool(words & right) and not words & opposite


@pytest.mark.slow
def test_planted_units_are_described_by_their_features(tmp_path):
    result = dissect(compose_cfg("dissect", tmp_path, PLANTED))
    described = {FEATURES[r["unit"]]: r["description"] for r in read_descriptions(result["descriptions"])}
    right = {f: names(d, f) for f, d in described.items()}
    assert right["loudness"] and right["pitch_rise"], described
    assert sum(right.values()) >= 5, described  # all six on this set
    reference = json.loads((Path(result["dissection_dir"]) / "caption_reference.json").read_text())
    assert reference["reference"]["clips"] == 60 and reference["prompt"].startswith("reference:")
