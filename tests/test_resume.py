"""Interrupted work (issue 12 item 7): a real `train.py` SIGKILLed mid-training resumes from its last epoch and ends
with the weights of an uninterrupted run; temporary files of killed writers are removed; an evaluation cut off
half-way is recognisable (no evaluation.json) and redone."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from and_lightning.checkpoints import CheckpointError, load_checkpoint
from and_lightning.resume import LAST, checkpoint_to_resume, differences, resume_dir
from and_lightning.stages.evaluate import evaluate_stage
from and_lightning.store.atomic import write_json
from and_lightning.training import train
from conftest import REPO, compose_cfg
from fakes import FakeBagOfWordsEncoder

# 30 training clips in batches of 10: 3 steps per epoch; 4 epochs leave seconds to kill after the first one
TRAIN = ["data.index.clips_per_class=5", "data.batch_size=10", "trainer.max_epochs=4", "callbacks=none", "test=false"]
STEPS_PER_EPOCH = 3


def cli_env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR"):
        env.pop(var, None)
    return env


def logged_epochs(run_dir: Path) -> list[int]:
    """Epochs of the training rows the CSV logger wrote in `run_dir`."""
    (metrics,) = run_dir.rglob("metrics.csv")
    with open(metrics) as f:
        return sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")})


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_epoch_with_the_same_result(tmp_path):
    reference = train(compose_cfg("train", tmp_path, TRAIN + ["logger=none", "export_ckpt=${paths.root_dir}/a.pt"]))
    export = tmp_path / "b.pt"
    cmd = [sys.executable, str(REPO / "train.py"), f"paths.root_dir={tmp_path}", *TRAIN, "logger=csv",
           f"export_ckpt={export}"]
    last = resume_dir(export) / "last.ckpt"

    killed = subprocess.Popen([*cmd, f"hydra.run.dir={tmp_path}/killed"], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not last.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "training ended before it could be killed"
    assert last.is_file() and not export.exists()

    rerun = subprocess.run([*cmd, f"hydra.run.dir={tmp_path}/rerun"], cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = re.search(r"resuming from (\S+): (\d+) epoch\(s\) done, global step (\d+)", rerun.stdout)
    assert said, rerun.stdout[-3000:]
    assert said[1] == str(last)
    done, step = int(said[2]), int(said[3])
    assert 1 <= done < 4 and step == done * STEPS_PER_EPOCH
    assert logged_epochs(tmp_path / "rerun") == list(range(done, 4))  # no epoch trained twice
    a, b = load_checkpoint(reference["checkpoint_path"])["state_dict"], load_checkpoint(export)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never interrupted
    assert not resume_dir(export).exists()  # exported: nothing left to resume


def test_a_resume_point_of_other_settings_is_not_used():
    run = {"seed": 0, "strategy": {"lr": 1e-3}, "trainer": {"max_epochs": 4, "default_root_dir": "/logs/run1"},
           "paths": {"output_dir": "/logs/run1"}, "logger": {"csv": {"save_dir": "/logs/run1"}}, "tags": []}
    later = {**run, "trainer": {"max_epochs": 4, "default_root_dir": "/logs/run2"},
             "paths": {"output_dir": "/logs/run2"}, "logger": {}, "tags": ["again"]}
    assert differences(run, later) == []  # where it logs is not what it trains
    other = {**later, "strategy": {"lr": 1e-2}, "trainer": {"max_epochs": 8, "default_root_dir": "/logs/run2"}}
    assert differences(run, other) == ["strategy.lr", "trainer.max_epochs"]
    assert differences(run, {k: v for k, v in run.items() if k != "seed"}) == ["seed"]


@pytest.mark.parametrize("payload", [
    [1, 2, 3],  # not a checkpoint at all
    {"state_dict": {}, "epoch": "0", "global_step": 3},  # counters of the wrong type
    {"state_dict": {}, "epoch": 0, "global_step": 3, "hyper_parameters": {"config": {"seed": torch.zeros(2)}}},
    {"state_dict": {}, "epoch": 0, "global_step": 3, "hyper_parameters": ["not", "a", "dict"]},
])
def test_a_malformed_resume_point_is_skipped_or_a_clear_error(payload, tmp_path, caplog):
    torch.save(payload, tmp_path / LAST)
    config = {"seed": 0}
    assert checkpoint_to_resume("auto", tmp_path, config) is None  # trains from scratch, says why
    assert "not resuming" in caplog.text
    if isinstance(payload, dict) and isinstance(payload["epoch"], int):  # a checkpoint of other settings
        assert checkpoint_to_resume(str(tmp_path / LAST), tmp_path, config) == str(tmp_path / LAST)
    else:
        with pytest.raises(CheckpointError, match="is not a Lightning checkpoint"):
            checkpoint_to_resume(str(tmp_path / LAST), tmp_path, config)


WRITER = """
import sys, time
from and_lightning.store.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "out.json")], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    assert writer.stdout.readline().strip() == "writing"
    alive = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "other.json")], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    assert alive.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    try:
        (stale,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.json.")]
        (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".other.json.")]
        foreign = tmp_path / f".out.json.another-host-{writer.pid}.abcdefgh.tmp"  # a writer on another machine
        foreign.write_text("")
        write_json(tmp_path / "next.json", {"ok": True})
        assert not stale.exists() and not (tmp_path / "out.json").exists()
        assert live.exists() and foreign.exists()  # a running writer's and another host's are left alone
    finally:
        alive.kill()
        alive.wait()


class FakeCrash(RuntimeError):
    """Stands in for the process dying in the middle of the evaluation."""


class FakeCrashingEncoder:
    """FAKE text encoder that dies when asked to encode (a crash after the first tables were written)."""

    def encode(self, texts):
        raise FakeCrash("killed")


def test_an_evaluation_cut_off_half_way_is_marked_incomplete_and_redone(tmp_path, caplog):
    records = [{"layer": "conv1", "unit": u, "adjectives": ["loud"] if u % 2 else ["quiet", "loud"],
                "top_clips": ["a", "b"]} for u in range(4)]
    captions = {"a": "A loud tone. It is quiet.", "b": "A quiet hiss."}
    interp = {"_target_": "and_lightning.analysis.interpretability.Interpretability", "field": "adjectives",
              "top_n": 5, "merge": {}, "clusters": 2, "k_primes": [1], "k": 2}
    out = tmp_path / "evaluate"

    def evaluate(parts, encoder):
        return evaluate_stage({"tasks": ["interpretability"], "interpretability": {**interp, "parts": parts}}, out,
                              records=records, captions=captions, encoder=encoder)

    evaluate(["adjectives"], FakeBagOfWordsEncoder())
    assert (out / "evaluation.json").is_file()
    with pytest.raises(FakeCrash):  # the adjectives table is rewritten, then the run dies
        evaluate(["adjectives", "uninterpretable"], FakeCrashingEncoder())
    assert (out / "adjectives.csv").is_file() and not (out / "evaluation.json").exists()  # incomplete, and says so
    caplog.set_level("WARNING")
    result = evaluate(["adjectives", "uninterpretable"], FakeBagOfWordsEncoder())
    assert "cut off before its end" in caplog.text
    assert (out / "evaluation.json").is_file() and Path(result.files["uninterpretable_csv"]).is_file()
