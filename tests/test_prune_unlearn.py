"""Unlearning end to end on CPU: a small CNN trained and dissected on the synthetic set, pruned by an open
concept vs random units of the same count, retrained on the retained classes, logged to W&B offline; and the
Hydra multirun that aggregates a sweep into one table and one W&B group."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from and_lightning.checkpoints import build, load_adapter, save_checkpoint
from and_lightning.dissection import dissect
from and_lightning.prune.forgetting import forgetting, phase_metrics
from and_lightning.prune.masks import UnitMasks
from and_lightning.prune.selection import load_records, select_units, target_vocabulary
from and_lightning.prune.unlearn import predict_logits, unlearn
from and_lightning.training import train
from conftest import CONF, REPO, compose_cfg
from wandb_offline import offline_runs, read_run, run_info

DATA = ["data.index.clips_per_class=40"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small CNN trained 8 epochs on 40 clips per class, and its dissection (~45 s on 2 CPUs)."""
    root = tmp_path_factory.mktemp("unlearn")
    ckpt = train(compose_cfg("train", root, DATA + ["trainer.max_epochs=8", "logger=none", "callbacks=none"]))
    described = dissect(compose_cfg("dissect", root, DATA + ["logger=none"]))
    return {"root": root, "ckpt": ckpt["checkpoint_path"], "descriptions": described["descriptions"]}


