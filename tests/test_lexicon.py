"""The one lemmatizer, tokenizer and whole-word matcher (`describe/lexicon.py`), on hand-written cases."""
from __future__ import annotations

import pytest

from and_lightning.describe.closed_set import ICLPick, parse_icl_reply
from and_lightning.describe.lexicon import (
    attribute_values, find, find_phrases, is_acoustic, lemma, lemmas, normalise_word, tokens,
)


@pytest.mark.parametrize("word, expected", [
    ("rumbles", "rumble"), ("chirps", "chirp"), ("chirping", "chirp"), ("chirped", "chirp"), ("hisses", "hiss"),
    ("tones", "tone"), ("glasses", "glass"), ("flies", "fly"), ("mice", "mouse"), ("teeth", "tooth"), ("rang", "ring"),
    ("louder", "loud"), ("noisier", "noisy"), ("quietest", "quiet"), ("lower", "low"),  # comparatives
    ("bus", "bus"), ("news", "news"), ("his", "his"), ("evening", "evening"), ("hiss", "hiss"),  # no stripping
    ("cleaner", "cleaner"),  # without a part of speech the noun reading comes first
    ("click-trains", "click-train"), ("echoey", "echoey"), ("18-40", "18-40"),  # compounds, unknown words
])
def test_lemma_without_part_of_speech(word, expected):
    assert lemma(word) == expected


def test_lemma_with_part_of_speech():
    # the verb forms the offline summariser groups (helper for `rule_summary`'s verb-phrase keys)
    assert {lemma(w, "VERB") for w in ("pulse", "pulses", "pulsed", "pulsing")} == {"pulse"}
    assert {lemma(w, "VERB") for w in ("hums", "humming")} == {"hum"}
    assert {lemma(w, "VERB") for w in ("stops", "stopping")} == {"stop"}
    assert lemma("cleaner", "ADJ") == "clean" and lemma("lights", "ADJ") == "lights"  # no adjective reading


def test_tokens_and_normalised_words():
    assert tokens("Most of them aren't 'loud' (3.5 Hz); noise_hiss!") == [
        "most", "of", "them", "are", "n't", "loud", "3.5", "hz", ";", "noise", "hiss", "!"]
    assert normalise_word(" 'High pitched' ") == "high-pitched" and normalise_word("Loud,") == "loud"
    assert lemmas("Low rumbles.") == ("low", "rumble", ".")


def test_find_matches_whole_words_up_to_inflection():
    assert find("low_rumble", "they are low rumbles") == 2 and find("tone", "tones") == 0
    assert find("rain", "train") is None and find("his", "hissing") is None
    assert find("pure_tone", "mid-pitched harmonic tones") is None
    assert find("low rumble", "It is low. Rumbles follow.") is None  # not across a sentence end
    assert find("", "anything") is None


def test_find_phrases_longest_first_left_to_right():
    phrases = {("low", "rumble"), ("rumble",), ("low",)}
    assert find_phrases(lemmas("a low rumble, then rumbles low"), phrases) == [
        (1, ("low", "rumble")), (5, ("rumble",)), (6, ("low",))]
    assert find_phrases(lemmas("nothing here"), set()) == []


def test_comparatives_in_the_acoustic_lexicon_and_attribute_values():
    assert is_acoustic("louder") and is_acoustic("quietest") and is_acoustic("gentlest")
    assert not is_acoustic("lights") and not is_acoustic("bigger")
    assert attribute_values("louder") == {("loudness", 0)} and attribute_values("quieter") == {("loudness", 1)}


def test_icl_reply_names_a_class_up_to_inflection():
    # the free-text fallback of ICL replies uses the same matcher ("dogs barking" names dog_bark)
    pick = parse_icl_reply("These sound like dogs barking, or a siren.", ["siren", "dog_bark"], encoder=None)
    assert pick == ICLPick("dog_bark", "text_mention")
