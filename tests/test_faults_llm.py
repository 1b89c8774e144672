"""The LLM and captioner fault suite (issue 12, items 3-6): the real `openai` client, through the backends and the
caption / describe stages, against a local HTTP server scripted to answer late, with 429 or 500, with a body that
is not JSON, with empty or garbage content, or to drop the connection.

Every fault is retried and the later valid reply used, or, when it persists, ends in a one-line error naming the
server, the request kind and the reply, with nothing invalid in the sqlite cache. Captions answered before a
failure are kept; cache keys ignore how replies are fetched; two processes on one cache share its work; run
directories are unique. The module prints its tally, `faults handled: X/Y`, at the end.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import and_lightning
from and_lightning.describe.captioners.cached import caption_key
from and_lightning.describe.llm.base import ChatRequest, LLMError, LLMReplyError, LLMRequestError
from and_lightning.describe.llm.factory import build_llm
from and_lightning.describe.open_concepts import ACOUSTIC_FILTER_SCHEMA, acoustic_filter_messages
from and_lightning.dissection import dissect, dissection_dir
from conftest import CONF, compose_cfg
from openai_server import FAULTS, GARBAGE, OpenAITestServer, last_user_text

FAULT_KINDS = ["late", 429, 500, "malformed", "empty", "garbage", "drop"]
assert set(FAULT_KINDS) - {429, 500} == set(FAULTS)  # every fault the test server can script
TRANSPORT = {"late", 429, 500, "drop"}  # retried by the openai client (max_retries); the rest are invalid replies
YES = {"answer": "yes", "reason": "it describes a sound"}


def answer(body: dict) -> str:
    """FAKE LLM: a yes/no decision for structured requests, a summary of the prompt's first line otherwise."""
    if body.get("response_format"):
        return json.dumps(YES)
    return f"The clips share a steady low hum. {last_user_text(body).splitlines()[0][:60]}"


# --- the tally ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tally(request):
    cases: dict[str, bool] = {}
    yield cases
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # past pytest's output capture, also without -s
        print(f"\nfaults handled: {sum(cases.values())}/{len(cases)}")


@pytest.fixture
def handled(tally, request):
    """Call at the end of a fault case: the case counts as handled only when every check before it passed."""
    tally[request.node.name] = False
    return lambda: tally.__setitem__(request.node.name, True)


# --- helpers -----------------------------------------------------------------------------------------------------
@pytest.fixture
def server():
    with OpenAITestServer(answer, late_seconds=1.5) as srv:
        yield srv


def make_llm(server: OpenAITestServer, cache: Path):
    """The `openai` backend as conf/llm/openai.yaml builds it (reply_retries: 2), against the test server."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "llm" / "openai.yaml"), {
        "model": "fault-test-model", "base_url": server.base_url, "cache_path": str(cache), "api_key_env": None,
        "timeout": 0.5, "max_retries": 1, "concurrency": 4})
    return build_llm(cfg)


def request_of(shape: str, topic: str) -> tuple[list[dict], dict | None]:
    """A summary-like text request (its kind in errors: "text"), or the pipeline's structured acoustic-filter one."""
    if shape == "text":
        return [{"role": "user", "content": f"Summarise: {topic}"}], None
    return acoustic_filter_messages(topic), ACOUSTIC_FILTER_SCHEMA


def expected_reply(request: tuple[list[dict], dict | None]):
    return YES if request[1] else answer({"messages": request[0]})


def sqlite_values(path: Path) -> list:
    """Every value in a cache file, read with sqlite3 itself (not through the code under test)."""
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return [json.loads(v) for (v,) in db.execute("SELECT value FROM kv")]


# --- item 3: every fault is retried, or fails clearly, and nothing invalid is cached ----------------------------
@pytest.mark.parametrize("shape", ["text", "structured"])
@pytest.mark.parametrize("fault", FAULT_KINDS, ids=str)
def test_a_fault_is_retried_and_the_later_valid_reply_used(server, tmp_path, fault, shape, handled):
    server.fault_next(fault)
    request = request_of(shape, "muffled")
    expected = expected_reply(request)
    llm = make_llm(server, tmp_path / "llm.sqlite")
    assert llm.complete_many([request]) == [expected]
    assert server.count == 2  # the faulty attempt and one retry
    assert sqlite_values(tmp_path / "llm.sqlite") == [expected]
    handled()


