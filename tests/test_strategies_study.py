"""The training-strategies study: per-layer and per-strategy tables over seeds, the finding paragraph and its
verdict against the paper's pattern, the written files and plots, and the study run in the sweep's W&B group."""
from __future__ import annotations

import copy
import json
import math

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from and_lightning.analysis.strategies import (
    ACCURACY_PNG, LAYERS_PNG, RESULT_FIELDS, RESULT_FILE, aggregate, finding_text, layer_rows, summary_rows)
from and_lightning.analysis.sweep import read_results
from wandb_offline import offline_runs, read_run, run_info

LAYERS = ["l1", "l2", "head"]
NAN = math.nan


def job(strategy, seed, acc, top1, slope, p, uninterp, adj, f1=(0.4, 0.6), sim=(0.2, 0.4)):
    """Made-up `study_result.json` content: hidden layers l1, l2 then the head. `uninterp` is K'=4 per layer;
    K'=3 is set to 0.99 everywhere so a wrong K' shows."""
    m = {"test/acc": acc, "val/acc": acc, "dissect/last_layer_top1": top1,
         "eval/interp/adj_slope": slope, "eval/interp/adj_slope_p": p}
    for layer, u, a in zip(LAYERS, uninterp, adj):
        m[f"eval/interp/{layer}/uninterpretable_k4"] = u
        m[f"eval/interp/{layer}/uninterpretable_k3"] = 0.99
        m[f"eval/interp/{layer}/mean_adjectives"] = a
    for layer, f, s in zip(LAYERS, f1, sim):
        m[f"eval/gt/description/{layer}/f1"] = f
        m[f"eval/gt/description/{layer}/f1_shuffled"] = 0.1
        m[f"eval/sim/{layer}/pearson"] = s
        m[f"eval/sim/{layer}/pearson_shuffled"] = 0.0
    return {"strategy": strategy, "seed": seed, "model": "cnn", "data": "synth", "wandb_group": "train-sweepS",
            "layers": LAYERS, "metrics": m}


def base_jobs() -> list[dict]:
    """scratch narrows in both seeds; ssl is flat; ssl_finetune narrows significantly in only one seed."""
    jobs = [
        job("scratch", 0, 0.90, 1.0, -0.4, 0.001, (0.6, 0.2, 0.0), (3.0, 2.0, 1.0)),
        job("scratch", 1, 0.80, 0.8, -0.2, 0.01, (0.8, 0.4, 0.0), (4.0, 2.0, 1.0), f1=(0.6, NAN), sim=(0.4, 0.6)),
        job("ssl", 0, 0.60, 0.4, 0.01, 0.8, (0.7, 0.7, 0.5), (2.5, 2.5, 2.5)),
        job("ssl", 1, 0.50, 0.6, -0.02, 0.6, (0.7, 0.7, 0.5), (2.6, 2.6, 2.4)),
        job("ssl_finetune", 0, 0.85, 0.9, -0.3, 0.02, (0.7, 0.5, 0.1), (3.0, 2.5, 2.0)),
        job("ssl_finetune", 1, 0.87, 0.9, -0.1, 0.2, (0.7, 0.5, 0.1), (3.0, 2.8, 2.7)),
    ]
    del jobs[1]["metrics"]["eval/gt/description/l2/f1"]  # missing, not only NaN
    return jobs


def write_sweep(root, jobs):
    for i, j in enumerate(jobs):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / RESULT_FILE).write_text(json.dumps(j))  # NaN is written as the JSON literal NaN
    return root


def by(rows, **keys):
    (row,) = [r for r in rows if all(r[k] == v for k, v in keys.items())]
    return row


