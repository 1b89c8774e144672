"""Stage 4 as a whole: configs and experiment configs compose, clear errors, the CREPE pitch task, and the
real pipeline (train a small CNN on synth, dissect it, evaluate) where descriptions must beat shuffled ones."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from and_lightning.analysis.pitch import midi_to_hz, note_concepts, note_to_midi, spoken_hz
from and_lightning.analysis.task import Task
from and_lightning.describe.captioners.base import Captioner
from and_lightning.stages.evaluate import build_tasks, evaluate_stage, needs_dissection, scored_records
from conftest import CONF, REPO, compose_cfg

# the evaluation experiments (experiments/<name>.yaml describes each; conf/experiment/<name>.yaml runs it)
EXPERIMENTS = ["crepe_pitch", "description_quality", "fig3_adjective_distribution", "fig5_adjectives_per_layer",
               "fig6_uninterpretable", "table2_last_layer"]


def conf_with_evaluate(tmp_path: Path) -> Path:
    """The config tree, with `- evaluate: default` in dissect.yaml's defaults if the entry point has not
    wired it yet (placed before `experiment`, where it belongs)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    text = (conf / "dissect.yaml").read_text()
    if "- evaluate:" not in text:
        (conf / "dissect.yaml").write_text(text.replace("  - experiment: null", "  - evaluate: default\n"
                                                                                "  - experiment: null"))
    return conf