@pytest.mark.parametrize("shape", ["text", "structured"])
@pytest.mark.parametrize("fault", FAULT_KINDS, ids=str)
def test_a_persistent_fault_fails_clearly_and_caches_nothing_invalid(server, tmp_path, fault, shape, handled):
    server.fault_when(lambda body: "poison" in json.dumps(body["messages"]), fault)
    good, poison = request_of(shape, "bright"), request_of(shape, "poison")
    llm = make_llm(server, tmp_path / "llm.sqlite")
    with pytest.raises(LLMError) as info:
        llm.complete_many([good, poison])
    message = str(info.value)
    kind = "text" if shape == "text" else "acoustic_adjective"  # no kind given: the schema's title
    assert "\n" not in message and server.base_url in message and f"{kind} request" in message
    shows_reply = {"late": "no reply within the 0.5s timeout", 429: "'test server: scripted HTTP 429'",
                   500: "'test server: scripted HTTP 500'", "malformed": """'{"id": "chatcmpl-test-""",
                   "empty": "last reply: ''", "garbage": repr(GARBAGE)[:20],
                   "drop": "connection failed (Server disconnected without sending a response.)"}[fault]
    assert shows_reply in message
    assert isinstance(info.value, LLMRequestError if fault in TRANSPORT else LLMReplyError)
    tries = [b for b in server.bodies() if "poison" in json.dumps(b["messages"])]
    assert len(tries) == (2 if fault in TRANSPORT else 3)  # max_retries=1 / reply_retries=2
    assert sqlite_values(tmp_path / "llm.sqlite") == [expected_reply(good)]  # the good reply, nothing else
    handled()


def test_an_invalid_reply_cached_by_an_older_version_is_asked_again(server, tmp_path, handled):
    llm = make_llm(server, tmp_path / "llm.sqlite")
    request = request_of("text", "hum")
    llm.cache.put(llm.request_key(ChatRequest(*request)), "")  # what the previous version cached for an empty reply
    assert llm.complete_many([request]) == [expected_reply(request)]
    assert server.count == 1 and sqlite_values(tmp_path / "llm.sqlite") == [expected_reply(request)]
    handled()


