"""Labels as captions (issue 13 item 5): `captioner=labels` writes "A recording of <class>." before the wrapped
acoustic caption, the label keys the caption cache, a clip without a label is a one-line error naming the data
config, and every metric computed with these captions is marked as not comparable to the paper's Table 2."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from and_lightning.checkpoints import build
from and_lightning.describe.captioners.acoustic import AcousticCaptioner
from and_lightning.describe.captioners.base import Captioner, Clip, FitsProbingSet
from and_lightning.describe.captioners.cached import audio_sha256, caption_clips, caption_key
from and_lightning.describe.captioners.labels import LabelCaptioner
from and_lightning.store.kvcache import KVCache
from conftest import REPO, compose_cfg

SR = 16000


class FakeCountingCaptioner(Captioner):
    """Stands in for the acoustic captioner: a fixed caption, counting the clips it is asked for."""

    name, model = "fake", "fake-1"

    def __init__(self):
        self.asked = 0

    def caption(self, clips: list[Clip]) -> list[str]:
        self.asked += len(clips)
        return ["It is a quiet low rumble." for _ in clips]


def clip(clip_id: str, label: str | None) -> Clip:
    return Clip(clip_id, np.full(SR // 10, 0.1, dtype=np.float32), SR, label)


def test_the_caption_names_the_class_then_gives_the_acoustic_caption():
    captioner = LabelCaptioner(FakeCountingCaptioner())
    assert captioner.caption([clip("a", "hand_drum"), clip("b", "dog")]) == [
        "A recording of hand drum. It is a quiet low rumble.", "A recording of dog. It is a quiet low rumble."]
    assert not isinstance(captioner, FitsProbingSet)
    assert isinstance(LabelCaptioner(AcousticCaptioner()), FitsProbingSet)  # fitting goes to the wrapped one


def test_the_label_keys_the_caption_cache_for_label_captions_only(tmp_path):
    same_audio = [clip("a", "dog"), clip("b", "bird"), clip("c", "dog")]
    audio = audio_sha256(same_audio[0])
    labels = LabelCaptioner(FakeCountingCaptioner())
    assert caption_key(labels, audio, "dog") != caption_key(labels, audio, "bird")
    assert caption_key(labels, audio, "dog") == caption_key(labels, audio, "dog")
    with KVCache(tmp_path / "c.sqlite") as cache:
        got = caption_clips(labels, same_audio, cache)
    assert (got.requested, got.unique) == (2, 2) and labels.acoustic.asked == 2
    assert got["a"] == got["c"] != got["b"] and got["b"].startswith("A recording of bird.")
    acoustic = FakeCountingCaptioner()  # a captioner that does not read labels: one caption per audio, as before
    assert caption_key(acoustic, audio, "dog") == caption_key(acoustic, audio, "bird") == caption_key(acoustic, audio)
    with KVCache(tmp_path / "d.sqlite") as cache:
        assert caption_clips(acoustic, same_audio, cache).requested == 1


def test_a_clip_without_a_label_is_an_error_naming_the_data_config(tmp_path):
    cfg = compose_cfg("dissect", tmp_path, ["captioner=labels"])
    captioner = instantiate(cfg.captioner)
    with pytest.raises(ValueError) as err:
        captioner.caption([clip("a", "dog"), clip("x/unlabelled", None)])
    assert str(err.value) == ("captioner=labels: probing clip 'x/unlabelled' has no class label; data=synth must "
                              "give every probing clip a class (e.g. data=folder: one subfolder per class)")


@pytest.mark.slow
def test_dissect_with_label_captions_names_each_output_units_class_and_marks_the_metrics(tmp_path, trained_cnn):
    """data=folder on the session model's synthetic clips (one subfolder per class, linked): the output units'
    descriptions name their class, and dissection.json, evaluation.json and the Table-2 table carry the mark."""
    ckpt, root, overrides = trained_cnn
    index = build(compose_cfg("dissect", root, overrides).data).index
    folder = tmp_path / "recordings"
    for r in index.records:
        link = folder / index.class_names[r.label] / Path(r.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(r.path)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "dissect.py"), "data=folder", f"data.index.root={folder}", "data.clip_seconds=1.0",
         "data.num_workers=0", "model=cnn", "model.channels=[4,8]", f"ckpt_path={ckpt}", "captioner=labels",
         "layers=last", "evaluate.tasks=[last_layer]", "logger=none", f"paths.root_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    note = "captions name each clip's class label: not comparable to the paper's Table 2"
    assert note in proc.stdout
    (run_json,) = tmp_path.glob("logs/dissect/runs/*/dissection.json")
    result = json.loads(run_json.read_text())
    assert (result["captions"], result["note"]) == ("labels", note)
    evaluation = json.loads((run_json.parent / "evaluate" / "evaluation.json").read_text())
    assert (evaluation["captions"], evaluation["note"]) == ("labels", note)
    with open(run_json.parent / "evaluate" / "last_layer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(note in r["note"] for r in rows if not r["note"].startswith("skipped"))

    records = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    assert len(records) == len(index.class_names)  # layers=last: the output units
    class_of = {f"{index.class_names[r.label]}/{Path(r.path).stem}": index.class_names[r.label] for r in index.records}
    checked = 0
    for r in records:  # a unit whose top clips are mostly of one class is described as recordings of that class
        top = [class_of[c] for c in r["top_clips"]]
        major = max(set(top), key=top.count)
        if top.count(major) > len(top) / 2:
            assert f"recordings of {major.replace('_', ' ')}" in r["description"], (top, r["description"])
            checked += 1
    assert checked >= 3
