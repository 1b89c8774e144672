"""Training through a real Lightning Trainer, Hydra compose and the real CLI (incl. a multirun), W&B offline."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from and_lightning.checkpoints import CheckpointError, load_adapter, load_checkpoint
from and_lightning.training import train
from conftest import REPO
from wandb_offline import offline_runs, read_run

TINY = ["data.index.clips_per_class=5", "data.batch_size=10", "trainer.max_epochs=1", "callbacks=none"]


def test_train_writes_checkpoint_and_offline_wandb_run(compose_in, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-never-logged")
    cfg = compose_in("train", TINY)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    ckpt = load_checkpoint(metrics["checkpoint_path"])  # weights_only=True inside
    assert ckpt["class_names"][0] == "pure_tone" and ckpt["config"]["model"]["name"] == "cnn"
    adapter, _ = load_adapter(metrics["checkpoint_path"], cfg.model)
    assert adapter(torch.zeros(2, 16000)).shape == (2, 10)
    (run,) = offline_runs(tmp_path / "run")
    logged = read_run(run)
    assert any("test/acc" in row for row in logged["history"])
    assert logged["summary"]["checkpoint_path"] == metrics["checkpoint_path"]
    assert logged["config"]["model"]["name"] == "cnn" and logged["config"]["seed"] == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-never-logged" not in path.read_bytes(), path


def test_same_seed_same_weights(compose_in):
    a = load_checkpoint(train(compose_in("train", TINY + ["logger=none", "export_ckpt=${paths.root_dir}/a.pt"]))
                        ["checkpoint_path"])
    b = load_checkpoint(train(compose_in("train", TINY + ["logger=none", "export_ckpt=${paths.root_dir}/b.pt"]))
                        ["checkpoint_path"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_frozen_trains_only_the_head_and_finetune_starts_from_checkpoint(compose_in, tmp_path):
    base = train(compose_in("train", TINY + ["logger=none"]))["checkpoint_path"]
    start = load_checkpoint(base)["state_dict"]
    frozen = train(compose_in("train", TINY + ["logger=none", "strategy=frozen", f"strategy.init_ckpt={base}"]))
    after = load_checkpoint(frozen["checkpoint_path"])["state_dict"]
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith("net.fc.") for k in changed), changed
    tuned = train(compose_in("train", TINY + ["logger=none", "strategy=finetune", f"strategy.init_ckpt={base}"]))
    tuned_sd = load_checkpoint(tuned["checkpoint_path"])["state_dict"]
    assert not torch.equal(tuned_sd["net.conv1.conv.weight"], start["net.conv1.conv.weight"])


def test_bad_strategy_and_model_inputs_fail_clearly(compose_in, tmp_path):
    with pytest.raises(ValueError, match="strategy=finetune needs strategy.init_ckpt"):
        train(compose_in("train", TINY + ["logger=none", "strategy=finetune"]))
    with pytest.raises(CheckpointError, match="strategy.init_ckpt: checkpoint file not found"):
        train(compose_in("train", TINY + ["logger=none", "strategy=finetune", f"strategy.init_ckpt={tmp_path}/no.pt"]))
    with pytest.raises(ValueError, match="model=crepe is a fixed pretrained model"):
        train(compose_in("train", TINY + ["logger=none", "model=crepe"]))


def run_cli(script: str, args: list[str], cwd, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR"):
        env.pop(var, None)  # the app points these into its own run directory
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_cli_multirun_gives_one_wandb_run_per_job(tmp_path):
    run_cli("train.py", ["-m", "strategy=scratch,frozen", "trainer.max_epochs=1", f"paths.root_dir={tmp_path}",
                         "data.index.clips_per_class=5", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    groups = set()
    for job, strategy in zip(jobs, ["scratch", "frozen"]):
        (run,) = offline_runs(job)
        logged = read_run(run)
        assert any("val/acc" in row for row in logged["history"]) and "test/acc" in logged["summary"]
        assert logged["config"]["strategy"]["name"] == strategy
        groups.add(logged["group"])
    assert len(groups) == 1 and groups.pop().startswith("train-"), "one W&B group per sweep"
    assert (tmp_path / "checkpoints" / "synth-cnn-frozen-s0.pt").is_file()


@pytest.mark.slow
def test_cli_ast_tiny_one_epoch(tmp_path, compose_in):
    run_cli("train.py", ["model=ast_tiny", "trainer.max_epochs=1", f"paths.root_dir={tmp_path}",
                         "data.index.clips_per_class=5"], cwd=tmp_path)
    adapter, ckpt = load_adapter(tmp_path / "checkpoints" / "synth-ast_tiny-scratch-s0.pt",
                                 compose_in("train", ["model=ast_tiny"]).model)
    assert ckpt["config"]["model"]["name"] == "ast_tiny" and adapter.layers()["head"] == 10