def unlearn_cfg(tiny: dict, out: Path, overrides: list[str]):
    cfg = compose_cfg("train", tiny["root"], DATA + ["mode=unlearn", f"prune.descriptions={tiny['descriptions']}",
                                                     *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def concept_for_a_class(tiny: dict) -> tuple[str, str]:
    """The class whose top units' descriptions share the most specific word, and that word: the offline
    captioner describes acoustic properties, so class names rarely appear in the descriptions."""
    cfg = compose_cfg("train", tiny["root"], DATA)
    data = build(cfg.data)
    label_of = {r.clip_id: data.class_names[r.label] for r in data.index.records}
    records = load_records(tiny["descriptions"])
    best = max(((target_vocabulary(records, c, label_of, head="head") or [("", 0, 0)])[0] + (c,)
                for c in data.class_names), key=lambda v: v[1] - v[2])
    word, n_mine, n_other, target = best
    assert n_mine - n_other >= 5, f"no class has a distinctive description word: {best}"
    return target, word


def selectivity(adapter, loader, units: dict, target: int, num_classes: int) -> float:
    """ΔR−ΔA (probability units) of masking `units`, measured with the real masks on the held-out split."""
    before, labels = predict_logits(adapter, loader)
    with UnitMasks(adapter, units):
        after, _ = predict_logits(adapter, loader)
    per_before = phase_metrics(before, labels, num_classes, target)[1]
    per_after = phase_metrics(after, labels, num_classes, target)[1]
    return forgetting(per_before, per_after, target)["selectivity_prob"]


@pytest.mark.slow
def test_concept_pruning_forgets_its_class_random_does_not_and_retraining_keeps_it_forgotten(tiny, tmp_path):
    target, word = concept_for_a_class(tiny)
    out = tmp_path / "run"
    cfg = unlearn_cfg(tiny, out, ["prune=concept", f"prune.target={target}", f"prune.words=[{word}]",
                                  "prune.retrain_epochs=4",
                                  f"prune.export_ckpt={tmp_path}/unlearned.pt"])
    m = unlearn(cfg)
    print(f"target={target} word={word}: {json.dumps({k: round(v, 3) for k, v in m.items() if isinstance(v, float)})}")
    assert m["prune/n_pruned"] > 0 and m["prune/baked_max_abs_pruned_output"] == 0.0
    assert m["pruned/selectivity_prob"] > 0.05 and m["pruned/delta_A_prob"] < m["pruned/delta_R_prob"]
    assert m["pruned/acc_target"] < m["before/acc_target"]
    # retraining on the other classes recovers much of their lost accuracy; the target stays forgotten
    lost = m["before/acc_rest"] - m["pruned/acc_rest"]
    assert lost > 0 and m["retrained/acc_rest"] - m["pruned/acc_rest"] >= 0.4 * lost
    assert m["retrained/acc_target"] <= 0.05

    # random units, same count per layer: no selective forgetting of this class (five seeds)
    data = build(cfg.data)
    data.prepare_data()
    adapter, _ = load_adapter(tiny["ckpt"], cfg.model)
    loader = DataLoader(data.dataset("test"), batch_size=64)
    records = load_records(tiny["descriptions"])
    node = OmegaConf.to_container(cfg.prune, resolve=True) | {"name": "random", "like": "concept", "per_layer": True}
    t = data.class_names.index(target)
    rand = [selectivity(adapter, loader, select_units(records, node | {"seed": s}, "head").by_layer(), t, 10)
            for s in range(5)]
    print(f"random selectivity (prob) over seeds: {np.round(rand, 3).tolist()}")
    assert m["pruned/selectivity_prob"] > np.mean(rand) + 0.05

    # the files of the run, and the exported model with the masks baked in
    result = json.loads((out / "unlearn_result.json").read_text())
    units = json.loads((out / "pruned_units.json").read_text())
    assert len(units) == m["prune/n_pruned"] and all(word in u["reason"] or "matches" in u["reason"] for u in units)
    assert result["target"] == target and (out / "per_class_drop.png").read_bytes()[:4] == b"\x89PNG"
    exported, ckpt = load_adapter(tmp_path / "unlearned.pt", cfg.model)
    first = units[0]
    assert torch.count_nonzero(exported.layer_module(first["layer"]).weight[first["unit"]]) == 0
    assert ckpt["config"]["unlearn"]["prune"]["target"] == target

    (run,) = offline_runs(out)
    logged = read_run(run)
    assert logged["summary"]["pruned/selectivity_prob"] == pytest.approx(m["pruned/selectivity_prob"])
    assert logged["summary"]["prune/units/nrows"] == m["prune/n_pruned"]
    assert logged["summary"]["prune/per_class_drop/format"] == "png"
    assert any("train/loss_step" in row for row in logged["history"])  # the retraining was logged too
    assert logged["config"]["prune"]["name"] == "concept"


@pytest.mark.slow
def test_a_dissection_of_another_checkpoint_is_refused(tiny, tmp_path):
    adapter, ckpt = load_adapter(tiny["ckpt"], compose_cfg("train", tiny["root"], DATA).model)
    with torch.no_grad():
        adapter.layer_module("head").bias.add_(1.0)
    other = save_checkpoint(tmp_path / "other.pt", adapter, ckpt["config"], ckpt["class_names"])
    cfg = unlearn_cfg(tiny, tmp_path / "run", ["prune=class", "prune.target=pure_tone", f"prune.ckpt={other}",
                                               "logger=none"])
    with pytest.raises(ValueError, match="does not describe this checkpoint: head#"):
        unlearn(cfg)


@pytest.mark.slow
def test_multirun_writes_one_table_and_one_wandb_group(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # the app points W&B into its run dirs
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=unlearn_table4", "prune=concept,random",
         "prune.target=click_train,harmonic_tone", f"prune.ckpt={tiny['ckpt']}",
         f"prune.descriptions={tiny['descriptions']}", f"paths.root_dir={tiny['root']}", *DATA,
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(jobs) == 4 and all((j / "unlearn_result.json").is_file() for j in jobs)
    tables = sorted(p.name for p in sweep.glob("unlearning_table.*"))
    assert tables == ["unlearning_table.csv", "unlearning_table.md"]
    table = (sweep / "unlearning_table.md").read_text()
    assert "| concept(fallback 3) | 2 | 2 |" in table and "| random(like concept) | 2 | 2 |" in table
    lines = table.split("Selections:\n")[1].splitlines()  # one line per job: what each selection rests on
    assert len(lines) == 4 and all(" units; " in line for line in lines), lines
    groups, job_types = set(), []
    for run in offline_runs(sweep):
        info = run_info(run)
        groups.add(info.run_group)
        job_types.append(info.job_type)
    assert len(groups) == 1 and groups.pop().startswith("train-") and sorted(job_types) == ["aggregate"] + ["unlearn"] * 4


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "prune").glob("[!_]*.yaml")))
def test_every_prune_option_composes(tmp_path, option):
    cfg = compose_cfg("train", tmp_path, [f"prune={option}"])
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert plain["prune"]["name"] == option
    if option != "none":
        assert plain["prune"]["include_head"] is False and plain["prune"]["ckpt"] == plain["export_ckpt"]


def test_unlearn_experiments_compose(tmp_path):
    for name in ("unlearn_table4", "unlearn_fig4"):
        cfg = compose_cfg("train", tmp_path, [f"experiment={name}"])
        assert cfg.prune.name in ("concept", "attribute_count") and cfg.task_name == cfg.mode == "unlearn"
