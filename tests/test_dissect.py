"""dissect(cfg) end to end on a tiny trained CNN: every neuron described, stages resumable, W&B table written,
and the OpenAI-compatible LLM path through the real client against the test server (counts, cache, kill+resume)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from and_lightning.checkpoints import CheckpointError
from and_lightning.dissection import dissect
from and_lightning.models.base import UnknownLayerError
from and_lightning.training import train
from conftest import REPO, compose_cfg
from openai_server import OpenAITestServer, last_user_text
from wandb_offline import read_run

DATA = ["data.index.clips_per_class=5", "data.batch_size=10"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A root with a tiny synth set and a CNN trained on it for one epoch (FAST FAKE: not a good model)."""
    root = tmp_path_factory.mktemp("dissect_root")
    train(compose_cfg("train", root, DATA + ["trainer.max_epochs=1", "logger=none", "callbacks=none"]))
    return root


def run_dissect(root: Path, overrides: list[str] = ()) -> dict:
    return dissect(compose_cfg("dissect", root, DATA + list(overrides)))


def test_every_neuron_is_described_and_logged(root):
    result = run_dissect(root)
    rows = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    widths = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "head": 10}
    assert {(r["layer"], r["unit"]) for r in rows} == {(l, u) for l, w in widths.items() for u in range(w)}
    assert all(r["description"].strip() and len(r["top_clips"]) == 5 and r["closed_concepts"] for r in rows)
    assert "dissect/last_layer_top1" in result["metrics"]
    logged = read_run(Path(result["wandb_run"]))
    row = next(row for row in logged["history"] if "neurons/_type" in row)
    assert row["neurons/_type"] == "table-file" and row["neurons/nrows"] == len(rows)
    assert logged["summary"]["dissect/last_layer_top1"] == result["metrics"]["dissect/last_layer_top1"]
    staged = Path(os.environ["WANDB_DATA_DIR"])  # offline media and tables are staged here
    tables = [json.loads(p.read_text()) for p in staged.rglob("*") if p.is_file() and p.read_bytes()[:1] == b"{"]
    table = next(t for t in tables if t.get("_type") == "table" and "top1_audio" in t["columns"])
    assert "audio-file" in json.dumps(table["column_types"]) and len(table["data"]) == len(rows)
    wavs = [p for p in staged.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"RIFF"]
    assert wavs  # the top clips, playable


def test_rerun_reuses_every_stage(root, caplog):
    first = run_dissect(root, ["logger=none"])
    stamp = {p: p.stat().st_mtime_ns for p in Path(first["dissection_dir"]).rglob("layers/*.jsonl")}
    caplog.set_level("INFO")
    second = run_dissect(root, ["logger=none"])
    assert second["store"] == first["store"] and "reusing it (no forward pass)" in caplog.text
    assert "0 sent to acoustic" in caplog.text
    assert stamp and all(p.stat().st_mtime_ns == t for p, t in stamp.items())


def test_describe_alone_reports_the_output_layer_and_examples_as_a_full_run(root, capsys):
    full = run_dissect(root, ["logger=none"])
    printed = capsys.readouterr().out
    alone = run_dissect(root, ["logger=none", "stage=describe"])  # reads only the layers it prints
    assert alone["metrics"] == {k: v for k, v in full["metrics"].items() if k.startswith("dissect/last_layer")}
    assert alone["metrics"] and alone["descriptions"] == str(Path(full["dissection_dir"]) / "descriptions.jsonl")
    examples = [line for line in capsys.readouterr().out.splitlines() if "| concepts:" in line]
    assert [line.split("#")[0] for line in examples] == ["conv1"] * 5 + ["head"] * 5
    assert all(line in printed for line in examples)


def test_later_stage_without_earlier_files_fails_clearly(root):
    before = set(Path(root, "cache", "activations").iterdir())
    with pytest.raises(FileNotFoundError, match="run `python dissect.py stage=collect` first"):
        run_dissect(root, ["stage=describe", "reduction=max"])
    assert set(Path(root, "cache", "activations").iterdir()) == before


