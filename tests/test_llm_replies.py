"""What small chat models really write, read by the pipeline (issue 13, item 1): preambles, bullets and loops in
summaries; free text instead of the JSON asked for, parsed by fallbacks, or recorded as a skipped result with its
reason instead of crashing the run; constrained decoding that makes even a random model write the JSON asked for.
The texts quoted below are SmolLM2-135M-Instruct replies seen on this project's synthetic set.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from and_lightning.describe.closed_set import ICLPick, icl_request, parse_icl_reply
from and_lightning.describe.lexicon import normalise_word
from and_lightning.describe.llm.hf_chat import HFChatLLM
from and_lightning.describe.llm.schema import InvalidReply, valid_reply
from and_lightning.describe.open_concepts import ACOUSTIC_FILTER_SCHEMA, acoustic_filter_request, acoustic_verdict
from and_lightning.describe.sentences import clean_llm_summary
from and_lightning.dissection import dissect
from conftest import compose_cfg
from openai_server import OpenAITestServer, last_user_text

CONCEPTS = ["dog_bark", "siren", "pure_tone", "noise_burst"]


class ExactEncoder:
    """FAKE text encoder: one-hot per known concept text, so only exact names are near a concept."""

    def encode(self, texts):
        import torch

        keys = [f"This is an audio about {c.replace('_', ' ')}" for c in CONCEPTS]
        return torch.stack([torch.eye(len(keys) + 1)[keys.index(t) if t in keys else len(keys)] for t in texts])


@pytest.mark.parametrize("reply, cleaned, fixes", [
    ("The description of the audio clip is a loud high-pitched tone with a steady rhythm.",
     "A loud high-pitched tone with a steady rhythm.", ("preamble",)),
    ("The commonalities between these clips are:\n1. **Loudness:** all clips are loud\n- High pitch",
     "Loudness: all clips are loud. High pitch.", ("bullets", "preamble")),
    ("The description of the sound can be broken down into several key elements:\n1. Loud noise: a loud, bright noise",
     "Loud noise: a loud, bright noise.", ("bullets", "preamble")),
    ("The clips are loud tones. They are steady. They are steady.", "The clips are loud tones. They are steady.",
     ("loop",)),
    ("All clips are a mix of a pure tone, a pure tone, a pure tone, a pure tone, a pure tone.",
     "All clips are a mix of a pure tone.", ("loop",)),
    ("All the clips are loud tones. The clips have a hiss that", "All the clips are loud tones.", ("truncated",)),
    ("Most of them are quiet and steady.", "Most of them are quiet and steady.", ()),
])
def test_llm_summaries_are_cleaned_and_the_fix_is_named(reply, cleaned, fixes):
    assert clean_llm_summary(reply) == (cleaned, fixes)


def test_icl_replies_parse_json_then_answer_line_then_a_named_class_else_unusable():
    enc = ExactEncoder()
    assert parse_icl_reply({"concept": "siren", "reason": "r"}, CONCEPTS, enc) == ICLPick("siren", "json")
    assert parse_icl_reply("I think so.\nAnswer: pure tone", CONCEPTS, enc) == ICLPick("pure_tone", "text_answer")
    assert parse_icl_reply("The clips sound like a Dog bark, maybe a siren.", CONCEPTS, enc) == \
        ICLPick("dog_bark", "text_mention")
    pick = parse_icl_reply("The concept of pure tones is a topic of debate", ["siren", "dog"], enc)
    assert pick.concept is None and pick.path == "unusable" and "names no class name" in pick.reason
    request = icl_request("Most of them are loud.", CONCEPTS)
    assert request.text_fallback and request.schema["properties"]["concept"]["enum"] == CONCEPTS


def test_acoustic_replies_parse_json_then_yes_no_text_else_unusable():
    assert acoustic_verdict({"answer": "yes", "reason": "r"}) == (True, "json", "")
    assert acoustic_verdict('No, "green" does not describe sound.') == (False, "text_yes_no", "")
    decision, path, why = acoustic_verdict("The adjective can enhance the emotional impact of audio.")
    assert (decision, path) == (None, "unusable") and "no yes/no" in why


def test_valid_reply_finds_the_object_in_chatter_and_falls_back_to_text_only_when_asked():
    chatty = 'Sure! Here it is: {"answer": "no", "reason": "colour"} Hope this helps.'
    assert valid_reply(chatty, ACOUSTIC_FILTER_SCHEMA) == {"answer": "no", "reason": "colour"}
    with pytest.raises(InvalidReply):
        valid_reply("No, it does not.", ACOUSTIC_FILTER_SCHEMA)
    assert valid_reply("No, it does not.", ACOUSTIC_FILTER_SCHEMA, text_fallback=True) == "No, it does not."


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory):
    from tiny_llm import save_tiny_chat_model

    return str(save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat")))


def test_constrained_decoding_makes_a_random_model_answer_the_schema(tiny_chat_dir):
    """FAKE model (random weights): its free output is noise, constrained output is the JSON asked for."""
    schema = {"title": "pick", "type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    messages = [{"role": "user", "content": "is it loud?"}]
    llm = HFChatLLM(model=tiny_chat_dir, max_new_tokens=24, batch_size=2)
    replies = llm.complete_many([(messages, schema), [{"role": "user", "content": "describe it"}]])
    assert replies[0] in ({"answer": "yes"}, {"answer": "no"}) and isinstance(replies[1], str)


def free_text_answer(body: dict) -> str:
    """FAKE LLM writing what small models write: never JSON, sometimes nothing usable."""
    text = last_user_text(body)
    word = re.search(r"adjective '([^']+)'", text)
    if word:  # the acoustic filter: a yes/no in prose, or nothing usable
        return "Yes, it can describe a sound." if len(word.group(1)) % 2 == 0 else "It is a nice word."
    if body.get("response_format"):  # the ICL pick
        return "The clips could be anything really."
    first = text.splitlines()[0].rstrip(".")
    return f"The description of the audio clips is: {first}.\n- They are tones.\n- They are tones."


@pytest.mark.slow
def test_unusable_replies_are_recorded_as_skipped_not_a_crash(trained_cnn, tmp_path):
    ckpt, root, base = trained_cnn
    with OpenAITestServer(free_text_answer) as server:
        result = dissect(compose_cfg("dissect", root, base + [
            f"ckpt_path={ckpt}", "layers=[head]", "logger=none", "llm=openai", f"llm.base_url={server.base_url}",
            "llm.model=fake-small-model", f"llm.cache_path={tmp_path}/llm.sqlite", "llm.reply_retries=0",
            "describe.closed_set.method=icl", "describe.open_concepts.acoustic_filter=llm",
            "evaluate.tasks=[last_layer]", "evaluate.last_layer.methods=[icl]"]))
    rows = [json.loads(x) for x in Path(result["descriptions"]).read_text().splitlines()]
    assert rows and all(r["closed_concepts"] == [] and "names no class name" in r["llm_parse"]["skipped"]["icl"]
                        for r in rows)
    assert not any(r["summary_high"].startswith("The description") for r in rows)
    assert all(r["summary_high"].endswith(" They are tones.") for r in rows)
    stats = json.loads((Path(result["dissection_dir"]) / "llm_stats.json").read_text())
    assert stats["parse_paths"]["icl"] == {"unusable": len(rows)}
    assert stats["parse_paths"]["summary"] == {"preamble": 2 * len(rows), "bullets": 2 * len(rows),
                                               "loop": 2 * len(rows)}
    assert set(stats["parse_paths"]["acoustic_filter"]) == {"text_yes_no", "unusable"}
    for r in rows:
        for word, path in r["llm_parse"]["acoustic_filter"].items():
            said = word in {normalise_word(a) for a in r["adjectives"]}
            assert said == (path == "text_yes_no") and (f"acoustic_filter/{word}" in r["llm_parse"]["skipped"]) == (
                path == "unusable")
    table = Path(result["evaluate"]["files"]["last_layer_md"]).read_text()
    assert re.search(r"icl .*skipped: no usable LLM reply \(the reply names no class name", table)
