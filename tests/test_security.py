"""Checkpoints are data (issue 12 items 1, 2, 8; issue 11 items 8, 10): crafted files never run code through the
paths a user takes (dissect.py, train.py mode=unlearn prune=..., strategy=finetune, collect_activations), a
checkpoint of another model or shape is a one-line error naming both, and a missing one is reported before any data
is built."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from and_lightning.checkpoints import CheckpointError, CheckpointNotFoundError, build, save_checkpoint
from and_lightning.data.clips import ClipRecord
from and_lightning.dissection import dissect, load_target
from and_lightning.models.cnn import SmallCNN
from and_lightning.prune.unlearn import unlearn
from and_lightning.stages.collect import collect_activations
from and_lightning.tracking import public_config
from and_lightning.training import train
from conftest import REPO, compose_cfg

TINY = ["data.index.clips_per_class=2", "data.batch_size=4", "logger=none", "stage=collect"]
TRAIN = ["data.index.clips_per_class=5", "data.batch_size=4", "logger=none", "callbacks=none",
         "trainer.max_epochs=1"]


class PicklePayload:
    """Unpickling this writes `marker`: what a crafted checkpoint would do if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "pwned")


def hostile_model(marker: Path, where: str) -> dict:
    """A stored model config whose `_target_` (top level, or nested in a setting) would write `marker`."""
    write = {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
             "data": "pwned"}
    if where == "target":
        return {**write, "name": "cnn"}
    return {"_target_": "and_lightning.models.cnn.SmallCNN", "name": "cnn", "num_classes": 10, "channels": write}