def test_bad_inputs_fail_before_writing(root, tmp_path):
    before = set(Path(root, "cache", "activations").iterdir())
    with pytest.raises(UnknownLayerError, match="unknown layer 'conv9'.*available: conv1"):
        run_dissect(root, ["layers=[conv9]"])
    with pytest.raises(CheckpointError, match="ckpt_path: checkpoint file not found"):
        run_dissect(root, [f"ckpt_path={tmp_path}/missing.pt"])
    with pytest.raises(ValueError, match="stage=describ"):
        run_dissect(root, ["stage=describ"])
    assert set(Path(root, "cache", "activations").iterdir()) == before


def fake_llm_answer(body: dict) -> str:
    """FAKE LLM for tests: a commonality summary echoing the first caption, or a yes/no acoustic decision."""
    if body.get("response_format"):
        return json.dumps({"answer": "yes", "reason": "it describes sound"})
    first = last_user_text(body).splitlines()[0]
    return f"The clips share these traits. {first} Every clip sounds like this one."


def llm_overrides(server: OpenAITestServer, root: Path) -> list[str]:
    return ["llm=openai", f"llm.base_url={server.base_url}", "llm.model=fake-test-model", "logger=none",
            f"llm.cache_path={root}/llm-test.sqlite", "describe.open_concepts.acoustic_filter=llm", "layers=[conv1,head]",
            "evaluate.last_layer.methods=[db]"]  # ICL evaluation would add requests the count below does not expect


def test_llm_requests_equal_unique_prompts_and_rerun_sends_none(root, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dissect-test-key")
    with OpenAITestServer(fake_llm_answer) as server:
        result = run_dissect(root, llm_overrides(server, root))
        bodies = server.bodies()
        keys = [json.dumps([b["messages"], b.get("response_format")], sort_keys=True) for b in bodies]
        assert len(keys) == len(set(keys)) > 0  # one request per unique prompt
        rows = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
        clip_sets = {tuple(sorted(r[k])) for r in rows for k in ("top_clips", "bottom_clips")}
        summaries = [b for b in bodies if not b.get("response_format")]
        assert len(summaries) == len(clip_sets)
        sent = server.count
        for d in Path(result["dissection_dir"]).glob("layers/*.jsonl"):
            d.unlink()  # force the describe stage to run again: every reply must come from the cache
        run_dissect(root, llm_overrides(server, root))
        assert server.count == sent
    for path in Path(root).rglob("*"):
        if path.is_file():
            assert b"sk-dissect-test-key" not in path.read_bytes(), path


@pytest.mark.slow
def test_killed_during_describe_resumes_without_repeating_calls(tmp_path):
    """A real CLI run is SIGKILLed while the (slow) test server answers summaries; the rerun repeats none."""
    args = [f"paths.root_dir={tmp_path}", *DATA, "trainer.max_epochs=1", "logger=none", "callbacks=none"]
    env = {**os.environ, "WANDB_MODE": "offline", "OPENAI_API_KEY": "sk-kill-test"}
    subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=600)
    with OpenAITestServer(fake_llm_answer, delay=0.05) as server:
        cmd = [sys.executable, str(REPO / "dissect.py"), *args[:3], "llm=openai", f"llm.base_url={server.base_url}",
               "llm.model=fake-test-model", "llm.concurrency=2", "logger=none",
               "describe.open_concepts.acoustic_filter=llm", "evaluate.last_layer.methods=[db]"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while server.count < 20 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = [json.dumps(b, sort_keys=True) for b in server.bodies()]
        assert 20 <= len(first)
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
        second = [json.dumps(b, sort_keys=True) for b in server.bodies()[len(first):]]
    repeated = set(first) & set(second)
    assert second and len(repeated) <= 2, f"{len(repeated)} finished calls were sent again"  # <= in flight
    assert list(tmp_path.rglob("descriptions.jsonl"))