def test_read_results_in_job_order_and_clear_errors(tmp_path):
    jobs = base_jobs()
    sweep = tmp_path / "sweep"
    for i in (10, 2, 0):  # numeric job order, not text order; a deeper folder is found too
        (sweep / str(i) / "sub").mkdir(parents=True)
        (sweep / str(i) / "sub" / RESULT_FILE).write_text(json.dumps(jobs[i % 6]))
    assert [r["job_dir"].split("/")[-2] for r in read_results(sweep, RESULT_FILE, RESULT_FIELDS)] == ["0", "2", "10"]
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}: no {RESULT_FILE}"):
        read_results(tmp_path / "empty", RESULT_FILE, RESULT_FIELDS)
    bad = tmp_path / "bad" / "0" / RESULT_FILE
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"strategy": "scratch", "seed": 0, "metrics": {}}))
    with pytest.raises(ValueError, match=rf"{bad}: missing 'layers'"):
        read_results(tmp_path / "bad", RESULT_FILE, RESULT_FIELDS)


def test_layer_rows_seed_mean_and_sample_sd():
    rows = layer_rows(base_jobs(), k_prime=4)
    assert [(r["strategy"], r["layer"], r["depth"]) for r in rows][:4] == [
        ("scratch", "l1", 1), ("scratch", "l2", 2), ("scratch", "head", 3), ("ssl", "l1", 1)]
    l1 = by(rows, strategy="scratch", layer="l1")
    assert l1["seeds"] == 2
    assert l1["uninterpretable"] == pytest.approx(0.7) and l1["uninterpretable_sd"] == pytest.approx(0.2 / 2 ** 0.5)
    assert l1["mean_adjectives"] == 3.5 and l1["mean_adjectives_sd"] == pytest.approx(0.5 ** 0.5)  # |3-4|/sqrt(2)
    assert l1["gt_f1"] == pytest.approx(0.5) and l1["gt_f1_shuffled"] == pytest.approx(0.1)
    assert l1["sim_pearson"] == pytest.approx(0.3) and l1["sim_pearson_shuffled"] == 0.0
    l2 = by(rows, strategy="scratch", layer="l2")
    assert l2["gt_f1"] == pytest.approx(0.6) and math.isnan(l2["gt_f1_sd"])  # one seed NaN, the other missing
    assert by(rows, strategy="ssl", layer="l1")["uninterpretable_sd"] == 0.0
    one_seed = layer_rows(base_jobs()[:1])
    assert math.isnan(one_seed[0]["uninterpretable_sd"]) and one_seed[0]["uninterpretable"] == 0.6
    assert by(layer_rows(base_jobs(), k_prime=3), strategy="ssl", layer="l2")["uninterpretable"] == 0.99


def test_summary_rows_hand_computed():
    rows = summary_rows(base_jobs())
    assert [r["strategy"] for r in rows] == ["scratch", "ssl", "ssl_finetune"]
    s = rows[0]
    assert s["seeds"] == 2 and s["test_acc"] == pytest.approx(0.85)
    assert s["test_acc_sd"] == pytest.approx(0.02 ** 0.5 / 2)  # |0.9 - 0.8| / sqrt(2)
    assert s["last_layer_top1"] == pytest.approx(0.9) and s["last_layer_top1_sd"] == pytest.approx(0.08 ** 0.5 / 2)
    assert s["adj_slope"] == pytest.approx(-0.3) and s["adj_slope_sd"] == pytest.approx(0.02 ** 0.5)
    assert s["adj_slope_p_max"] == 0.01 and s["slope_negative_seeds"] == 2 and s["slope_significant_seeds"] == 2
    assert s["slope_tested_seeds"] == 2
    # hidden layers l1, l2 only (the head's 0.0 would pull the mean down)
    assert s["hidden_layers"] == 2 and (s["first_hidden"], s["last_hidden"]) == ("l1", "l2")
    assert s["uninterpretable"] == pytest.approx(0.5)  # mean of layer means 0.7 and 0.3
    assert s["uninterpretable_first"] == pytest.approx(0.7) and s["uninterpretable_last_hidden"] == pytest.approx(0.3)
    assert s["gt_f1"] == pytest.approx(0.55)  # (0.5 + 0.6) / 2: the NaN/missing seed is ignored
    assert s["sim_pearson"] == pytest.approx(0.4)
    ssl, ft = rows[1], rows[2]
    assert ssl["slope_negative_seeds"] == 0 and ssl["slope_significant_seeds"] == 0 and ssl["adj_slope_p_max"] == 0.8
    assert ft["slope_negative_seeds"] == 1 and ft["adj_slope_p_max"] == 0.2