# --- the stages end to end ---------------------------------------------------------------------------------------
BASE = ["ckpt_path=null", "data.index.clips_per_class=3", "data.batch_size=10", "layers=[head]", "logger=none"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Activations of an untrained tiny CNN on a tiny synthetic set (FAST FAKE: not a trained model)."""
    root = tmp_path_factory.mktemp("faults_root")
    dissect(compose_cfg("dissect", root, BASE + ["stage=collect"]))
    return root


def run(root: Path, *overrides: str) -> dict:
    return dissect(compose_cfg("dissect", root, BASE + list(overrides)))


@pytest.mark.slow
def test_describe_stage_with_empty_replies_fails_clearly_then_recovers(root, handled):
    with OpenAITestServer(answer) as server:
        llm = ["llm=openai", f"llm.base_url={server.base_url}", "llm.model=empty-then-fixed",
               f"llm.cache_path={root}/empty.sqlite", "llm.max_retries=1"]
        run(root, "stage=caption", *llm)
        server.fault_when(lambda body: True, "empty")
        with pytest.raises(LLMReplyError) as info:
            run(root, "stage=describe", *llm)
        message = str(info.value)
        assert "\n" not in message and server.base_url in message and "no valid reply" in message
        assert "last reply: ''" in message
        assert sqlite_values(root / "empty.sqlite") == []  # no empty reply was cached
        server.clear_faults()
        result = run(root, "stage=describe", *llm)
    rows = [json.loads(line) for line in Path(result["descriptions"]).read_text().splitlines()]
    assert rows and all(r["summary_high"].startswith("The clips share a steady low hum.") for r in rows)
    assert all(v.startswith("The clips share a steady low hum.") for v in sqlite_values(root / "empty.sqlite"))
    handled()


def audio_of(body: dict) -> str:
    (part,) = [p for p in body["messages"][-1]["content"] if p["type"] == "input_audio"]
    return part["input_audio"]["data"]


@pytest.mark.slow
def test_captions_answered_before_a_failure_are_kept(root, handled):
    """Item 4: one clip of the chunk fails for good; a restart asks only for what was not answered."""
    poison: list[str] = []

    def first_clip_fails(body: dict) -> bool:
        poison[:1] = poison[:1] or [audio_of(body)]
        return audio_of(body) == poison[0]

    with OpenAITestServer(lambda body: f"A steady tone, {len(audio_of(body))} bytes of it.") as server:
        captioner = ["captioner=openai_audio", f"captioner.base_url={server.base_url}", "captioner.max_retries=0",
                     "captioner.concurrency=4", "captioner.model=fault-audio-model"]
        server.fault_when(first_clip_fails, 500)
        with pytest.raises(LLMRequestError) as info:
            run(root, "stage=caption", *captioner)
        first = [audio_of(b) for b in server.bodies()]
        answered = set(first) - set(poison)
        assert len(answered) >= 3
        server.clear_faults()
        result = run(root, "stage=caption", *captioner)
        again = [audio_of(b) for b in server.bodies()[len(first):]]
    assert poison[0] in again and not answered & set(again)  # no answered clip was requested again
    assert server.base_url in str(info.value) and "caption request failed" in str(info.value)
    lines = (Path(result["dissection_dir"]) / "captions.jsonl").read_text().splitlines()
    captions = [json.loads(line) for line in lines]
    assert captions and all(c["caption"].startswith("A steady tone") for c in captions)
    handled()


def test_keys_ignore_how_replies_are_fetched(root, tmp_path, handled):
    """Item 5: server, timeout, concurrency, retries and cache paths key nothing; sampling parameters do."""
    FakeStore = SimpleNamespace  # FAKE for speed: dissection_dir reads only the store's manifest key
    store = FakeStore(manifest={"key": "store-key"})

    def key_dir(*overrides: str) -> Path:
        return dissection_dir(compose_cfg("dissect", tmp_path, list(overrides)), store)

    llm = ["llm=openai", "llm.base_url=http://127.0.0.1:1/v1", "llm.timeout=60"]
    moved = ["llm=openai", "llm.base_url=http://10.0.0.1:8000/v1", "llm.timeout=5", "llm.concurrency=2",
             "llm.max_retries=1", f"llm.cache_path={tmp_path}/elsewhere.sqlite"]
    assert key_dir(*llm) == key_dir(*moved) != key_dir(*llm, "llm.temperature=0.7")
    audio = ["captioner=openai_audio", "captioner.timeout=30"]
    audio_moved = ["captioner=openai_audio", "captioner.timeout=99", "captioner.concurrency=1",
                   "captioner.base_url=http://10.0.0.1:8000/v1"]
    assert key_dir(*audio) == key_dir(*audio_moved) != key_dir(*audio, "captioner.temperature=0.7")

    def audio_key(*overrides: str) -> str:
        return caption_key(instantiate(compose_cfg("dissect", tmp_path, [*audio, *overrides]).captioner), "0" * 64)

    assert audio_key() == audio_key("captioner.timeout=99", "captioner.base_url=http://10.0.0.1:8000/v1")
    assert audio_key() != audio_key("captioner.temperature=0.7") != audio_key("captioner.max_tokens=17")
    handled()


@pytest.mark.slow
def test_a_finished_caption_stage_is_found_after_changing_the_timeout(root, handled):
    """Item 5 end to end: captions written with one timeout and server are read with another."""
    with OpenAITestServer(answer) as server:
        llm = ["llm=openai", "llm.model=timeout-test", f"llm.cache_path={root}/timeout.sqlite"]
        first = run(root, "stage=caption", *llm, "llm.base_url=http://127.0.0.1:9/v1", "llm.timeout=60")
        second = run(root, "stage=describe", *llm, f"llm.base_url={server.base_url}", "llm.timeout=7",
                     "llm.concurrency=3")
        assert server.count > 0
    assert second["dissection_dir"] == first["dissection_dir"] and Path(second["descriptions"]).is_file()
    handled()


# --- item 6: processes sharing a cache share its work; run directories are unique --------------------------------
SHARER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from and_lightning.describe.llm.openai_chat import OpenAIChatLLM

    base_url, cache_path, ready, go, n = sys.argv[1:]
    llm = OpenAIChatLLM(model="fault-test-model", base_url=base_url, cache_path=cache_path, api_key_env=None,
                        concurrency=4, timeout=30.0)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    prompts = [[{"role": "user", "content": f"clip set {i % int(n)}"}] for i in range(2 * int(n))]
    print(json.dumps(llm.complete_many(prompts)))
    """
)


def test_two_processes_on_one_cache_share_the_work(tmp_path, handled):
    n = 40
    env = {**os.environ, "PYTHONPATH": str(Path(and_lightning.__file__).parents[1])}
    with OpenAITestServer(answer, delay=0.05) as server:
        procs = [subprocess.Popen([sys.executable, "-c", SHARER, server.base_url, str(tmp_path / "llm.sqlite"),
                                   str(tmp_path / f"ready{i}"), str(tmp_path / "go"), str(n)],
                                  stdout=subprocess.PIPE, text=True, env=env) for i in range(2)]
        deadline = time.time() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
            time.sleep(0.01)
        (tmp_path / "go").touch()  # both start asking at the same moment
        outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        sent = [last_user_text(b) for b in server.bodies()]
    expected = [answer({"messages": [{"role": "user", "content": f"clip set {i % n}"}]}) for i in range(2 * n)]
    assert outputs == [expected, expected]
    assert len(sent) == len(set(sent)) == n  # every distinct request sent once, by one process or the other
    handled()


def test_run_directories_are_unique(handled):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        configs = [compose("dissect", return_hydra_config=True) for _ in range(5)]
        runs = {c.hydra.run.dir for c in configs}
        sweeps = {c.hydra.sweep.dir for c in configs}
    GlobalHydra.instance().clear()
    assert len(runs) == len(sweeps) == 5
    handled()
