"""Summaries of a neuron's K most (or least) activating clips' captions (spec §6).

Two ways: the LLM prompt of the original (a commonality summary, `summary_messages`), and an offline
extractive summary (`extractive_summary`) naming the descriptors most captions share, used with llm=none.
Neurons with the same clip set get the same summary: group them with `group_by_clip_set` and
summarise each group once.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence

from and_lightning.describe.lexicon import NEGATORS, NON_DESCRIPTIVE, STOPWORDS
from and_lightning.describe.open_concepts import ADJECTIVE_TAGS, is_negated, tag_text
from and_lightning.describe.sentences import clean_repeated_caption, word_tokenize

SUMMARY_SYSTEM_PROMPT = (
    "Here are descriptions of some audio clips. Please summarize these descriptions by identifying "
    "their commonalities."
)
SUMMARY_MAX_TOKENS = 1024  # the original's generation budget


def summary_messages(captions: Sequence[str], clean: bool = True) -> list[dict]:
    """Chat messages for the original's commonality summary: the system instruction, then the captions
    (after the 8-gram repetition cleaning unless `clean=False`) joined by newlines, as in the original.
    The same prompt serves the highly and the lowly activating sets; no label or activation is shown."""
    if not captions:
        raise ValueError("summary_messages needs at least one caption")
    texts = [clean_repeated_caption(c) if clean else c for c in captions]
    return [
        {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(t.strip() for t in texts)},
    ]


def clip_set_key(clip_ids: Iterable[str]) -> tuple[str, ...]:
    """The order-free identity of a clip set: its sorted clip ids."""
    return tuple(sorted(clip_ids))


def group_by_clip_set(neuron_clips: Mapping[Hashable, Sequence[str]]) -> dict[tuple[str, ...], list[Hashable]]:
    """{clip_set_key: [neuron keys with that clip set]} in first-seen order, so each set is summarised
    once (spec §12.3: identical prompts were regenerated for every neuron). Summarise a group from its
    key (the sorted ids) so the summary does not depend on which neuron came first."""
    groups: dict[tuple[str, ...], list[Hashable]] = {}
    for neuron, clips in neuron_clips.items():
        groups.setdefault(clip_set_key(clips), []).append(neuron)
    return groups


# --- offline extractive summary ------------------------------------------------------------------------
# Nouns that describe the recording rather than its content; never reported as shared descriptors.
_GENERIC_NOUNS = frozenset(
    "audio clip clips sound sounds recording recordings track file sample piece description "
    "descriptions background quality".split()
)
_NOUN_TAGS = ("NN", "NNS")
_PHRASE_TAGS = ADJECTIVE_TAGS | {"VBG", "NN", "NNS"}
_CLAUSE_SPLIT_RE = re.compile(r"[.!?;,:\n]+")
_ARTICLE_RE = re.compile(r"^(?:the|a|an|this|that|these|those|it|its)\s+")
_MAX_ITEMS = 6


def _is_word(w: str) -> bool:
    return any(ch.isalpha() for ch in w)


def _caption_descriptors(caption: str) -> tuple[set[str], set[str], set[str], dict[str, str]]:
    """(adjectives, nouns, noun phrases, {clause key: clause}) of one caption, lower-cased.

    Adjectives: POS JJ/JJR/JJS/VBN, not negated, not non-descriptive. Nouns: NN/NNS content nouns.
    Noun phrases: runs of adjective/VBG/noun tags of 2-4 words ending in a noun. Clauses: comma/sentence
    fragments of 3-8 words without a negator, keyed without their leading article.
    """
    tagged = tag_text(caption)
    tokens = [w for w, _ in tagged]
    adjs, nouns, phrases = set(), set(), set()
    run: list[tuple[str, str]] = []
    for i, (w, t) in enumerate(tagged + [("", "")]):
        if t in ADJECTIVE_TAGS and _is_word(w) and w not in NON_DESCRIPTIVE and not is_negated(tokens, i):
            adjs.add(w)
        if t in _NOUN_TAGS and _is_word(w) and w not in STOPWORDS and w not in _GENERIC_NOUNS:
            nouns.add(w)
        if t in _PHRASE_TAGS and _is_word(w) and w not in STOPWORDS and not is_negated(tokens, i):
            run.append((w, t))
            continue
        while run and run[-1][1] not in _NOUN_TAGS:
            run.pop()
        if 2 <= len(run) <= 4 and run[-1][0] not in _GENERIC_NOUNS:
            phrases.add(" ".join(w for w, _ in run))
        run = []
    clauses = {}
    for frag in _CLAUSE_SPLIT_RE.split(caption.lower()):
        words = [w for w in word_tokenize(frag) if _is_word(w)]
        if 3 <= len(words) <= 8 and not NEGATORS.intersection(words):
            clause = " ".join(words)
            clauses.setdefault(_ARTICLE_RE.sub("", clause), clause)
    return adjs, nouns, phrases, clauses


def _shared(per_caption: list[set[str]], need: int) -> list[tuple[str, int]]:
    """Items in at least `need` captions, most shared first, ties in order of first appearance."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for items in per_caption:
        for item in sorted(items):
            counts[item] += 1
            first.setdefault(item, len(first))
    kept = [(item, n) for item, n in counts.items() if n >= need]
    return sorted(kept, key=lambda x: (-x[1], first[x[0]]))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def extractive_summary(captions: Sequence[str], min_share: float = 0.5, clean: bool = True) -> str:
    """An offline summary: the descriptors shared by MORE than `min_share` of the captions, in 1-3 sentences.

    Sentence 1 lists shared adjectives ("Most of them are loud, high-pitched and repetitive."),
    sentence 2 shared noun phrases / nouns ("Most of them contain a dog barking ..."), sentence 3 shared
    short clauses ("In most of them, the pitch rises over time."). "All" replaces "Most" when every
    caption shares every listed item. The template words are chosen so Module B keeps the sentences
    (> 5 tokens) and Module C reads back the same adjectives and nouns. With nothing shared the summary
    says so in one sentence.
    """
    if not captions:
        raise ValueError("extractive_summary needs at least one caption")
    texts = [clean_repeated_caption(c) if clean else c for c in captions]
    need = int(min_share * len(texts)) + 1
    per = [_caption_descriptors(t) for t in texts]
    adjs = _shared([p[0] for p in per], need)[:_MAX_ITEMS]
    shared_clauses = _shared([set(p[3]) for p in per], need)
    clauses = [(c, n) for c, n in shared_clauses if not any(c != o and c in o for o, _ in shared_clauses)][:2]
    surface = {}
    for p in per:
        for key, clause in p[3].items():
            surface.setdefault(key, clause)
    in_clause = {w for c, _ in clauses for w in c.split()}
    phrases = [(ph, n) for ph, n in _shared([p[2] for p in per], need) if not set(ph.split()) <= in_clause]
    in_phrase = {w for ph, _ in phrases for w in ph.split()}
    nouns = [(w, n) for w, n in _shared([p[1] for p in per], need) if w not in in_phrase | in_clause]
    things = (phrases + nouns)[:_MAX_ITEMS]

    def quant(items: list[tuple[str, int]]) -> str:
        return "All" if all(n == len(texts) for _, n in items) else "Most"

    sentences = []
    if adjs:
        sentences.append(f"{quant(adjs)} of them are {_join([a for a, _ in adjs])}.")
    if things:
        sentences.append(f"{quant(things)} of them contain {_join([t for t, _ in things])}.")
    if clauses:
        sentences.append(f"In {quant(clauses).lower()} of them, {_join([surface[c] for c, _ in clauses])}.")
    return " ".join(sentences) if sentences else "There is no clear commonality between them."
