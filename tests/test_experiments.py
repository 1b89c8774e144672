"""Every experiment config composes, and every dissect experiment runs on synth through a real Hydra multirun."""
from __future__ import annotations

import json

import pytest

from conftest import CONF, compose_cfg
from test_train import run_cli

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TRAIN_ONLY = {"ast_tiny_synth", "strategies", "strategies_ci", "unlearn_fig4", "unlearn_table4"}  # they override train.py's groups


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(tmp_path, name):
    cfg = compose_cfg("train" if name in TRAIN_ONLY else "dissect", tmp_path, [f"experiment={name}"])
    assert cfg.task_name and cfg.data.name


@pytest.mark.slow
def test_every_dissect_experiment_runs_on_synth(tmp_path):
    tiny = ["data.index.clips_per_class=8", "data.batch_size=16"]
    run_cli("train.py", [*tiny, "trainer.max_epochs=2", "logger=none", "callbacks=none"], cwd=tmp_path)
    exclude = ",".join(sorted(TRAIN_ONLY))
    run_cli("dissect.py", ["-m", f"experiment=glob(*,exclude=[{exclude}])", *tiny, "logger=none",
                           f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, timeout=1800)
    results = sorted((tmp_path / "sweep").glob("*/dissection.json"))
    assert len(results) == len(EXPERIMENTS) - len(TRAIN_ONLY)
    for path in results:
        written = json.loads(path.read_text())
        assert written["metrics"], path
        if "experiment=description_quality" in (path.parent / ".hydra" / "overrides.yaml").read_text():
            # the run's descriptions.jsonl carries each unit's intervention scores beside the other scorers'
            scores = [json.loads(x)["scores"] for x in (tmp_path / written["descriptions"]).read_text().splitlines()]
            assert all({"int_ablate_rho", "int_amplify_rho", "det_auprc", "gt_f1"} <= set(s) for s in scores)
            rhos = [s["int_ablate_rho"] for s in scores if s["int_ablate_rho"] is not None]
            assert rhos and all(-1 <= r <= 1 for r in rhos)  # null: editing the unit changed no clip's output
