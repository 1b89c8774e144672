"""TAB (CLAP audio vs concept text) through the real CLI: `python dissect.py describe.closed_set.method=tab
text_encoder=clap text_encoder.model=<dir>` with a tiny random CLAP checkpoint (FAKE weights, real ClapModel),
in describe and in evaluate; and the one-line error when the text encoder has no audio side."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from and_lightning.data.audio_io import fix_length, load_audio
from and_lightning.describe.closed_set import tab_scores, top_concepts
from and_lightning.store.activations import ActivationStore
from conftest import CONF, REPO
from tiny_hf import tiny_clap

# 40 clips: rank_reorder (a Table 2 row) needs int(0.05 * N) >= 2 top clips. A random CNN (ckpt_path=null).
SMALL = ["ckpt_path=null", "model.channels=[4,4,4]", "data.index.clips_per_class=4", "data.batch_size=10",
         "logger=none"]


def run_cli(root: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "dissect.py"), f"paths.root_dir={root}", *SMALL, *overrides],
                          cwd=root, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("faithful", [False, True])
def test_tab_runs_from_the_cli_in_describe_and_evaluate(tmp_path, tmp_path_factory, faithful):
    clap_dir = tiny_clap(tmp_path_factory)
    proc = run_cli(tmp_path, ["describe.closed_set.method=tab", "text_encoder=clap", f"text_encoder.model={clap_dir}",
                              f"describe.faithful={str(faithful).lower()}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_json,) = tmp_path.glob("logs/dissect/runs/*/dissection.json")
    result = json.loads(run_json.read_text())
    store = ActivationStore.open(result["store"])
    records = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]

    # The expected TAB ranking, recomputed here: CLAP audio of each clip as the model saw it (1 s), at the
    # encoder's rate, against CLAP text of the concept names; soft_wpmi over ALL clips of every layer (the
    # original ran TAB on all clips, hidden layers included, also in its faithful mode).
    cfg = OmegaConf.load(CONF / "text_encoder" / "clap.yaml")
    cfg.model = clap_dir
    clap = instantiate(cfg)
    paths = {p.stem: p for p in tmp_path.glob("cache/synth/**/*.wav")}
    sr = clap.audio_sample_rate
    audio = clap.encode_audio([fix_length(load_audio(paths[c], sr)[0], sr) for c in store.clip_ids], sr)
    np.testing.assert_allclose(np.load(Path(result["dissection_dir"]) / "tab_audio.npy"), audio.numpy(), atol=1e-5)
    concepts = list(OmegaConf.load(CONF / "concepts" / "synth.yaml").concepts)
    text = clap.encode(concepts)
    assert {r["closed_method"] for r in records} == {"tab/soft_wpmi"}
    for layer in store.layers:
        acts = torch.from_numpy(np.asarray(store.acts(layer), dtype=np.float32))
        tiebreak = torch.from_numpy(np.array(store.tiebreak(layer)))  # equal activations: the store's statistic
        expected = top_concepts(tab_scores(acts, audio, text, "soft_wpmi", faithful=faithful, tiebreak=tiebreak),
                                concepts, k=5)
        got = sorted((r for r in records if r["layer"] == layer), key=lambda r: r["unit"])
        assert [[c["concept"] for c in r["closed_concepts"]] for r in got] == [[c for c, _ in e] for e in expected]
        np.testing.assert_allclose([[c["score"] for c in r["closed_concepts"]] for r in got],
                                   [[s for _, s in e] for e in expected], rtol=1e-4, atol=1e-5)

    # evaluate: Table 2 has a TAB row for every similarity, its soft_wpmi row agrees with describe's head
    # concepts, DB and ICL rows say why they did not run.
    metrics = result["metrics"]
    assert metrics["eval/last_layer/tab/soft_wpmi/top1"] == pytest.approx(100 * metrics["dissect/last_layer_top1"])
    assert metrics["eval/last_layer/tab/soft_wpmi/top5"] == pytest.approx(100 * metrics["dissect/last_layer_top5"])
    rows = list(csv.DictReader(open(result["evaluate"]["files"]["last_layer_csv"])))
    tab = {r["similarity"]: r for r in rows if r["method"] == "tab"}
    assert set(tab) == {"cos", "cos_cubed", "wpmi", "soft_wpmi", "rank_reorder"}
    assert all(r["units"] == "10" and r["note"] == "" for r in tab.values())
    notes = {r["method"]: r["note"] for r in rows if r["method"] != "tab"}
    assert re.fullmatch(r"skipped: \d+ clips have no caption \(DB needs every clip's\)", notes["db"])
    assert notes["icl"] == "skipped: no LLM configured (llm=none)"
    assert result["evaluate"]["skipped"] == {}


def test_tab_with_a_text_only_encoder_is_a_one_line_error_before_any_work(tmp_path):
    proc = run_cli(tmp_path, ["describe.closed_set.method=tab"])  # text_encoder=minilm (the default)
    assert proc.returncode != 0
    message = ("describe.closed_set.method=tab needs a text encoder with an audio side, i.e. text_encoder=clap; "
               "text_encoder is MiniLMEncoder, which encodes text only")
    assert proc.stderr.splitlines()[-1].endswith(message)
    assert not (tmp_path / "cache").exists()  # failed before building the data or collecting activations