def compose_dissect(conf: Path, root: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("dissect", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose_and_name_valid_tasks(name, tmp_path):
    manifest = yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text())
    assert manifest["experiment"] == name and (CONF / "experiment" / f"{name}.yaml").is_file()
    assert all(f"experiment={name}" in cmd for cmd in manifest["commands"].values())
    cfg = compose_dissect(conf_with_evaluate(tmp_path), tmp_path, [f"experiment={name}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    tasks = build_tasks(plain["evaluate"])
    assert tasks and all(isinstance(t, Task) for t in tasks.values())
    assert set(plain["evaluate"]) >= {"last_layer", "ground_truth", "simulation", "interpretability", "html", "pitch"}
    if name == "crepe_pitch":
        assert plain["model"]["name"] == "crepe" and plain["stage"] == "evaluate"
        assert not needs_dissection(plain["evaluate"])
    else:
        assert needs_dissection(plain["evaluate"])


def test_default_evaluate_config_resolves_against_describe(tmp_path):
    cfg = compose_dissect(conf_with_evaluate(tmp_path), tmp_path, ["describe.k=7"])
    ev = OmegaConf.to_container(cfg.evaluate, resolve=True)
    assert ev["interpretability"]["k"] == 7 and ev["last_layer"]["scale"] == cfg.describe.closed_set.scale
    assert ev["pitch"]["similarities"] == ev["last_layer"]["similarities"]


def test_unknown_task_and_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['tabel2'\]"):
        evaluate_stage({"tasks": ["tabel2"]}, tmp_path)
    cfg = compose_dissect(conf_with_evaluate(tmp_path), tmp_path, ["evaluate.tasks=[simulation]"])
    with pytest.raises(ValueError, match="'simulation' needs store, records, captions, encoder"):
        evaluate_stage(cfg.evaluate, tmp_path)


def test_pitch_task_writes_crepe_rows_beside_the_paper(tmp_path):
    from and_lightning.describe.captioners.acoustic import AcousticCaptioner
    from test_eval_last_layer import FakeTableEncoder

    pitch = {"_target_": "and_lightning.analysis.pitch.Pitch", "capacities": ["tiny"], "hop_length": 2048,
             "low_note": "A3", "high_note": "A4", "tones_per_note": 2, "seconds": 0.25, "detune_cents": 30,
             "p_sources": ["labels", "captions"], "similarities": ["cos_cubed"]}
    res = evaluate_stage({"tasks": ["pitch"], "pitch": pitch}, tmp_path, encoder=FakeTableEncoder(),
                         captioner=AcousticCaptioner(), seed=0)
    md = Path(res.files["pitch_md"]).read_text()
    assert "| crepe-tiny | labels | cos_cubed |" in md and "| crepe-tiny | db (captions) | cos_cubed |" in md
    assert "| AST (paper) | db | cos_cubed | 100.000 | 100.000 | 1.000 |" in md
    assert res.metrics["eval/pitch/crepe-tiny/labels/cos_cubed/top1"] > 80.0
    assert json.loads((tmp_path / "evaluation.json").read_text())["files"]["pitch_csv"] == res.files["pitch_csv"]


class FakeNoteCaptioner(Captioner):
    """FAKE captioner: says each tone's note (its label) as the pitch task's concept texts do; records the labels."""

    name = "fake-notes"
    seen: list[str] = []

    def caption(self, clips):
        FakeNoteCaptioner.seen += [c.label for c in clips]
        return [f"a tone around {spoken_hz(midi_to_hz(note_to_midi(c.label)))} Hz" for c in clips]


def test_pitch_captions_come_from_the_configured_captioner(tmp_path):
    """Issue 15: the CREPE task's DB row uses the run's `captioner` (here a FAKE one), not one of its own."""
    from and_lightning.dissection import dissect

    conf = conf_with_evaluate(tmp_path)
    (conf / "captioner" / "fake_notes.yaml").write_text("_target_: test_eval_stage.FakeNoteCaptioner\n")
    (conf / "text_encoder" / "fake.yaml").write_text("_target_: test_eval_last_layer.FakeTableEncoder\n")
    FakeNoteCaptioner.seen = []
    cfg = compose_dissect(conf, tmp_path, [
        "experiment=crepe_pitch", "captioner=fake_notes", "text_encoder=fake", "logger=none",
        "evaluate.pitch.capacities=[tiny]", "evaluate.pitch.low_note=A3", "evaluate.pitch.high_note=C4",
        "evaluate.pitch.tones_per_note=2", "evaluate.pitch.seconds=0.25", "evaluate.pitch.similarities=[cos_cubed]"])
    m = dissect(cfg)["metrics"]
    assert FakeNoteCaptioner.seen == [n for n in note_concepts("A3", "C4") for _ in range(2)]
    # captions that name each tone's note make P nearly its label (the fake encoder's hashed words may merge two
    # notes' numbers): the output units name their pitch from these captions as from the labels
    assert m["eval/pitch/crepe-tiny/db (captions)/cos_cubed/top1"] > 80.0
    assert m["eval/pitch/crepe-tiny/labels/cos_cubed/top1"] > 80.0


@pytest.mark.slow
def test_real_pipeline_descriptions_beat_shuffled_ones(tmp_path, capsys):
    """Train the default CNN on a small synthetic set, dissect it with the default offline stack, evaluate."""
    from and_lightning.checkpoints import build
    from and_lightning.dissection import dissect
    from and_lightning.stages.caption import read_captions
    from and_lightning.stages.describe import read_descriptions
    from and_lightning.store.activations import ActivationStore
    from and_lightning.training import train

    small = ["data.index.clips_per_class=40", "logger=none"]
    train(compose_cfg("train", tmp_path, small + ["trainer.max_epochs=10", "callbacks=none"]))
    cfg = compose_dissect(conf_with_evaluate(tmp_path), tmp_path, small)
    out = dissect(cfg)
    store = ActivationStore.open(out["store"])
    folder = Path(out["dissection_dir"])
    data = build(cfg.data)
    clips = {r.clip_id: r for r in data.index.records}
    res = evaluate_stage(cfg.evaluate, tmp_path / "run" / "evaluate", store=store,
                         records=read_descriptions(folder / "descriptions.jsonl"),
                         captions=read_captions(folder / "captions.jsonl"), clips=clips,
                         class_names=data.class_names, concepts=list(cfg.concepts.concepts), head_layer="head",
                         encoder=instantiate(cfg.text_encoder), split_dir=folder, model_name="cnn", seed=cfg.seed)
    printed = capsys.readouterr().out
    assert "# Ground-truth attribute accuracy (AUROC >= 0.75" in printed and "# Simulation score (text" in printed
    for layer in store.layers:
        m = res.metrics
        assert m[f"eval/gt/description/{layer}/f1"] > m[f"eval/gt/description/{layer}/f1_shuffled"], layer
        assert m[f"eval/sim/{layer}/pearson"] > m[f"eval/sim/{layer}/pearson_shuffled"], layer
        assert m[f"eval/det/{layer}/auprc"] > m[f"eval/det/{layer}/auprc_shuffled"], layer
    # Table 2's DB cos_cubed row recomputes what describe stored for the head: the same top-1, well above chance
    top1 = m["eval/last_layer/db/cos_cubed/top1"]
    assert top1 == pytest.approx(100 * out["metrics"]["dissect/last_layer_top1"]) and top1 >= 80.0
    table = {(r["method"], r["similarity"], r["faithful"]): r
             for r in csv.DictReader(open(res.files["last_layer_csv"]))}
    assert float(table[("db", "cos_cubed", "False")]["top1"]) == pytest.approx(top1)
    assert table[("tab", "-", "False")]["note"] == \
        "skipped: no CLAP audio side in the text encoder (TAB needs text_encoder=clap)"
    assert 0.0 <= m["eval/interp/adj_slope_p"] <= 1.0
    for name in ("ground_truth_f1", "simulation_pearson", "detection_auprc", "adjectives_top", "adjectives_per_layer",
                 "uninterpretable"):
        assert Path(res.images[name]).read_bytes()[:4] == b"\x89PNG", name
    assert Path(res.files["simulation_split"]).parent == folder and res.files["split"] == res.files["simulation_split"]
    gt_rows = list(csv.DictReader(open(res.files["ground_truth_csv"])))
    assert [(r["layer"], r["field"]) for r in gt_rows] == [(layer, f) for layer in store.layers
                                                           for f in cfg.evaluate.ground_truth.fields]
    assert all(f"| {layer} |" in Path(res.files["simulation_md"]).read_text() for layer in store.layers)
    # a neuron with no cluster shared by K' of its top clips has none shared by more: shares grow with K'
    for r in csv.DictReader(open(res.files["uninterpretable_csv"])):
        assert 0.0 <= float(r["k3"]) <= float(r["k4"]) <= float(r["k5"]) <= 1.0, r


@pytest.mark.slow
@pytest.mark.parametrize("layers", [["conv1"], ["conv1", "conv3"]])
def test_dissecting_without_the_head_runs_the_other_tasks_and_says_why_last_layer_was_skipped(layers, tmp_path,
                                                                                              caplog):
    """A random CNN (ckpt_path=null, FAST FAKE) dissected on some hidden layers only, every task configured."""
    from and_lightning.dissection import dissect

    caplog.set_level("INFO")
    cfg = compose_cfg("dissect", tmp_path, ["ckpt_path=null", "model.channels=[4,4,4]", "data.index.clips_per_class=4",
                                            "data.batch_size=10", "logger=none", f"layers=[{','.join(layers)}]"])
    assert cfg.evaluate.tasks == ["last_layer", "ground_truth", "simulation", "detection", "interpretability",
                                  "polysemanticity"]
    out = dissect(cfg)
    reason = f"the output layer 'head' was not dissected (layers: {', '.join(layers)}); add it to layers= for Table 2"
    saved = json.loads((tmp_path / "run" / "evaluate" / "evaluation.json").read_text())
    assert saved["skipped"] == out["evaluate"]["skipped"] == {"last_layer": reason}
    assert f"evaluate: task 'last_layer' skipped: {reason}" in caplog.text
    assert "last-layer accuracy skipped: the output layer 'head' was not dissected" in caplog.text

    m = saved["metrics"]
    assert set(m) == set(out["metrics"]) and not [k for k in m if "last_layer" in k]
    assert {k.split("/")[3] for k in m if k.startswith("eval/gt/")} == set(layers)
    assert {k.split("/")[2] for k in m if k.startswith("eval/sim/")} == set(layers)
    assert {k.split("/")[2] for k in m if k.startswith("eval/det/")} == set(layers)
    assert {k.split("/")[2] for k in m if k.endswith("/mean_adjectives")} == set(layers)
    for layer in layers:  # no cluster shared by K' top clips implies none shared by more: shares grow with K'
        k3, k4, k5 = (m[f"eval/interp/{layer}/uninterpretable_k{kp}"] for kp in (3, 4, 5))
        assert 0.0 <= k3 <= k4 <= k5 <= 1.0
    assert all(-1.0 <= m[f"eval/sim/{layer}/pearson"] <= 1.0 and m[f"eval/sim/{layer}/pearson"] != 0.0
               for layer in layers)
    rows = list(csv.DictReader(open(saved["files"]["ground_truth_csv"])))
    assert [r["layer"] for r in rows] == [layer for layer in layers for _ in cfg.evaluate.ground_truth.fields]
    assert "last_layer_csv" not in saved["files"]


def test_scored_records_carry_this_evaluation_scores_only():
    records = [{"layer": "a", "unit": 0, "description": "x", "scores": {"old": 1.0}},
               {"layer": "a", "unit": 1, "description": "y"}]
    scores = {("a", 0): {"det_auprc": 0.75, "gt_f1": float("nan"), "int_ablate_rho": float("inf"),
                         "gt_true": ["pitch=high"]}, ("b", 0): {"det_auprc": 0.5}}
    assert list(scored_records(records, scores)) == [
        {"layer": "a", "unit": 0, "description": "x",
         "scores": {"det_auprc": 0.75, "gt_f1": None, "int_ablate_rho": None, "gt_true": ["pitch=high"]}},
        {"layer": "a", "unit": 1, "description": "y", "scores": {}}]
    assert records[0]["scores"] == {"old": 1.0}  # the records read are left as they were
