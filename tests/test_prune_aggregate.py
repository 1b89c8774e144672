"""Aggregating a pruning sweep's per-job results into the Table-4 layout, the Fig.-4 curve and a W&B run."""
from __future__ import annotations

import json

import pytest

from and_lightning.prune.aggregate import CURVE_PNG, ablation_points, aggregate, table_rows
from wandb_offline import offline_runs, read_run, run_info


def fake_job_result(strategy: str, target: str, n: int, pct: float, d_a: float, d_r: float, acc: float) -> dict:
    """What `unlearn` writes per job (only the fields aggregation reads), with made-up numbers."""
    metrics = {"prune/n_pruned": n, "prune/pct_pruned": pct, "before/acc": 0.9, "pruned/acc": acc,
               "pruned/delta_A_logit": d_a, "pruned/delta_R_logit": d_r, "pruned/selectivity_logit": d_r - d_a,
               "pruned/delta_A_prob": d_a / 10, "pruned/delta_R_prob": d_r / 10,
               "pruned/selectivity_prob": (d_r - d_a) / 10, "pruned/acc_target": 0.1, "pruned/acc_rest": 0.8}
    return {"strategy": strategy, "target": target, "metrics": metrics, "wandb_group": "unlearn-sweepA",
            "selection_note": f"words {target} in nouns: {n} units"}


JOBS = [fake_job_result("concept", "a", 10, 5.0, -4.0, -1.0, 0.7), fake_job_result("concept", "b", 20, 10.0, -2.0, -1.0, 0.6),
        fake_job_result("random", "a", 10, 5.0, -1.0, -1.0, 0.8), fake_job_result("random", "b", 20, 10.0, -1.5, -0.5, 0.5)]


def write_sweep(root):
    for i, job in enumerate(JOBS):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "unlearn_result.json").write_text(json.dumps(job))


def test_table_rows_average_over_targets():
    rows = {r["strategy"]: r for r in table_rows(JOBS)}
    assert rows["concept"]["Avg pruned"] == 15.0 and rows["concept"]["targets"] == 2
    assert rows["concept"]["ΔA logit"] == -3.0 and rows["concept"]["ΔR logit"] == -1.0
    # one sign convention: ΔR − ΔA, labelled so (> 0: the target lost more)
    assert rows["concept"]["ΔR−ΔA logit"] == 2.0 and rows["random"]["ΔR−ΔA logit"] == pytest.approx(0.5)
    assert rows["concept"]["ΔR−ΔA prob"] == pytest.approx(0.2)


def test_ablation_points_start_at_the_unpruned_accuracy():
    assert ablation_points(JOBS)["random"] == [(0.0, 0.9), (5.0, 0.8), (10.0, 0.5)]


def test_aggregate_writes_one_table_and_logs_to_the_sweep_group(tmp_path):
    write_sweep(tmp_path / "sweep")
    out = aggregate(tmp_path / "sweep", wandb_project="and-lightning-test")
    table = (tmp_path / "sweep" / "unlearning_table.md").read_text()
    assert table.splitlines()[0].startswith("| strategy | jobs | targets | Avg pruned |")
    assert "| concept | 2 | 2 | 15.0 | 7.50 | -3.000 | -1.000 | 2.000 |" in table
    assert "| ΔA logit | ΔR logit | ΔR−ΔA logit |" in table and "ΔA−ΔR logit" not in table
    assert table.split("Selections:\n")[1].splitlines() == [  # one line per job: units and why
        "- concept / a: 10 units; words a in nouns: 10 units", "- concept / b: 20 units; words b in nouns: 20 units",
        "- random / a: 10 units; words a in nouns: 10 units", "- random / b: 20 units; words b in nouns: 20 units"]
    csv_lines = (tmp_path / "sweep" / "unlearning_table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,jobs,targets,Avg pruned")
    assert csv_lines[1].endswith(",0.1,0.8,,,")  # no retraining: empty cells, as every table's csv (not "nan")
    assert (tmp_path / "sweep" / CURVE_PNG).read_bytes()[:4] == b"\x89PNG" and out["jobs"] == 4
    (run,) = offline_runs(tmp_path / "sweep")
    info = run_info(run)
    assert info.run_group == "unlearn-sweepA" and info.job_type == "aggregate"
    assert read_run(run)["summary"]["unlearning/table/nrows"] == 2


def test_aggregate_without_results_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no unlearn_result.json from any job"):
        aggregate(tmp_path)
