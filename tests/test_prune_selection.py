"""Neuron selection strategies on hand-made neuron records: by index, word-level matching, the top-3 identity."""
from __future__ import annotations

import json
import random

import pytest

from and_lightning.prune.selection import (
    attribute_count, check_against_model, load_records, select_units, target_vocabulary, words_match,
)

CLASSES = ["rain", "train", "water_drops", "mouse_click", "church_bells"]


def record(layer: str, unit: int, **fields) -> dict:
    base = {"layer": layer, "unit": unit, "closed_method": "db/cos_cubed", "closed_concepts": [], "open_concepts": [],
            "nouns": [], "adjectives": [], "verbs": [], "top_clips": [], "description": ""}
    return base | fields


def ranked(*concepts: str) -> list[dict]:
    return [{"concept": c, "score": 1.0 / (i + 1)} for i, c in enumerate(concepts)]


@pytest.mark.parametrize("a,b,expected", [
    ("rain", "train", False), ("train", "rain", False), ("use", "mouse_click", False), ("his", "hissing", False),
    ("drops", "water_drops", True), ("drop", "water_drops", True), ("water", "water_drops", True),
    ("chirp", "chirping", True), ("chirps", "chirped", True), ("rising", "rise", True),
    ("church bell", "church_bells", True), ("bell church", "church_bells", False), ("flies", "fly", True),
    ("glass", "glasses", True), ("hum", "humming", True), ("clap", "claps", True), ("rain", "rain", True),
    ("low_rumble", "are low rumbles", True),
    # a dictionary lemmatizer, not suffix stripping: irregular forms match, look-alikes do not
    ("mouse_click", "mice", True), ("brushing_teeth", "tooth", True), ("ring", "rang", True),
    ("new", "news", False), ("even", "evening", False), ("morn", "morning", False),
])
def test_words_match_whole_words_and_simple_lemmas_never_substrings(a, b, expected):
    assert words_match(a, b) is expected


def synthetic_dissection(n_per_layer=(20, 30, 50), seed=0) -> list[dict]:
    """Hidden layers with a random top-5 closed-concept ranking each, plus a head of one unit per class."""
    rng = random.Random(seed)
    records = []
    for li, n in enumerate(n_per_layer):
        for u in range(n):
            records.append(record(f"block{li}", u, closed_concepts=ranked(*rng.sample(CLASSES, 5))))
    for u, c in enumerate(CLASSES):
        records.append(record("head", u, closed_concepts=ranked(*([c] + [x for x in CLASSES if x != c]))))
    return records


def test_class_top3_selects_3N_over_C_on_average_and_never_the_head():
    records = synthetic_dissection()
    n_hidden = 100
    counts = []
    for target in CLASSES:
        sel = select_units(records, {"name": "class", "target": target}, head="head")
        assert all(layer != "head" for layer, _ in sel.units)
        expected = [(r["layer"], r["unit"]) for r in records if r["layer"] != "head"
                    and target in [c["concept"] for c in r["closed_concepts"][:3]]]
        assert sel.units == expected  # exactly those units, by index, in layer/unit order
        counts.append(len(sel))
    assert sum(counts) == 3 * n_hidden and sum(counts) / len(CLASSES) == 3 * n_hidden / len(CLASSES)
    with_head = select_units(records, {"name": "class", "target": "rain", "include_head": True}, head="head")
    assert ("head", 0) in with_head.units and len(with_head) == counts[0] + 5  # every head unit has rain in its top 3


def test_class_strategy_checks_the_closed_method_and_the_stored_ranking():
    records = synthetic_dissection()
    with pytest.raises(ValueError, match="prune.closed_method=tab but d.jsonl was described with 'db/cos_cubed'"):
        select_units(records, {"name": "class", "target": "rain", "closed_method": "tab"}, "head", "d.jsonl")
    assert len(select_units(records, {"name": "class", "target": "rain", "closed_method": "db"}, "head")) > 0
    with pytest.raises(ValueError, match="stores 2 closed concepts, fewer than prune.top=3"):
        select_units([record("l", 0, closed_concepts=ranked("rain", "train"))], {"name": "class", "target": "rain"}, "head")