def test_missing_metrics_give_nan_not_a_crash():
    jobs = base_jobs()
    jobs[0]["metrics"] = {}
    jobs[1]["metrics"]["eval/interp/adj_slope_p"] = None
    s = summary_rows(jobs)[0]
    assert s["test_acc"] == pytest.approx(0.8) and math.isnan(s["test_acc_sd"])
    assert math.isnan(s["adj_slope_p_max"]) and s["slope_negative_seeds"] == 0  # no seed is known to hold
    assert s["slope_tested_seeds"] == 0
    assert s["uninterpretable_first"] == pytest.approx(0.8)
    empty = summary_rows([{"strategy": "x", "seed": 0, "layers": ["head"], "metrics": {}}])[0]
    assert empty["hidden_layers"] == 0 and math.isnan(empty["uninterpretable"]) and empty["first_hidden"] == ""
    assert "cannot be compared" in finding_text([empty])


def test_finding_partly_reproduced_for_the_base_sweep():
    text = finding_text(summary_rows(base_jobs()), k_prime=4)
    assert "`scratch` (2 seeds): adjectives per neuron fall with depth in every seed" in text
    assert "uninterpretable share (K' = 4) goes from 70% in l1 to 30% in l2" in text
    assert "`ssl_finetune` (2 seeds): adjectives per neuron fall significantly with depth in 1 of 2 seeds" in text
    assert "`ssl` (2 seeds): adjectives per neuron do not fall significantly with depth in any seed" in text
    assert "is partly reproduced" in text and "`ssl` stays flat" in text
    assert "`ssl_finetune` narrows only partly" in text and "`scratch` narrows with depth" in text


def test_finding_reproduced_when_every_supervised_seed_narrows():
    jobs = base_jobs()
    jobs[5]["metrics"]["eval/interp/adj_slope_p"] = 0.03
    extra = job("linear_probe", 0, 0.3, 0.1, 0.5, 0.001, (0.5, 0.6, 0.2), (2.0, 3.0, 4.0))  # outside the verdict
    text = finding_text(summary_rows(jobs + [extra]))
    assert "is reproduced:" in text and "`linear_probe` (1 seed)" in text
    assert "goes from 50% in l1 to 60% in l2" in text


def test_finding_not_reproduced_when_supervised_models_stay_flat():
    jobs = copy.deepcopy(base_jobs())
    for j in jobs:
        if j["strategy"] != "ssl":
            j["metrics"]["eval/interp/adj_slope_p"] = 0.5
            j["metrics"]["eval/interp/l2/uninterpretable_k4"] = 0.9
    text = finding_text(summary_rows(jobs))
    assert "is not reproduced:" in text and "`scratch` does not narrow" in text
    assert "goes from 70% in l1 to 90% in l2" in text


def test_finding_needs_all_three_strategies():
    text = finding_text(summary_rows([j for j in base_jobs() if j["strategy"] != "ssl"]))
    assert "cannot be judged: it needs `ssl`" in text and "reproduced:" not in text


