"""Chat-LLM backends: the `openai` backend through the real openai client against a local test server
(retries, timeouts, structured replies, cache, de-duplication, key hygiene), the `hf` backend on a tiny random
Llama, the configs (no LLM: no llm config), and reply validation. Every fault kind: tests/test_faults_llm.py."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from and_lightning.describe.llm.base import ChatRequest, LLMError, LLMReplyError, LLMRequestError
from and_lightning.describe.llm.factory import build_llm
from and_lightning.describe.llm.hf_chat import HFChatLLM
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM
from and_lightning.describe.llm.schema import InvalidReply, response_format, valid_reply
from conftest import CONF, compose_cfg
from openai_server import OpenAITestServer, last_user_text

SUMMARY_SCHEMA = {
    "title": "neuron_summary",
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "concepts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["summary", "concepts"],
    "additionalProperties": False,
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def summary_answer(body: dict) -> str:
    return json.dumps({"summary": f"about {last_user_text(body)}", "concepts": ["water"]})


@pytest.fixture
def server():
    with OpenAITestServer() as srv:
        yield srv


def make_llm(server: OpenAITestServer, tmp_path: Path, **kw) -> OpenAIChatLLM:
    cfg = dict(
        model="test-model", base_url=server.base_url, cache_path=str(tmp_path / "cache" / "llm.sqlite"),
        api_key_env="AND_TEST_API_KEY", max_retries=3, reply_retries=3, reply_backoff=0.01, timeout=5.0,
    )
    cfg.update(kw)
    return OpenAIChatLLM(**cfg)


# --- openai backend through the real client ------------------------------------------------------------------
def test_happy_path_text_and_structured_requests(server, tmp_path):
    server.answer = lambda b: summary_answer(b) if "response_format" in b else f"echo: {last_user_text(b)}"
    llm = make_llm(server, tmp_path, temperature=0.7, seed=11, max_tokens=64)
    assert llm.complete(user("hello")) == "echo: hello"
    out = llm.complete_many([user("a"), (user("b"), SUMMARY_SCHEMA), ChatRequest(user("c"))])
    assert out == ["echo: a", {"summary": "about b", "concepts": ["water"]}, "echo: c"]
    bodies = {last_user_text(b): b for b in server.bodies()}
    assert bodies["hello"]["model"] == "test-model"
    assert (bodies["hello"]["temperature"], bodies["hello"]["seed"], bodies["hello"]["max_tokens"]) == (0.7, 11, 64)
    assert "response_format" not in bodies["a"]
    assert bodies["b"]["response_format"] == response_format(SUMMARY_SCHEMA, strict=True)
    assert bodies["b"]["response_format"]["json_schema"]["schema"] == SUMMARY_SCHEMA
    assert llm.stats.requests_sent == 4 and llm.stats.retries == 0 and llm.stats.completed == 4


def test_429_then_success_is_retried_by_the_openai_client(server, tmp_path):
    server.fault_next(429, 2)
    llm = make_llm(server, tmp_path)
    assert llm.complete(user("x")) == "echo: x"
    assert server.count == 3
    assert (llm.stats.requests_sent, llm.stats.retries, llm.stats.completed) == (3, 2, 1)
    assert [r.headers.get("x-stainless-retry-count") for r in server.requests] == ["0", "1", "2"]  # the SDK's


def test_500_until_retries_run_out_raises_clear_error_and_keeps_finished_results(server, tmp_path):
    server.fault_when(lambda b: last_user_text(b) == "poison", 500)
    good = [user(f"good {i}") for i in range(5)]
    llm = make_llm(server, tmp_path, max_retries=2, concurrency=2)
    with pytest.raises(LLMRequestError) as info:
        llm.complete_many(good + [user("poison")])
    err = info.value
    msg = str(err)
    assert "openai backend" in msg and "test-model" in msg and server.base_url in msg
    assert "HTTP 500" in msg and "failed after 3 attempts" in msg and "kept in the cache" in msg
    assert (err.backend, err.model, err.status, err.attempts) == ("openai", "test-model", 500, 3)
    assert server.count == 5 + 3
    again = make_llm(server, tmp_path)
    assert again.complete_many(good) == [f"echo: good {i}" for i in range(5)]
    assert server.count == 8 and again.stats.cache_hits == 5 and again.stats.requests_sent == 0


def test_client_errors_are_not_retried(server, tmp_path):
    server.fault_next(400)
    with pytest.raises(LLMRequestError, match=r"not retried.*HTTP 400") as info:
        make_llm(server, tmp_path).complete(user("x"))
    assert info.value.status == 400 and server.count == 1


def test_timeout_is_retried_then_gives_up(server, tmp_path):
    server.fault_next("late")
    llm = make_llm(server, tmp_path, timeout=0.3, max_retries=1)
    assert llm.complete(user("slow once")) == "echo: slow once"
    assert llm.stats.retries == 1 and server.count == 2

    server.fault_next("late", 2)
    with pytest.raises(LLMRequestError, match=r"no reply within the 0.3s timeout") as info:
        llm.complete(user("slow always"))
    assert info.value.status == "timeout" and server.count == 4


def test_malformed_structured_reply_is_retried_then_clear_error(server, tmp_path):
    ok = '{"summary": "ok", "concepts": []}'
    replies = itertools.chain(['{"summary": "missing concepts"}'], itertools.repeat(ok))
    server.answer = lambda b: next(replies)
    llm = make_llm(server, tmp_path)
    assert llm.complete(user("s"), schema=SUMMARY_SCHEMA) == {"summary": "ok", "concepts": []}
    assert llm.stats.retries == 1

    server.answer = lambda b: "Sure! Here is the summary: it is water."
    with pytest.raises(LLMReplyError, match=r"neuron_summary request got no valid reply.*Invalid JSON") as info:
        llm.complete(user("t"), schema=SUMMARY_SCHEMA)
    assert info.value.status == "invalid_reply" and info.value.attempts == 4
    assert server.count == 2 + 4
    assert llm.cache is not None and len(llm.cache) == 1  # the invalid reply was not cached


def test_second_identical_run_sends_nothing(server, tmp_path):
    server.answer = summary_answer
    requests = [(user(f"captions {i}"), SUMMARY_SCHEMA) for i in range(12)]
    first = make_llm(server, tmp_path).complete_many(requests)
    assert server.count == 12
    rerun = make_llm(server, tmp_path)
    assert rerun.complete_many(requests) == first
    assert server.count == 12
    assert (rerun.stats.requests_sent, rerun.stats.cache_hits) == (0, 12)
    changed = make_llm(server, tmp_path, temperature=0.5)  # params are part of the key
    changed.complete_many(requests[:2])
    assert server.count == 14


def test_duplicates_are_sent_once(server, tmp_path):
    prompts = ["a", "b", "a", "c", "b", "a", "d", "d", "a", "c"]
    llm = make_llm(server, tmp_path, cache_path=None)
    out = llm.complete_many([user(p) for p in prompts])
    assert out == [f"echo: {p}" for p in prompts]
    assert server.count == 4
    assert sorted(last_user_text(b) for b in server.bodies()) == ["a", "b", "c", "d"]
    assert (llm.stats.requests_sent, llm.stats.deduplicated) == (4, 6)


def test_concurrency_is_bounded_by_config(server, tmp_path):
    server.delay = 0.1
    make_llm(server, tmp_path, concurrency=3).complete_many([user(str(i)) for i in range(9)])
    assert server.max_in_flight == 3


def test_api_key_comes_from_env_and_is_never_written(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-DO-NOT-LEAK-4f1c9a"
    monkeypatch.setenv("AND_TEST_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    server.answer = summary_answer
    llm = make_llm(server, tmp_path)
    llm.complete_many([(user(f"q{i}"), SUMMARY_SCHEMA) for i in range(3)] + [user("plain")])
    server.fault_next(503, 4)
    with pytest.raises(LLMRequestError) as info:
        llm.complete(user("fails"))
    assert all(r.headers.get("authorization") == f"Bearer {secret}" for r in server.requests)
    assert secret not in str(info.value) and secret not in repr(llm) and secret not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("llm.sqlite") for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_missing_key_for_the_openai_api_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("AND_TEST_API_KEY", raising=False)
    llm = OpenAIChatLLM(model="gpt-4o-mini", api_key_env="AND_TEST_API_KEY", cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(LLMRequestError, match=r"set the environment variable AND_TEST_API_KEY"):
        llm.complete(user("x"))


def test_sync_api_works_inside_a_running_event_loop(server, tmp_path):
    llm = make_llm(server, tmp_path)

    async def main():
        direct = await llm.acomplete_many([user("async")])
        return direct + [llm.complete(user("sync-in-loop"))]

    assert asyncio.run(main()) == ["echo: async", "echo: sync-in-loop"]


# --- configs --------------------------------------------------------------------------------------------------
def test_openai_config_builds_and_runs(server, tmp_path):
    cfg = OmegaConf.load(CONF / "llm" / "openai.yaml")
    cfg.base_url, cfg.cache_path, cfg.api_key_env = server.base_url, str(tmp_path / "llm.sqlite"), "AND_TEST_API_KEY"
    llm = build_llm(cfg)
    assert isinstance(llm, OpenAIChatLLM) and llm.name == "openai" and llm.concurrency == 16
    assert llm.complete(user("cfg")) == "echo: cfg"


def test_no_llm_is_no_llm_config(tmp_path):
    """The default and `llm=none` compose no llm config at all (the pipeline then runs rule-based); `llm=openai`
    still selects one."""
    assert compose_cfg("dissect", tmp_path).get("llm") is None
    assert compose_cfg("dissect", tmp_path, ["llm=none"]).get("llm") is None
    assert compose_cfg("dissect", tmp_path, ["llm=openai"]).llm.name == "openai"


def test_build_llm_rejects_configs_without_target():
    with pytest.raises(ValueError, match="_target_"):
        build_llm({"name": "openai", "model": "m"})


# --- hf backend on a tiny random Llama ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory):
    from tiny_llm import save_tiny_chat_model

    return str(save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat")))


def test_hf_backend_batches_caches_and_matches_single_generation(tiny_chat_dir, tmp_path):
    cfg = OmegaConf.load(CONF / "llm" / "hf.yaml")
    cfg.model, cfg.cache_path, cfg.max_new_tokens, cfg.batch_size = tiny_chat_dir, str(tmp_path / "hf.sqlite"), 6, 3
    llm = build_llm(cfg)
    assert isinstance(llm, HFChatLLM)
    prompts = [user("dog " * n) for n in range(1, 6)]  # different lengths: left padding matters
    batched = llm.complete_many(prompts)
    assert len(batched) == 5 and all(isinstance(t, str) for t in batched)
    single = HFChatLLM(model=tiny_chat_dir, max_new_tokens=6, batch_size=1)
    assert [single.complete(p) for p in prompts] == batched
    rerun = HFChatLLM(model=tiny_chat_dir, max_new_tokens=6, batch_size=3, cache_path=str(tmp_path / "hf.sqlite"))
    assert rerun.complete_many(prompts) == batched
    assert rerun.stats.requests_sent == 0 and rerun.stats.cache_hits == 5 and rerun._model is None


def test_hf_backend_structured_request_with_invalid_reply_is_clear_error(tiny_chat_dir, tmp_path):
    llm = HFChatLLM(model=tiny_chat_dir, max_new_tokens=4, temperature=0.8, reply_retries=1)
    with pytest.raises(LLMReplyError, match=r"hf backend.*no valid reply \(after 2 attempts\).*neuron_summary"):
        llm.complete(user("summarize"), schema=SUMMARY_SCHEMA)
    assert llm.stats.requests_sent == 2


def test_hf_backend_missing_model_is_clear_error(tmp_path):
    with pytest.raises(LLMError, match=r"hf backend.*cannot load.*no_such_model"):
        HFChatLLM(model=str(tmp_path / "no_such_model")).complete(user("x"))


# --- reply validation ------------------------------------------------------------------------------------------
def test_valid_reply_checks_structured_replies_against_the_schema():
    assert valid_reply('{"summary": "s", "concepts": ["a"]}', SUMMARY_SCHEMA) == {"summary": "s", "concepts": ["a"]}
    assert valid_reply({"summary": "s", "concepts": []}, SUMMARY_SCHEMA) == {"summary": "s", "concepts": []}
    assert valid_reply('```json\n{"summary": "s", "concepts": []}\n```', SUMMARY_SCHEMA)["summary"] == "s"
    with pytest.raises(InvalidReply) as info:
        valid_reply('{"summary": 3, "concepts": ["a", 1], "x": 0}', SUMMARY_SCHEMA)
    assert info.value.reason == ("concepts.1: Input should be a valid string; summary: Input should be a valid "
                                 "string; x: Extra inputs are not permitted")
    with pytest.raises(InvalidReply, match="concepts: Field required"):
        valid_reply('{"summary": "s"}', SUMMARY_SCHEMA)
    with pytest.raises(InvalidReply, match="Invalid JSON"):
        valid_reply("{summary: s}", SUMMARY_SCHEMA)
    bounded = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 10},
                                                 "a": {"type": "string", "enum": ["yes", "no"]}}, "required": ["n"]}
    assert valid_reply('{"n": 10, "a": "no"}', bounded) == {"n": 10, "a": "no"}
    for bad in ('{"n": 11}', '{"n": true}', '{"n": 1.5}', '{"n": 1, "a": "maybe"}'):
        with pytest.raises(InvalidReply):
            valid_reply(bad, bounded)


def test_valid_reply_wants_readable_text_of_sane_length():
    assert valid_reply("  A dog barks.\n", None) == "A dog barks."
    for bad, why in [("", "at least 1 character"), (" \n ", "at least 1 character"), ("!!! 123 ???", "no words"),
                     ("ok \x00\x07", "control characters"), ("w" * 20_001, "at most 20000"), (None, "valid string")]:
        with pytest.raises(InvalidReply, match=why):
            valid_reply(bad, None)