def test_concept_selects_nouns_by_whole_word_and_caps_by_match_count():
    records = [
        record("l1", 0, nouns=["train"]),                                # substring of nothing we ask
        record("l1", 1, nouns=["rain", "raindrops"]),
        record("l1", 2, nouns=["drops", "drop"]),
        record("l2", 0, open_concepts=["rains"], nouns=["water"]),       # rain only among its adjectives
        record("l2", 1, adjectives=["rain"]),                              # not a searched field
        record("head", 0, nouns=["rain"]),
    ]
    sel = select_units(records, {"name": "concept", "words": ["rain"], "target": "rain"}, "head")
    assert sel.units == [("l1", 1)] and sel.prunable == 5  # the paper's OCP: nouns only
    assert sel.reasons[("l1", 1)] == "matches rain" and sel.note == "words rain in nouns: 1 units"
    node = {"name": "concept", "words": ["rain"], "target": "rain", "fields": ["open_concepts", "nouns"]}
    assert select_units(records, node, "head").units == [("l1", 1), ("l2", 0)]  # adjectives too, when asked
    # null words: the target class name's words (the paper's OCP, word-level): water_drops -> water, drops
    sel = select_units(records, {"name": "concept", "target": "water_drops", "words": None}, "head")
    assert sel.units == [("l1", 2), ("l2", 0)]
    # a mapping class -> words; a cap keeps the units with the most matched terms
    node = {"name": "concept", "target": "water_drops", "words": {"water_drops": ["drop", "water"]}, "max_units": 1}
    assert select_units(records, node, "head").units == [("l1", 2)]  # drops + drop = 2 terms vs water = 1


def test_default_concept_config_searches_nouns_only():
    from omegaconf import OmegaConf

    from conftest import CONF
    assert OmegaConf.load(CONF / "prune" / "concept.yaml").fields == ["nouns"]
    assert OmegaConf.load(CONF / "prune" / "random.yaml").fields == ["nouns"]


def test_empty_selection_says_why_and_falls_back_on_the_words_of_the_class_top_units():
    records = [record("l1", u, nouns=["hum"], top_clips=["t1", "t2"]) for u in range(3)]
    records.append(record("l1", 3, nouns=["ringing"], top_clips=["o1", "o2"]))
    records.append(record("l1", 4, nouns=["hum"], top_clips=["o1", "o2"]))
    label_of = {"t1": "train", "t2": "train", "o1": "rain", "o2": "rain"}
    with pytest.raises(ValueError, match="selected no units from d.jsonl for train: no unit's nouns name train; "
                                         "words its top units use: hum \\(prune.fallback_words=N uses them\\)"):
        select_units(records, {"name": "concept", "target": "train"}, "head", "d.jsonl", label_of)
    sel = select_units(records, {"name": "concept", "target": "train", "allow_empty": True}, "head")
    assert len(sel) == 0 and sel.by_layer() == {} and sel.note == "no unit's nouns name train"
    assert target_vocabulary(records, "train", label_of) == [("hum", 3, 1)]
    # with a fallback: the words most specific to the class's top units (every unit using them is pruned)
    node = {"name": "concept", "target": "train", "fallback_words": 2}
    sel = select_units(records, node, "head", "d.jsonl", label_of)
    assert sel.units == [("l1", 0), ("l1", 1), ("l1", 2), ("l1", 4)] and sel.strategy == "concept(fallback 2)"
    assert sel.note == "no unit's nouns name train; used the words its top units use: hum: 4 units"
    # random like it: the same count, and the same note
    rand = select_units(records, node | {"name": "random", "like": "concept"}, "head", "d.jsonl", label_of)
    assert len(rand) == 4 and rand.note.startswith("as many as concept(fallback 2): no unit's nouns name train")
    # no class-specific words either (no unit's top clips are mostly bells): the note says so
    sel = select_units(records, node | {"target": "bell", "allow_empty": True}, "head", "d.jsonl", label_of)
    assert len(sel) == 0 and sel.note == ("no unit's nouns name bell, and the units whose top clips are mostly "
                                          "bell use no word more often than the other units")


