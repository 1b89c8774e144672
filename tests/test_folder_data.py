"""Your own recordings (`data=folder`): classes, data.num_classes and the concept set follow the folder, config
errors are one line, and README "Your own recordings" runs through the real CLI on a small folder of WAVs of
mixed lengths: train, dissect (class names as concepts), evaluate, prune every class."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from and_lightning.checkpoints import load_checkpoint
from and_lightning.data.audio_io import save_audio
from and_lightning.data.datasets import load_folder
from conftest import CONF, REPO

SR = 16000
CLASSES = ["hum", "chirp", "hiss"]  # subfolder names, written unsorted: the labels follow their sorted order
ATTRIBUTES = list(OmegaConf.load(CONF / "concepts" / "acoustic_attributes.yaml").concepts)


def sound(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "hum":  # a low harmonic tone
        f0 = rng.uniform(90, 140)
        return 0.1 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    if kind == "chirp":  # a rising sweep
        f = np.geomspace(rng.uniform(500, 800), rng.uniform(2500, 4000), len(t))
        return 0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR)
    return 0.1 * rng.standard_normal(len(t))


def make_folder(root: Path, per_class: int) -> Path:
    """root/<class>/<class>-<i>.wav, 0.5-1.2 s long (clips are zero-padded to data.clip_seconds)."""
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        for i in range(per_class):
            save_audio(root / kind / f"{kind}-{i}.wav", sound(kind, rng.uniform(0.5, 1.2), rng), SR)
    return root


def test_classes_num_classes_and_concepts_follow_the_folder(tmp_path, compose_in):
    folder = make_folder(tmp_path / "recordings", per_class=1)
    cfg = compose_in("dissect", ["data=folder", f"data.index.root={folder}"])
    names = sorted(CLASSES)
    assert load_folder(folder).class_names == names
    assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3
    assert list(cfg.concepts.concepts) == names + ATTRIBUTES  # class names in label order, then the attributes
    train_cfg = compose_in("train", ["data=folder", f"data.index.root={folder}", "model=beats_tiny"])
    assert train_cfg.model.num_classes == 3
    (folder / "drone" / "sub").mkdir(parents=True)  # a new class folder (nested clips are fine)
    save_audio(folder / "drone" / "sub" / "d.wav", np.zeros(SR // 2), SR)
    cfg = compose_in("dissect", ["data=folder", f"data.index.root={folder}"])
    assert cfg.data.num_classes == 4 and list(cfg.concepts.concepts)[:4] == ["chirp", "drone", "hiss", "hum"]


def test_a_class_name_that_is_also_an_attribute_is_listed_once(tmp_path, compose_in):
    folder = tmp_path / "recordings"
    for name in ("noisy", "quiet_room"):
        save_audio(folder / name / "a.wav", np.zeros(SR // 2), SR)
    concepts = list(compose_in("dissect", ["data=folder", f"data.index.root={folder}"]).concepts.concepts)
    assert concepts[:2] == ["noisy", "quiet_room"] and concepts.count("noisy") == 1
    assert concepts[2:] == [a for a in ATTRIBUTES if a != "noisy"]


def cli(script: str, root: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *overrides, f"paths.root_dir={root}"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("root, expected", [
    (None, "Missing mandatory value: data.index.root"),
    ("/nonexistent/recordings", "/nonexistent/recordings: dataset root folder does not exist (expected one "
                                "subfolder per class"),
])
def test_dissect_on_a_folder_without_a_root_is_a_one_line_error(tmp_path, root, expected):
    proc = cli("dissect.py", tmp_path, ["data=folder", "logger=none", *([f"data.index.root={root}"] if root else [])])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, proc.stderr[-2000:]


@pytest.mark.slow
def test_readme_recordings_recipe_through_the_cli(tmp_path):
    """README "Your own recordings" on a 3-class folder (small settings): train, dissect, evaluate, prune."""
    folder = make_folder(tmp_path / "recordings", per_class=14)  # 42 clips: rank_reorder needs 5 % >= 2 top clips
    data = ["data=folder", f"data.index.root={folder}", "data.clip_seconds=1.0", "data.num_workers=0",
            "model.channels=[8,16]", "logger=none"]
    train = cli("train.py", tmp_path, [*data, "trainer.max_epochs=2", "callbacks=none"])
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "folder-cnn-scratch-s0.pt")
    assert ckpt["class_names"] == sorted(CLASSES) and ckpt["state_dict"]["net.fc.weight"].shape[0] == 3

    dissect = cli("dissect.py", tmp_path, data)
    assert dissect.returncode == 0, dissect.stderr[-3000:]
    (run_json,) = tmp_path.glob("logs/dissect/runs/*/dissection.json")
    result = json.loads(run_json.read_text())
    records = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    head = [r for r in records if r["layer"] == "head"]
    assert len(head) == 3 and {c["concept"] for r in head for c in r["closed_concepts"]} & set(CLASSES)
    assert "dissect/last_layer_top1" in result["metrics"]  # the class names are in the concept set: Table 2 runs

    evaluate = cli("dissect.py", tmp_path, [*data, "stage=evaluate"])
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "last layer 'head'" in evaluate.stdout

    prune = cli("train.py", tmp_path, ["-m", *data, "mode=unlearn", "prune=concept",
                                       f"prune.target={','.join(sorted(CLASSES))}",
                                       f"prune.descriptions={Path(result['descriptions']).parent}",
                                       "prune.allow_empty=true"])
    assert prune.returncode == 0, prune.stderr[-3000:]
    outcomes = [json.loads(p.read_text()) for p in tmp_path.glob("logs/train/multiruns/*/*/unlearn_result.json")]
    assert sorted(o["target"] for o in outcomes) == sorted(CLASSES)
    assert all(o["class_names"] == sorted(CLASSES) for o in outcomes)
