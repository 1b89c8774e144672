"""The strategies study end to end through the real CLI: one multirun trains scratch / ssl / ssl_finetune over
two seeds, dissects each model, and the Hydra callback writes the comparison and logs it to the sweep's W&B group."""
from __future__ import annotations

import csv
import json

import pytest
from hydra import initialize_config_dir

from and_lightning.study import dissect_config
from conftest import CONF
from test_train import run_cli
from wandb_offline import offline_runs, read_run


def test_dissect_config_follows_the_trained_model(compose_in, tmp_path):
    cfg = compose_in("train", ["data.index.clips_per_class=7", "seed=3", "strategy=ssl", "then_dissect=true",
                               'dissect_overrides=["layers=last","describe.k=3"]'])
    with initialize_config_dir(str(CONF), version_base="1.3"):  # a plain caller initialises Hydra, as compose needs
        dcfg = dissect_config(cfg, "/models/x.pt")
    assert dcfg.ckpt_path == "/models/x.pt" and dcfg.seed == 3 and dcfg.layers == "last" and dcfg.describe.k == 3
    assert dcfg.data.index.clips_per_class == 7 and dcfg.data.index.root == cfg.data.index.root
    assert dcfg.paths.output_dir == str(tmp_path / "run" / "dissect") and dcfg.paths.cache_dir == cfg.paths.cache_dir
    assert dcfg.concepts.name == "synth" and dcfg.run_name == "dissect-train-synth-cnn-ssl-s3"
    assert dcfg.logger.wandb.save_dir == dcfg.paths.output_dir and dcfg.logger.wandb.job_type == "dissect"


@pytest.mark.slow
def test_strategies_study_multirun(tmp_path):
    args = ["-m", "experiment=strategies_ci", f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep"]
    run_cli("train.py", args, cwd=tmp_path)
    sweep = tmp_path / "sweep"
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    results = [json.loads((j / "study_result.json").read_text()) for j in jobs]
    assert [(r["strategy"], r["seed"]) for r in results] == [
        (s, seed) for s in ("scratch", "ssl", "ssl_finetune") for seed in (0, 1)]
    for r in results:
        assert r["layers"] == ["conv1", "conv2", "conv3", "conv4", "head"]
        assert 0.0 <= r["metrics"]["test/acc"] <= 1.0
        assert "eval/interp/conv2/mean_adjectives" in r["metrics"] and "eval/gt/description/conv4/f1" in r["metrics"]
    # one pre-trained backbone per seed, shared by ssl and ssl_finetune
    assert len(list((tmp_path / "checkpoints" / "ssl").glob("synth-cnn-s*.pt"))) == 2

    with open(sweep / "strategies_summary.csv", newline="") as f:
        summary = {row["strategy"]: row for row in csv.DictReader(f)}
    assert set(summary) == {"scratch", "ssl", "ssl_finetune"} and all(r["seeds"] == "2" for r in summary.values())
    means = sum(r["metrics"]["test/acc"] for r in results if r["strategy"] == "ssl") / 2
    assert float(summary["ssl"]["test_acc"]) == pytest.approx(means)
    assert "Verdict" in (sweep / "strategies_summary.md").read_text()
    for png in ("strategies_layers.png", "strategies_accuracy.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = {r: read_run(r) for r in offline_runs(sweep)}
    group = results[0]["wandb_group"]
    assert group and all(r["group"] == group for r in runs.values())  # train, dissect and study runs: one group
    places = sorted(str(path.parent.relative_to(sweep)) for path in runs)
    assert places == sorted([f"{j}/wandb" for j in range(6)] + [f"{j}/dissect/wandb" for j in range(6)] + ["wandb"])

    # an interrupted sweep (job 5 never wrote its result) rerun in the same folder redoes only that job
    (sweep / "5" / "study_result.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/study_result.json")}
    run_cli("train.py", args, cwd=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    redone = json.loads((sweep / "5" / "study_result.json").read_text())["metrics"]
    assert redone == pytest.approx(results[5]["metrics"], rel=1e-5, abs=1e-6, nan_ok=True)  # same seed, same results
    rerun = set(offline_runs(sweep)) - set(runs)
    assert sorted(str(p.parent.relative_to(sweep)) for p in rerun) == ["5/dissect/wandb", "5/wandb", "wandb"]
