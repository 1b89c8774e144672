"""Module C (spec §8): open-set concepts of a neuron from its calibrated summary.

Rule-based adjective filter (POS tags JJ/JJR/JJS/VBN, negation window, non-descriptive stop-list,
de-duplication), then an acoustic filter: offline the lexicon of `lexicon.py`, or an LLM yes/no
question asked ONCE per unique adjective across all neurons. Also nouns, verbs and prepositions (concept
pruning matches class words against the nouns: `prune/selection.py`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from and_lightning.describe.llm.base import ChatRequest
from and_lightning.describe.lexicon import NEGATORS, NON_DESCRIPTIVE, STOPWORDS, is_acoustic, normalise_word
from and_lightning.describe.sentences import pos_tag, word_tokenize

ADJECTIVE_TAGS = frozenset(["JJ", "JJR", "JJS", "VBN"])
VERB_TAGS = frozenset(["VB", "VBD", "VBG", "VBN", "VBP", "VBZ"])
NOUN_TAGS = frozenset(["NN", "NNS", "NNP", "NNPS"])
PREPOSITION_TAGS = frozenset(["IN"])
# A negation does not reach across these: "It is not loud. Bright ..." / "not loud but bright".
CLAUSE_BREAKS = frozenset([".", "!", "?", ";", ":", "but", "however", "although", "though", "yet", "whereas"])


def _dedup(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def is_negated(tokens: list[str], i: int, window: int = 4, negators: frozenset[str] = NEGATORS,
               breaks: frozenset[str] = CLAUSE_BREAKS) -> bool:
    """Whether a negator is among the `window` tokens before position i, within i's clause.

    The window is tokens[max(0, i - window):i] (the original's tokens[i-4:i] is empty for i < 4), cut
    after the last clause break so a negation does not leak into the next sentence or a "but" clause.
    """
    before = [t.lower() for t in tokens[max(0, i - window):i]]
    for j in range(len(before) - 1, -1, -1):
        if before[j] in breaks:
            before = before[j + 1:]
            break
    return any(t in negators for t in before)


def tag_text(text: str) -> list[tuple[str, str]]:
    """Lower-cased word tokens of `text` with Penn POS tags (as the original: lower-case, tokenize, tag)."""
    return pos_tag(word_tokenize(text.lower()))


def rule_based_adjectives(
    tagged: list[tuple[str, str]],
    window: int = 4,
    stoplist: frozenset[str] = NON_DESCRIPTIVE,
) -> list[str]:
    """Spec §8 step 1 (`adj_after_rbf`): JJ/JJR/JJS/VBN tokens not negated in the preceding `window`
    tokens, minus the non-descriptive stop-list, de-duplicated in order of first appearance."""
    tokens = [w for w, _ in tagged]
    adjs = [
        w for i, (w, tag) in enumerate(tagged)
        if tag in ADJECTIVE_TAGS and not is_negated(tokens, i, window) and w not in stoplist
        and any(ch.isalpha() for ch in w)
    ]
    return _dedup(adjs)


def _content_words(tagged: list[tuple[str, str]], tags: frozenset[str], drop_stopwords: bool, dedup: bool) -> list[str]:
    words = [w for w, t in tagged if t in tags and any(ch.isalpha() for ch in w)]
    if drop_stopwords:
        words = [w for w in words if w not in STOPWORDS]
    return _dedup(words) if dedup else words


@dataclass
class OpenConcepts:
    """Module C output for one neuron. `acoustic_adjectives` is C_open-set (the original's adj_after_rbf_llmf)."""

    adjectives: list[str]  # adj_after_rbf
    acoustic_adjectives: list[str] = field(default_factory=list)
    nouns: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=list)
    prepositions: list[str] = field(default_factory=list)
    n_tokens: int = 0  # caption_len (our tokens; the original counted spaCy tokens)


def extract_open_concepts(
    sentences: list[str] | str,
    acoustic: Callable[[str], bool] | Mapping[str, bool] | None = is_acoustic,
    window: int = 4,
    dedup: bool = True,
) -> OpenConcepts:
    """Module C on a neuron's calibrated summary (a list of sentences, joined with spaces, or a string).

    `acoustic` decides which adjectives are acoustic: a predicate (default: the offline lexicon), a
    mapping word -> bool of LLM decisions (see `acoustic_filter_messages`), or None to defer (then
    `acoustic_adjectives` is left empty and the caller fills it with `apply_acoustic_filter`).
    Nouns and verbs exclude stopwords; prepositions do not (as the original). `dedup=False` keeps
    repeated nouns/verbs/prepositions like `sentence_utils.all_pos_filter` (the paper's notebook de-duplicated).
    """
    text = sentences if isinstance(sentences, str) else " ".join(sentences)
    tagged = tag_text(text)
    adjs = rule_based_adjectives(tagged, window)
    return OpenConcepts(
        adjectives=adjs,
        acoustic_adjectives=[] if acoustic is None else apply_acoustic_filter(adjs, acoustic),
        nouns=_content_words(tagged, NOUN_TAGS, True, dedup),
        verbs=_content_words(tagged, VERB_TAGS, True, dedup),
        prepositions=_content_words(tagged, PREPOSITION_TAGS, False, dedup),
        n_tokens=len(tagged),
    )


# --- acoustic filter ----------------------------------------------------------------------------------
ACOUSTIC_FILTER_SCHEMA = {
    "title": "acoustic_adjective",
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "reason": {"type": "string"},
    },
    "required": ["answer", "reason"],
    "additionalProperties": False,
}