def craft(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint holding a real SmallCNN state dict and a hostile config (`target`, `nested`) or a pickle."""
    state = SmallCNN(num_classes=10).state_dict()
    config = {"model": PicklePayload(marker)} if kind == "pickle" else {"model": hostile_model(marker, kind)}
    torch.save({"state_dict": state, "config": config, "class_names": []}, path)
    return path


def run_path(path: str, root: Path, ckpt: Path) -> None:
    """Load `ckpt` the way a user's command does."""
    if path == "dissect":  # python dissect.py ckpt_path=...
        dissect(compose_cfg("dissect", root, TINY + [f"ckpt_path={ckpt}"]))
    elif path == "prune":  # python train.py mode=unlearn prune=class prune.ckpt=...
        unlearn(compose_cfg("train", root, TRAIN + ["mode=unlearn", "prune=class", "prune.target=pure_tone",
                                                    f"prune.ckpt={ckpt}",
                                                    f"prune.descriptions={root}/descriptions.jsonl"]))
    elif path == "finetune":  # python train.py strategy=finetune strategy.init_ckpt=...
        train(compose_cfg("train", root, TRAIN + ["strategy=finetune", f"strategy.init_ckpt={ckpt}"]))
    else:  # the library's collect_activations(checkpoint=...)
        clip = ClipRecord("c0", str(root / "c0.wav"), 0, 1)
        collect_activations(SmallCNN(num_classes=10), [clip], 16000, 1.0, ["conv1"], "mean", root / "store",
                            checkpoint=ckpt)


def assert_one_line(error: Exception, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and all(p in text for p in parts), text
    assert "weights_only" not in text  # torch's own message advises turning the safe load off


@pytest.mark.parametrize("path,kind", [
    ("dissect", "target"), ("dissect", "nested"), ("dissect", "pickle"),
    ("prune", "target"), ("prune", "nested"), ("prune", "pickle"),
    ("finetune", "target"), ("finetune", "pickle"),
    ("collect", "pickle"),
])
def test_crafted_checkpoints_never_run_code(path, kind, tmp_path):
    """Issue 12 item 1: a hostile `_target_` is only compared (refused: another model / other settings) and a
    pickle is never unpickled; the file either would write does not appear, and no data is built first."""
    marker = tmp_path / "pwned.txt"
    ckpt = craft(tmp_path / f"{kind}.pt", marker, kind)
    with pytest.raises(CheckpointError) as err:
        run_path(path, tmp_path, ckpt)
    assert not marker.exists()
    expected = {"target": "pathlib.Path.write_text", "nested": "model.channels", "pickle": "never unpickled"}[kind]
    assert_one_line(err.value, str(ckpt), expected)
    assert not (tmp_path / "cache" / "synth").exists()  # refused before any data was built


@pytest.mark.slow  # a fresh interpreter: ~12-20 s of imports on a shared 2-core machine
def test_cli_refuses_a_pickled_checkpoint(tmp_path):
    """The same through the real `python dissect.py` process: exit != 0, the reason on stderr, no side effect."""
    marker = tmp_path / "pwned.txt"
    ckpt = craft(tmp_path / "evil.pt", marker, "pickle")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "dissect.py"), f"paths.root_dir={tmp_path}",
                           f"ckpt_path={ckpt}", "logger=none"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert f"ckpt_path: {ckpt} holds a pickled Python object" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists() and not (tmp_path / "cache" / "synth").exists()


def export(root: Path, overrides: list[str], seed: int = 0, config_of: list[str] | None = None) -> Path:
    """Write the checkpoint `train.py <overrides>` exports (same path, payload and config; weights untrained and
    seeded, FAST FAKE for a training run). `config_of`: store the config of other overrides than the weights'."""
    cfg = compose_cfg("train", root, TRAIN + overrides)
    torch.manual_seed(seed)
    adapter = build(cfg.model)
    config = public_config(compose_cfg("train", root, TRAIN + config_of) if config_of is not None else cfg)
    return save_checkpoint(cfg.export_ckpt, adapter, config, ["a", "b"])


def test_checkpoint_of_another_model_is_an_error_naming_both(tmp_path):
    """Issue 11 item 8: model=ast_tiny with a CNN checkpoint (silently dissected as the CNN before)."""
    ckpt = export(tmp_path, ["model=cnn"])
    with pytest.raises(CheckpointError) as err:
        dissect(compose_cfg("dissect", tmp_path, TINY + ["model=ast_tiny", f"ckpt_path={ckpt}"]))
    assert_one_line(err.value, str(ckpt), "holds model=cnn", "this run has model=ast_tiny")


def test_checkpoint_with_other_model_settings_names_the_keys(tmp_path):
    ckpt = export(tmp_path, ["model.channels=[4,8]", "model.dropout=0.5"])
    with pytest.raises(CheckpointError) as err:
        dissect(compose_cfg("dissect", tmp_path, TINY))
    assert_one_line(err.value, str(ckpt), "model.channels: checkpoint [4, 8], run [16, 32, 64, 128]",
                    "model.dropout: checkpoint 0.5, run 0.2")
    assert not (tmp_path / "cache" / "synth").exists()


@pytest.mark.parametrize("path", ["dissect", "finetune", "collect"])
def test_tensor_shapes_that_do_not_fit_are_a_clear_error(path, tmp_path):
    """Issue 12 item 8: a checkpoint whose config claims the run's model but whose weights have other shapes
    (a raw RuntimeError from load_state_dict before)."""
    ckpt = export(tmp_path, ["model.channels=[4,8]"], config_of=[])
    with pytest.raises(CheckpointError) as err:
        run_path(path, tmp_path, ckpt)
    assert_one_line(err.value, str(ckpt), "does not fit SmallCNN",
                    "net.conv1.conv.weight has shape (4, 1, 3, 3) in the checkpoint but (16, 1, 3, 3) in the model")


def test_missing_checkpoint_is_reported_first_with_both_ways_out(tmp_path):
    """Issue 11 item 10: before any data is built, naming `python train.py ...` and `ckpt_path=null`, and listing
    the checkpoints that do exist for this data and model (issue 11 item 8)."""
    with pytest.raises(CheckpointNotFoundError) as err:
        dissect(compose_cfg("dissect", tmp_path, TINY))
    assert_one_line(err.value, "ckpt_path: checkpoint file not found", "synth-cnn-scratch-s0.pt",
                    "holds no checkpoint for data=synth model=cnn",
                    "`python train.py data=synth model=cnn strategy=scratch seed=0`", "ckpt_path=null")
    assert not (tmp_path / "cache" / "synth").exists()
    export(tmp_path, ["seed=1"])
    export(tmp_path, ["strategy=frozen"])
    with pytest.raises(CheckpointNotFoundError) as err:
        dissect(compose_cfg("dissect", tmp_path, TINY + ["train_seed=2"]))
    assert_one_line(err.value, "synth-cnn-scratch-s2.pt", "synth-cnn-frozen-s0.pt (train_strategy=frozen train_seed=0)",
                    "synth-cnn-scratch-s1.pt (train_strategy=scratch train_seed=1)", "ckpt_path=null")


def test_changing_the_dissection_seed_keeps_the_exported_checkpoint(tmp_path):
    """Issue 11 item 8: `python train.py` then `python dissect.py seed=3` dissects that model; `train_seed=` picks
    another run's checkpoint."""
    export(tmp_path, [], seed=0)
    export(tmp_path, ["seed=1"], seed=1)
    weight = "net.conv1.conv.weight"
    for dissect_seed, train_seed in ((3, 0), (3, 1), (0, 1)):
        cfg = compose_cfg("dissect", tmp_path, TINY + [f"seed={dissect_seed}", f"train_seed={train_seed}"])
        adapter, class_names = load_target(cfg)
        torch.manual_seed(train_seed)
        assert torch.equal(adapter.state_dict()[weight], SmallCNN(num_classes=10).state_dict()[weight])
        assert class_names == ["a", "b"]
    cfg = compose_cfg("dissect", tmp_path, TINY + ["seed=3"])
    assert cfg.ckpt_path == compose_cfg("train", tmp_path, TRAIN).export_ckpt


def test_a_bare_state_dict_loads_into_the_configured_model(tmp_path):
    """A file with weights only (no stored config): built from the run's config, checked by its tensors."""
    torch.manual_seed(5)
    state = SmallCNN(num_classes=10).state_dict()
    torch.save(state, tmp_path / "bare.pt")
    adapter, class_names = load_target(compose_cfg("dissect", tmp_path, TINY + [f"ckpt_path={tmp_path}/bare.pt"]))
    assert class_names == [] and all(torch.equal(v, state[k]) for k, v in adapter.state_dict().items())