def test_aggregate_writes_tables_plots_and_a_study_run_in_the_group(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", base_jobs())
    out = aggregate(sweep, wandb_project="and-lightning-test", k_prime=4)
    assert out["jobs"] == 6 and "partly reproduced" in out["finding"]
    summary_md = (sweep / "strategies_summary.md").read_text()
    assert summary_md.startswith("# Training strategies: summary")
    assert "| scratch | 2 | 0.850 ± 0.071 | 0.900 ± 0.141 | -0.300 ± 0.141 | 0.01 | 2 |" in summary_md and out["finding"] in summary_md
    assert (sweep / "strategies_summary.csv").read_text().splitlines()[0].startswith("strategy,seeds,test_acc,")
    layers_md = (sweep / "strategies_layers.md").read_text()
    assert "| scratch | l2 | 2 | 0.300 ± 0.141 | 2.000 ± 0.000 | 0.600 | 0.100 |" in layers_md  # F1: one seed, no sd
    assert "| scratch | head | 2 | 0.000 ± 0.000 | 1.000 ± 0.000 | n/a |" in layers_md
    assert len((sweep / "strategies_layers.csv").read_text().splitlines()) == 1 + 9
    for name in (LAYERS_PNG, ACCURACY_PNG):
        data = (sweep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    (run,) = offline_runs(sweep)
    assert out["wandb_run_dir"] == str(run)
    info = run_info(run)
    assert info.run_group == "train-sweepS" and info.job_type == "study" and info.display_name == "train-sweepS-study"
    summary = read_run(run)["summary"]
    assert summary["strategies/summary/nrows"] == 3 and summary["strategies/layers/nrows"] == 9
    assert summary["strategies/layers_plot/_type"] == "image-file" and summary["strategies/finding"] == out["finding"]


def test_no_wandb_run_without_one_shared_group_and_callback_reads_the_config(tmp_path, compose_in):
    jobs = base_jobs()
    jobs[0]["wandb_group"] = None
    jobs[2]["metrics"] = {}  # plots and tables survive a job without any metric
    jobs[3]["metrics"] = {}
    sweep = write_sweep(tmp_path / "sweep", jobs)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": {"wandb": {"project": "p"}}})
    compose_in("train", ["experiment=strategies", "hydra.callbacks.study.aggregate.k_prime=3"])
    instantiate(HydraConfig.get().callbacks.study).on_multirun_end(cfg)  # the experiment's callback
    assert offline_runs(sweep) == []
    text = (sweep / "strategies_summary.md").read_text()
    assert "K' = 3" in text and "| ssl | 2 | n/a | n/a | n/a |" in text
    assert "`ssl` is only partly flat (a significant adjective slope in 0 of 2 seeds, 2 untested" in text
    assert (sweep / ACCURACY_PNG).read_bytes()[:4] == b"\x89PNG"


def test_ssl_without_a_p_value_in_one_seed_is_not_called_flat():
    jobs = base_jobs()
    del jobs[3]["metrics"]["eval/interp/adj_slope_p"]
    jobs[5]["metrics"]["eval/interp/adj_slope_p"] = 0.03
    text = finding_text(summary_rows(jobs))
    assert "(slope or p-value missing for 1 of 2 seeds)" in text
    assert "is partly reproduced" in text and "`ssl` is only partly flat (a significant adjective slope in 0 of 2 seeds, 1 untested" in text


def test_frozen_ssl_whose_uninterpretable_share_falls_is_not_flat():
    """Only a fall of >= 10 points counts: 70% -> 62% is flat (the paper's BEATs-frozen moves by 2-5 points),
    70% -> 40% is not."""
    def ssl_jobs(last):
        return [j for j in base_jobs() if j["strategy"] != "ssl"] + [
            job("ssl", s, 0.6, 0.5, 0.0, 0.7, (0.7, last, 0.5), (2.5, 2.5, 2.5)) for s in (0, 1)]

    assert "`ssl` stays flat (a significant adjective slope in 0 of 2 seeds; uninterpretable share does not fall " \
           "by 10 points)" in finding_text(summary_rows(ssl_jobs(0.62)))
    assert "`ssl` is only partly flat (a significant adjective slope in 0 of 2 seeds; uninterpretable share falls " \
           "by >= 10 points)" in finding_text(summary_rows(ssl_jobs(0.40)))