def acoustic_filter_messages(word: str) -> list[dict]:
    """Chat messages asking whether an adjective is acoustic (the original's question, JSON answer
    matching ACOUSTIC_FILTER_SCHEMA). Send once per unique word: see `words_needing_decision`."""
    return [
        {
            "role": "system",
            "content": "You judge words used in descriptions of audio. Reply with a JSON object "
                       '{"answer": "yes" or "no", "reason": "<one sentence>"}.',
        },
        {
            "role": "user",
            "content": f"Can the adjective '{word}' be used to describe the tone, emotion, or acoustic "
                       "features of audio, music, or any other form of sound?",
        },
    ]


def words_needing_decision(adjective_lists: Iterable[Iterable[str]], known: Mapping[str, bool] | None = None) -> list[str]:
    """The unique normalised words over all neurons' adjective lists that have no decision yet, sorted
    (one LLM query per word, not per occurrence: spec §12.1 item 12)."""
    known = known or {}
    words = {normalise_word(w) for adjs in adjective_lists for w in adjs}
    return sorted(w for w in words if w and w not in known)


_YES_NO_RE = re.compile(r"\b(yes|no)\b")


def parse_acoustic_answer(answer: dict | str) -> bool:
    """A yes/no reply -> bool. Accepts the schema's dict, its JSON text, or free text whose first whole
    word "yes"/"no" decides ("eyes" does not count as yes, unlike the original's substring test)."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            m = _YES_NO_RE.search(answer.lower())
            if m is None:
                raise ValueError(f"acoustic-filter reply has no yes/no: {answer[:200]!r}") from None
            return m.group(1) == "yes"
    if not isinstance(answer, dict) or "answer" not in answer:
        raise ValueError(f"acoustic-filter reply must be an object with field 'answer', got {answer!r}")
    value = str(answer["answer"]).strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"acoustic-filter field 'answer' must be 'yes' or 'no', got {answer['answer']!r}")
    return value == "yes"


def acoustic_filter_request(word: str) -> ChatRequest:
    """`acoustic_filter_messages` as a request whose reply may be free text (`acoustic_verdict` reads it)."""
    return ChatRequest(acoustic_filter_messages(word), ACOUSTIC_FILTER_SCHEMA, kind="acoustic_adjective",
                       text_fallback=True)


def acoustic_verdict(reply: dict | str) -> tuple[bool | None, str, str]:
    """(decision, parse path, why unusable) of one acoustic-filter reply: path "json" (the schema's object),
    "text_yes_no" (free text: its first whole-word yes/no) or "unusable" (decision None: the word is left out)."""
    try:
        decision = parse_acoustic_answer(reply)
    except ValueError as e:
        return None, "unusable", str(e)
    return decision, "json" if isinstance(reply, dict) else "text_yes_no", ""


def apply_acoustic_filter(adjectives: list[str], acoustic: Callable[[str], bool] | Mapping[str, bool]) -> list[str]:
    """The adjectives judged acoustic, in order. With a mapping, every (normalised) word must have a decision;
    a decision of None (an unusable LLM reply) leaves the word out."""
    if callable(acoustic):
        return [a for a in adjectives if acoustic(a)]
    missing = [a for a in adjectives if normalise_word(a) not in acoustic]
    if missing:
        raise KeyError(f"no acoustic decision for {missing}; query them first (words_needing_decision)")
    return [a for a in adjectives if acoustic[normalise_word(a)]]