def test_adjective_strategy_matches_exact_normalised_adjectives():
    records = [record("l", 0, adjectives=["high-pitched"]), record("l", 1, adjectives=["High pitched", "loud"]),
               record("l", 2, adjectives=["high"]), record("l", 3, adjectives=["quiet"])]
    assert select_units(records, {"name": "adjective", "adjectives": ["high pitched"]}, "head").units == [("l", 0), ("l", 1)]
    assert select_units(records, {"name": "adjective", "adjectives": "high"}, "head").units == [("l", 2)]


def test_attribute_count_ranks_by_index_not_list_position():
    basic = ["loud", "clear"]
    # the richest units sit at HIGH indices: the MILAN bug (masking rows 0..k-1) would pick the wrong ones
    records = [record("l", u, adjectives=["quiet"]) for u in range(8)]
    records += [record("l", 8, adjectives=["loud", "clear", "dark"]), record("l", 9, adjectives=["loud"])]
    node = {"name": "attribute_count", "attribute": "basic_adj", "basic_adjectives": basic, "max_units": 2, "seed": 1}
    assert select_units(records, node, "head").units == [("l", 8), ("l", 9)]
    assert attribute_count(records[8], "basic_adj", basic) == 2 and attribute_count(records[8], "high_adj", basic) == 1
    node = node | {"attribute": "high_adj", "max_fraction": 0.5, "max_units": None}
    sel = select_units(records, node, "head")
    assert len(sel) == 5 and sel.fraction == 0.5
    assert select_units(records, node, "head").units == sel.units  # same seed, same ties
    with pytest.raises(ValueError, match="prune=attribute_count needs a budget"):
        select_units(records, {"name": "attribute_count", "attribute": "nouns"}, "head")
    with pytest.raises(ValueError, match="prune.attribute=colour"):
        select_units(records, {"name": "attribute_count", "attribute": "colour", "max_units": 1}, "head")


def test_random_matches_the_like_strategy_count_per_layer_and_is_seeded():
    records = [record(f"l{li}", u, nouns=["hum"] if (u + li) % 3 == 0 else ["tone"]) for li in range(3) for u in range(30)]
    node = {"name": "random", "like": "concept", "words": ["hum"], "target": "x", "seed": 7}
    concept = select_units(records, node | {"name": "concept"}, "head")
    sel = select_units(records, node, "head")
    assert {k: len(v) for k, v in sel.by_layer().items()} == {k: len(v) for k, v in concept.by_layer().items()}
    assert sel.units != concept.units and sel.strategy == "random(like concept)"
    assert select_units(records, node, "head").units == sel.units
    assert select_units(records, node | {"seed": 8}, "head").units != sel.units
    assert len(select_units(records, node | {"like": None, "max_units": 4}, "head")) == 4
    total = select_units(records, node | {"per_layer": False}, "head")
    assert len(total) == len(concept)


def test_records_are_checked_against_the_model_and_loaded_from_a_folder(tmp_path):
    widths = {"l1": 2, "head": 3}
    check_against_model([record("l1", 1), record("head", 2)], widths, "d")
    with pytest.raises(ValueError, match="d: l1#2 is out of range: the layer has 2 units"):
        check_against_model([record("l1", 2)], widths, "d")
    with pytest.raises(ValueError, match="layer 'conv9' is not a layer of the checkpoint's model"):
        check_against_model([record("conv9", 0)], widths, "d")
    (tmp_path / "descriptions.jsonl").write_text("\n".join(json.dumps(record("l1", u)) for u in range(2)) + "\n")
    assert [r["unit"] for r in load_records(tmp_path)] == [0, 1]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"layer": "l1", "unit": "0"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: record 0 lacks 'layer' or an integer 'unit'"):
        load_records(tmp_path / "bad.jsonl")
