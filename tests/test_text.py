"""Offline text utilities, summaries, Module B calibration (fake encoder) and Module C open concepts."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from and_lightning.describe.calibration import calibrate, calibrate_many, cross_removal_masks, is_contrast
from and_lightning.describe.lexicon import ALL_ACOUSTIC_ADJECTIVES, is_acoustic
from and_lightning.describe.llm.prompts import summary_messages
from and_lightning.describe.open_concepts import (
    acoustic_filter_messages,
    apply_acoustic_filter,
    extract_open_concepts,
    is_negated,
    parse_acoustic_answer,
    rule_based_adjectives,
    tag_text,
    words_needing_decision,
)
from and_lightning.describe.rule_summary import extractive_summary
from and_lightning.describe.sentences import (
    clean_repeated_caption,
    is_junk_sentence,
    split_sentences,
    summary_sentences,
    word_tokenize,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "concepts"


# --- sentences -----------------------------------------------------------------------------------------
def test_word_tokenize_keeps_hyphens_and_decimals_and_splits_clitics():
    toks = word_tokenize("It isn't a high-pitched 3.5 kHz whine; the dog's bark can't stop (737-800).")
    assert toks == ["It", "is", "n't", "a", "high-pitched", "3.5", "kHz", "whine", ";", "the", "dog", "'s", "bark",
                    "can", "n't", "stop", "(", "737-800", ")", "."]


def test_split_sentences_abbreviations_lines_and_list_markers():
    text = ("Sure! Here are the commonalities:\n\n1. The clips are loud, e.g. Dr. Smith's dog. It barks.\n"
            "2. All have a 3.5 kHz tone.\n- a bullet without a capital")
    assert split_sentences(text) == [
        "Sure!", "Here are the commonalities:", "The clips are loud, e.g. Dr. Smith's dog.", "It barks.",
        "All have a 3.5 kHz tone.", "a bullet without a capital",
    ]


def test_junk_filter_matches_whole_words_only():
    assert is_junk_sentence("Sure, here is the summary of the clips.")
    assert is_junk_sentence("Let me know if you need more.")
    assert not is_junk_sentence("The pressure of the air is measured.")  # "sure" inside words is not junk
    assert is_junk_sentence("The pressure of the air is measured.", faithful=True)  # the original's substring test


def test_summary_sentences_drop_short_and_junk():
    summary = ("Sure! Here are the commonalities between the clips. All of the clips contain a dog barking. "
               "They are loud. The barking is sharp and repetitive.")
    # "They are loud." has 4 tokens (<= 5); the first two are junk
    assert summary_sentences(summary) == ["All of the clips contain a dog barking.", "The barking is sharp and repetitive."]


def test_clean_repeated_caption():
    loop = "a dog barks and a cat meows loudly " * 2
    assert clean_repeated_caption(loop.strip() + ". And more.") == loop.strip()  # cut before the first "."
    assert clean_repeated_caption("First line.\n" + loop) == "First line."  # cut to the first line
    assert clean_repeated_caption("A dog barks. A dog barks.") == "A dog barks. A dog barks."  # 3-gram only


# --- lexicon ---------------------------------------------------------------------------------------------
def test_is_acoustic_lexicon_and_forms():
    for w in ["loud", "quiet", "soft", "high-pitched", "low-pitched", "deep", "shrill", "bright", "dark", "muffled",
              "distorted", "noisy", "clean", "clear", "harsh", "smooth", "rhythmic", "repetitive", "pulsing", "steady",
              "continuous", "intermittent", "reverberant", "echoing", "dry", "buzzy", "tonal", "metallic", "sharp",
              "rising", "falling"]:
        assert is_acoustic(w), w
    for w in ["louder", "quietest", "noisier", "gentler", "low-frequency", "metallic-sounding", "poor-quality",
              " 'High Pitched' ", "loud-repetitive"]:
        assert is_acoustic(w), w
    for w in ["kitchen", "electric", "red", "domestic", "hungry", "wooden-table", "", "well-defined"]:
        assert not is_acoustic(w), w


def test_acoustic_attribute_concepts_are_all_acoustic():
    concepts = yaml.safe_load((CONF / "acoustic_attributes.yaml").read_text())["concepts"]
    assert {"low-pitched", "high-pitched", "loud", "quiet", "pulsed", "steady", "noisy", "clean", "reverberant",
            "dry"} <= set(concepts)
    assert all(is_acoustic(c) for c in concepts)
    assert "high-pitched" in ALL_ACOUSTIC_ADJECTIVES


# --- Module C ------------------------------------------------------------------------------------------
def test_negation_drops_the_adjective_including_at_the_start():
    assert "loud" not in rule_based_adjectives(tag_text("The sound is not loud."))
    assert "loud" in rule_based_adjectives(tag_text("The sound is loud."))
    # position 1: the original's tokens[i-4:i] slice was empty here and kept "loud"
    assert "loud" not in rule_based_adjectives(tag_text("Not loud at all."))
    assert "loud" not in rule_based_adjectives(tag_text("It isn't loud."))
    assert "loud" not in rule_based_adjectives(tag_text("There is no loud noise."))


def test_negation_window_is_four_tokens_and_stops_at_clause_breaks():
    toks = ["not", "a", "b", "c", "d", "loud"]
    assert not is_negated(toks, 5)  # "not" is 5 tokens back
    assert is_negated(["not", "b", "c", "d", "loud"], 4)  # 4 tokens back: inside the window
    adjs = rule_based_adjectives(tag_text("It is not quiet. Bright tones ring out; it is never harsh but clear."))
    assert "quiet" not in adjs and "harsh" not in adjs
    assert "bright" in adjs and "clear" in adjs


def test_hyphenated_adjectives_stoplist_and_dedup():
    adjs = rule_based_adjectives(tag_text(
        "A high-pitched, low-quality whine recorded in a kitchen with various different sounds. It is loud and loud."
    ))
    assert "high-pitched" in adjs and "low-quality" in adjs
    assert not {"recorded", "various", "different", "kitchen"} & set(adjs)
    assert adjs.count("loud") == 1


def test_extract_open_concepts_parts_of_speech_and_lexicon_filter():
    oc = extract_open_concepts(["The muffled, electric hum of a fridge is loud.", "A dog barks in the distance."])
    assert oc.adjectives == ["muffled", "electric", "loud"]
    assert oc.acoustic_adjectives == ["muffled", "loud"]
    assert {"hum", "fridge", "dog", "distance"} <= set(oc.nouns) and "the" not in oc.nouns
    assert "barks" in oc.verbs and "is" not in oc.verbs  # stopword verbs dropped
    assert {"of", "in"} <= set(oc.prepositions)
    assert oc.n_tokens == 18
    deferred = extract_open_concepts("A loud dog.", acoustic=None)
    assert deferred.adjectives == ["loud"] and deferred.acoustic_adjectives == []


def test_llm_acoustic_filter_helpers():
    lists = [["loud", "electric"], ["Loud", "muffled"], ["electric"]]
    assert words_needing_decision(lists) == ["electric", "loud", "muffled"]  # once per unique word
    assert words_needing_decision(lists, known={"loud": True}) == ["electric", "muffled"]
    msgs = acoustic_filter_messages("muffled")
    assert "'muffled'" in msgs[-1]["content"]
    assert parse_acoustic_answer({"answer": "yes", "reason": "r"}) is True
    assert parse_acoustic_answer('{"answer": "no", "reason": "r"}') is False
    assert parse_acoustic_answer("Yes, it can describe timbre.") is True
    assert parse_acoustic_answer("Their eyes... no, it cannot.") is False  # "eyes" is not "yes"
    with pytest.raises(ValueError, match="no yes/no"):
        parse_acoustic_answer("maybe")
    decisions = {"loud": True, "electric": False}
    assert apply_acoustic_filter(["loud", "electric"], decisions) == ["loud"]
    with pytest.raises(KeyError, match="muffled"):
        apply_acoustic_filter(["muffled"], decisions)


# --- summaries -------------------------------------------------------------------------------------------
CAPTIONS = [
    "A loud, high-pitched whistle with a steady rhythm. The pitch rises over time. The recording is noisy.",
    "A high-pitched beeping sound that is loud and repetitive. The pitch rises over time.",
    "This is a loud, high-pitched alarm with a steady rhythm. It is not muffled.",
    "A quiet, low-pitched hum. The pitch rises over time.",
    "A muffled dog barking in the distance, with a steady rhythm.",
]


def test_summary_messages_join_cleaned_captions():
    loop = "a dog barks and a cat meows loudly " * 2
    msgs = summary_messages(["A dog barks.", loop.strip() + ". More."])
    assert msgs[0]["role"] == "system" and "commonalities" in msgs[0]["content"]
    assert msgs[1]["content"] == "A dog barks.\n" + loop.strip()


def test_extractive_summary_lists_what_most_captions_share():
    s = extractive_summary(CAPTIONS)
    assert s == ("Most of them are loud, high-pitched and steady. In most of them, the pitch rises over time. "
                 "Most of them have a steady rhythm.")
    oc = extract_open_concepts(summary_sentences(s))  # Modules B and C read it back
    assert oc.adjectives == ["loud", "high-pitched", "steady"]
    assert "muffled" not in s and "noisy" not in s  # in fewer than 3 of 5 captions


def test_extractive_summary_all_and_nothing_shared():
    same = ["A church bell rings with a deep metallic tone."] * 3
    assert extractive_summary(same) == ("All of them contain a church bell. "
                                        "In all of them, the church bell rings with a deep metallic tone.")
    nothing = extractive_summary(["A dog barks.", "Rain falls on a roof.", "A car engine idles."])
    assert nothing == "There is no clear commonality between them."


ACOUSTIC_CAPTIONS = [  # the offline captioner's style: numbers differ between clips
    "A quiet, high-pitched pure tone around 1500 Hz. The pure tone is pulsing on and off about 3 times per "
    "second over a clean background.",
    "A high-pitched pure tone at about 2100 Hz. The pure tone is pulsing on and off about 4 times per second "
    "against a clean background, with a reverberant tail.",
    "A quiet, high-pitched pure tone at about 3400 Hz. The pure tone is steady over a noisy background and sounds dry.",
    "A loud, low-pitched vibrato tone around 150 Hz, its pitch wavering about 6 times per second. The vibrato tone "
    "is pulsing on and off about 3 times per second.",
    "A quiet, dark low rumble. The rumble is steady over a clean background.",
]


def test_extractive_summary_names_shared_phrases_with_number_ranges_one_group_per_sentence():
    s = extractive_summary(ACOUSTIC_CAPTIONS)
    assert s == ("Most of them are high-pitched pure tones around 1500-3400 Hz. Most of them are quiet. "
                 "Most of them are pulsing on and off about 3-4 times per second. Most of them have a clean background.")
    # every sentence survives Module B's length filter, and Module C reads the adjectives back
    assert summary_sentences(s) == [x + "." for x in s[:-1].split(". ")]
    assert extract_open_concepts(summary_sentences(s)).adjectives == ["high-pitched", "pure", "quiet", "clean"]
    # units follow their numbers; "reverberant tail" and "sounds dry" are in one caption only
    assert all(re.fullmatch(r"[\d.-]+", w) for w in re.findall(r"(\S+) (?:hz|times)\b", s.lower()))
    assert "dry" not in s and "tail" not in s


def test_extractive_summary_verb_agreement_attribute_subjects_and_tagger_fixes():
    caps = ["The hiss pulses on and off about 2 times a second.",
            "The rumble is pulsing on and off about 3 times per second.",
            "The tone is pulsing on and off about 3 times per second. Its pitch is wavering about 6 times per second.",
            "Its loudness slowly swells and fades. Its pitch is wavering about 5 times per second.",
            "Its pitch is wavering about 5 times per second."]
    s = extractive_summary(caps)
    # "pulses" (tagged as a plural noun by the lexicon tagger) and "is pulsing" are one phrase; a clip-level verb
    # phrase takes "Most of them are ...", an attribute subject ("its pitch") keeps its subject
    assert s == ("Most of them are pulsing on and off about 2-3 times per second. "
                 "In most of them, the pitch is wavering about 5-6 times per second.")


# --- Module B with a fake encoder ------------------------------------------------------------------------
H1 = "All of the clips contain a dog barking."
H2 = "The recordings are noisy and of low quality."
H3 = "The barking is sharp and very repetitive."
L1 = "The clips have poor quality and a lot of noise."
L2 = "A person is speaking softly in the room."


class FakeTableEncoder:
    """Fixed, hand-chosen unit vectors per sentence (so every cosine is known)."""

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return F.normalize(torch.tensor([self.table[t] for t in texts], dtype=torch.float32), dim=-1)


def test_cross_removal_masks_hand_example():
    sim = torch.tensor([[0.9, 0.9], [0.1, 0.1], [0.2, 0.51]])
    keep_h, keep_l = cross_removal_masks(sim, 0.5)
    assert keep_h.tolist() == [False, True, False] and keep_l.tolist() == [False, False]


def test_calibration_removes_exactly_the_shared_sentences():
    enc = FakeTableEncoder({
        H1: [1, 0, 0, 0], H2: [0, 1, 0, 0], H3: [0, 0, 1, 0],
        L1: [0, 0.8, 0, 0.6],  # cos(H2, L1) = 0.8
        L2: [0.3, 0, 0, 0.954],  # cos(H1, L2) = 0.3 < 0.5
    })
    out = calibrate(" ".join([H1, H2, H3]), " ".join([L1, L2]), enc, threshold=0.5)
    assert out.high == [H1, H3] and out.removed_high == [H2]
    assert out.low == [L2] and out.removed_low == [L1]
    assert enc.calls == 1
    out_strict = calibrate(" ".join([H1, H2, H3]), " ".join([L1, L2]), enc, threshold=0.9)
    assert out_strict.high == [H1, H2, H3] and out_strict.low == [L1, L2]


def test_calibration_removes_every_partner_not_just_the_first():
    # H1 matches both low sentences: both go (the original mutated the list it iterated and skipped L2)
    enc = FakeTableEncoder({H1: [1, 0], H3: [0, 1], L1: [0.9, 0.436], L2: [0.95, 0.312]})
    [out] = calibrate_many([(f"{H1} {H3}", f"{L1} {L2}")], enc, threshold=0.5)
    assert out.high == [H3] and out.low == [] and out.removed_low == [L1, L2]


def test_calibration_defaults_offline_and_faithful():
    from and_lightning.describe.calibration import DEFAULT_THRESHOLD, ORIGINAL_THRESHOLD

    cfg = yaml.safe_load((CONF.parent / "describe" / "default.yaml").read_text())
    assert cfg["calibration"]["threshold"] == DEFAULT_THRESHOLD == 0.9 and ORIGINAL_THRESHOLD == 0.5
    # a sentence sharing only the template ("Most of them are ...") with a low one stays at 0.9, goes at 0.5
    enc = FakeTableEncoder({H1: [1, 0], L1: [0.6, 0.8]})
    assert calibrate(H1, L1, enc).high == [H1]
    assert calibrate(H1, L1, enc, threshold=ORIGINAL_THRESHOLD).high == []


def test_contrasts_differ_in_an_attribute_value():
    """Two sentences contrast when they name different values of one attribute (lexicon.ATTRIBUTE_VALUES)."""
    assert is_contrast("Most of them are loud and steady.", "Most of them are quiet and steady.")
    assert is_contrast("Most of them are rising chirps.", "Most of them are falling chirps.")
    assert is_contrast("The clips get louder.", "The clips get quieter.")  # comparatives
    assert is_contrast("Most of them are high-pitched.", "Most of them are mid-pitched.")
    assert is_contrast("All of them have a noisy background.", "All of them have a clean background.")
    assert not is_contrast("Most of them are loud and steady.", "Most of them are loud and steady.")  # a repeat
    assert not is_contrast("Most of them are loud.", "Most of them are steady.")  # different attributes
    assert not is_contrast("Most of them are loud and steady.", "Most of them are steady.")  # one value unsaid


def test_calibration_keeps_a_contrast_above_the_threshold():
    enc = FakeTableEncoder({"Most of them are loud and steady.": [1, 0], "Most of them are quiet and steady.": [0.99, 0.14]})
    out = calibrate("Most of them are loud and steady.", "Most of them are quiet and steady.", enc)
    assert out.high == ["Most of them are loud and steady."] and out.removed_high == [] and out.removed_low == []
    faithful = calibrate("Most of them are loud and steady.", "Most of them are quiet and steady.", enc, faithful=True)
    assert faithful.high == [] and faithful.removed_high == ["Most of them are loud and steady."]


def test_calibration_with_empty_low_side_keeps_everything():
    enc = FakeTableEncoder({H1: [1, 0]})
    out = calibrate(H1, "Too short.", enc)
    assert out.high == [H1] and out.low == [] and out.removed_high == []
