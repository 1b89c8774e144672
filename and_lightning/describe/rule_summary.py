"""The rule-based summary of a neuron's K most (or least) activating clips' captions (spec §6), used when no LLM is
configured: `extractive_summary` names the descriptor phrases most captions share (adjectives, the sound's noun
phrase, what it does, its setting) in short sentences. The LLM's summary prompt is in `describe.llm.prompts`.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from and_lightning.describe.lexicon import NON_DESCRIPTIVE, STOPWORDS, is_acoustic, lemma
from and_lightning.describe.open_concepts import ADJECTIVE_TAGS, is_negated, tag_text
from and_lightning.describe.sentences import clean_repeated_caption

# Each caption is parsed (lexicon POS tags, split into clauses at punctuation) into descriptor phrases:
#   adjectives   "quiet", "high-pitched", "rich in harmonics"
#   noun phrases "pure tone", "low-pitched percussive hits", "train of rapid clicks", "clean background"
#   verb phrases with their subject "the pure tone | is pulsing on and off about # times per second"
# Numbers become "#" so "about 3 times" and "about 4 times" are one phrase; the summary names the range
# ("about 3-4 times per second"). A phrase counts once per caption; those in MORE than `min_share` of the
# captions are written as short sentences. Units (Hz, times, seconds) never stand alone, and generic nouns
# (sound, tone, pitch, loudness, ...) only with a modifier ("pure tone", not "tone").
_UNITS = frozenset("hz khz db ms s sec secs second seconds minute minutes times time per".split())
_GENERIC_NOUNS = frozenset(
    "audio clip clips sound sounds recording recordings track file sample piece description descriptions "
    "background tail quality tone tones pitch loudness volume level noise hz khz times time second seconds "
    "thing things one ones kind type".split()
)
# Nouns that name a sound: a clip "is" one ("Most of them are pure tones") and what it does is what the clips do
# ("Most of them are pulsing ..."). Other subjects keep their name ("In most of them, the pitch rises",
# "..., the dog barks"), and other nouns are contained ("Most of them contain a dog").
_SOUND_NOUNS = frozenset("""
    sound sounds noise noises tone tones chirp chirps hiss hisses rumble rumbles train trains click clicks clicking
    hit hits chord chords note notes beep beeps whistle whistles hum hums buzz buzzing drone pulse pulses burst
    bursts ring tick ticks thud thuds bang bangs knock knocks tap taps crackle static squeal screech
""".split())
_SETTING_NOUNS = frozenset("background tail distance room echo environment surroundings space".split())
_SETTING_PREPOSITIONS = frozenset("over against with in while amid behind among during beneath under".split())
_APPROX = frozenset("about around approximately roughly nearly some at".split())
_AUXILIARIES = frozenset("is are was were be been being am has have had do does did can could will would "
                         "may might must shall should".split())
_RELATIVES = frozenset("that which who whose".split())
_LIGHT_VERBS = frozenset("heard stand stands standing seem seems appear appears present exists exist".split())
_VERB_TAGS = frozenset(["VB", "VBD", "VBG", "VBN", "VBP", "VBZ"])
_NOUN_TAGS = frozenset(["NN", "NNS"])
_NUMBER_RE = re.compile(r"^\d+(?:\.\d+)?$")
_CLAUSE_PUNCT = frozenset(".,;:!?()\"'")
_MAX_ADJECTIVES, _MAX_VERB_PHRASES, _MAX_NOUN_PHRASES, _MAX_VP_TOKENS = 6, 3, 3, 10


def _is_word(w: str) -> bool:
    return any(ch.isalpha() for ch in w)


def _retag(tagged: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fix the lexicon tagger's commonest slip: a 3rd-person verb read as a plural noun ("the hiss pulses
    on", "the bell rings with", "its loudness slowly swells and fades"): an -s word after a singular noun
    subject (or after such a verb and "and"), not followed by a noun, is a VBZ."""
    out = list(tagged)
    for i, (w, t) in enumerate(out):
        if t != "NNS" or w.endswith(("ss", "us", "is")):
            continue
        j = i - 1
        while j >= 0 and out[j][1] == "RB":
            j -= 1
        prev = out[j][1] if j >= 0 else ""
        singular = prev == "NN" or (prev == "NNS" and out[j][0].endswith(("ss", "us", "is")))  # "hiss" is NNS
        after_verb = prev == "CC" and j >= 1 and out[j - 1][1] == "VBZ"
        nxt = out[i + 1][1] if i + 1 < len(out) else "."
        if (singular or after_verb) and nxt not in ("NN", "NNS", "JJ", "VBN"):
            out[i] = (w, "VBZ")
    return out


def _clauses(tagged: list[tuple[str, str]]) -> list[tuple[bool, list[tuple[str, str]]]]:
    """Token runs between punctuation marks, each with whether it starts a new sentence."""
    out, cur, new_sentence = [], [], True
    for w, t in tagged:
        if w in _CLAUSE_PUNCT or not (_is_word(w) or _NUMBER_RE.match(w)):
            if cur:
                out.append((new_sentence, cur))
                new_sentence = False
            cur = []
            new_sentence = new_sentence or w in (".", "!", "?", ";")
        else:
            cur.append((w, "CD" if _NUMBER_RE.match(w) else t))
    return out + ([(new_sentence, cur)] if cur else [])


def _is_adjective(w: str, t: str) -> bool:
    return ((t in ADJECTIVE_TAGS or (t in _NOUN_TAGS and is_acoustic(w) and not w.endswith("ing")))
            and _is_word(w) and w not in NON_DESCRIPTIVE and w not in _UNITS)


@dataclass
class _Phrase:
    """One descriptor phrase in one caption: its matching key, its words ("#" for numbers) and the numbers."""

    kind: str                      # adj | np | vp | num
    key: str
    words: list[str]
    numbers: list[str] = field(default_factory=list)
    subject: str = ""              # vp: the subject's key ("pure tone", "loudness"); "" = the sound itself
    in_pp: bool = False            # np: inside a prepositional phrase ("with a steady rhythm") or a setting
    number_tail: list[str] = field(default_factory=list)  # np: a number phrase right after it ("around # hz")
    tail_numbers: list[str] = field(default_factory=list)


def _number_phrase(clause: list[tuple[str, str]], i: int) -> tuple[int, list[str], list[str]]:
    """At token i: a number with its unit ("# hz", "# times per second", "# to # hz") -> (end, words, numbers);
    end == i if there is none. Leading approximators ("about", "at about") belong to the phrase."""
    j = i
    words: list[str] = []
    while j < len(clause) and clause[j][0] in _APPROX:
        words.append(clause[j][0])
        j += 1
    if j >= len(clause) or clause[j][1] != "CD":
        return i, [], []
    numbers = [clause[j][0]]
    words.append("#")
    j += 1
    if j + 1 < len(clause) and clause[j][0] in ("to", "and", "-") and clause[j + 1][1] == "CD":
        numbers.append(clause[j + 1][0])
        words += [clause[j][0], "#"]
        j += 2
    units = []
    while j < len(clause) and (clause[j][0] in _UNITS or clause[j][0] in ("a", "an", "clicks", "beats", "cycles")):
        units.append(clause[j][0])
        j += 1
    if units[-2:] in (["a", "second"], ["a", "minute"]):
        units[-2] = "per"
    while units and units[-1] in ("a", "an", "per"):
        units.pop()
        j -= 1
    return j, words + units, numbers


def _caption_phrases(caption: str) -> list[_Phrase]:
    """The descriptor phrases of one caption (lower-cased)."""
    tagged = _retag(tag_text(caption))
    tokens = [w for w, _ in tagged]
    negated = [is_negated(tokens, i) for i in range(len(tagged))]
    phrases: list[_Phrase] = []
    subject = ""
    k = 0
    for new_sentence, clause in _clauses(tagged):
        while tokens[k] != clause[0][0]:
            k += 1
        if new_sentence:
            subject = ""
        found, subject = _clause_phrases(clause, negated[k:k + len(clause)], subject)
        phrases += found
        k += len(clause)
    return phrases


@functools.lru_cache(maxsize=1 << 16)
def _parsed_caption(caption: str, clean: bool) -> tuple[_Phrase, ...]:
    """The phrases of a caption (after the repetition cleaning when `clean`), parsed once per process: a
    caption is in the top or bottom set of many neurons (read-only: the phrases are shared)."""
    return tuple(_caption_phrases(clean_repeated_caption(caption) if clean else caption))


def _clip_level(p: _Phrase) -> bool:
    """A verb phrase whose subject is the sound itself (none, or a sound noun), not one of its attributes."""
    return not p.subject or p.subject.split()[-1] in _SOUND_NOUNS


# The phrase groups `extractive_summary` counts across captions: group -> (kind, matching key, which phrases).
_GROUPS: dict[str, tuple[str, Callable[[_Phrase], str], Callable[[_Phrase], bool]]] = {
    "np": ("np", lambda p: p.key, lambda p: not p.in_pp),          # naming the sound
    "np_in_pp": ("np", lambda p: p.key, lambda p: p.in_pp),        # "with a reverberant tail"
    "adj": ("adj", lambda p: p.key, lambda p: True),
    "num": ("num", lambda p: p.key, lambda p: True),
    "vp_clip": ("vp", lambda p: p.key, _clip_level),
    "vp_subject": ("vp", lambda p: f"{p.subject}|{p.key}", lambda p: True),
}


@functools.lru_cache(maxsize=1 << 16)
def _caption_groups(caption: str, clean: bool) -> dict[str, dict[str, _Phrase]]:
    """Per group of `_GROUPS`, each key's first phrase in the caption (a phrase counts once per caption), in caption
    order; once per process like `_parsed_caption` (read-only)."""
    phrases = _parsed_caption(caption, clean)
    out: dict[str, dict[str, _Phrase]] = {}
    for group, (kind, key, where) in _GROUPS.items():
        firsts: dict[str, _Phrase] = {}
        for p in phrases:
            if p.kind == kind and where(p):
                firsts.setdefault(key(p), p)
        out[group] = firsts
    return out


def _noun_run_end(clause: list[tuple[str, str]], i: int) -> int:
    """End of a noun phrase starting at i: modifiers (adjectives, participles, nouns) ending in a noun,
    optionally '... of <noun phrase>' ("train of rapid clicks"); i if there is none. A gerund after a
    determiner is a noun ("the clicking is ...")."""
    j, last_noun = i, i
    while j < len(clause):
        w, t = clause[j]
        if w in _UNITS or w in STOPWORDS or t == "CD":
            break
        if t in _NOUN_TAGS or (t == "VBG" and j == i and i > 0 and clause[i - 1][0] in ("the", "its", "their")
                                and (j + 1 == len(clause) or clause[j + 1][1] not in _NOUN_TAGS)):
            last_noun = j + 1
        elif not (t in ADJECTIVE_TAGS or t in ("VBG", "VBD") or is_acoustic(w)):
            break
        j += 1
    if last_noun > i and last_noun + 1 < len(clause) and clause[last_noun][0] == "of":
        k = _noun_run_end(clause, last_noun + 1)
        if k > last_noun + 1:
            return k
    return last_noun


def _subject_key(words: list[str], tags: list[str]) -> str:
    """A subject without its descriptive adjectives: 'high-pitched rising chirp' -> 'chirp',
    'pure tone' -> 'tone', 'tremolo tone' -> 'tremolo tone', 'loudness' -> 'loudness'."""
    kept = [w for w, t in zip(words, tags) if not (is_acoustic(w) and t not in _NOUN_TAGS) or w == words[-1]]
    return " ".join(kept)


def _clause_phrases(clause: list[tuple[str, str]], negated: list[bool], subject: str) -> tuple[list[_Phrase], str]:
    """The phrases of one clause, and the subject in force at its end (carried to the next clause)."""
    out: list[_Phrase] = []
    i = 0
    while i < len(clause):
        w, t = clause[i]
        if negated[i]:
            i += 1
            continue
        n_end, n_words, n_numbers = _number_phrase(clause, i)
        if n_end > i:  # a number not attached to a noun: "about # clicks per second"
            if n_words[-1] not in ("#", "hz", "khz"):
                out.append(_Phrase("num", " ".join(n_words), n_words, n_numbers))
            i = n_end
            continue
        j = _noun_run_end(clause, i)
        if j > i:  # a noun phrase (and every shorter phrase ending at its head: "pure tone" in "quiet pure tone")
            words, tags = [x for x, _ in clause[i:j]], [x for _, x in clause[i:j]]
            back = i - 1
            while back >= 0 and clause[back][0] in ("the", "a", "an", "its", "their", "this", "these"):
                back -= 1
            in_pp = back >= 0 and clause[back][1] in ("IN", "TO") and clause[back][0] not in _RELATIVES
            n_end, n_words, n_numbers = _number_phrase(clause, j)
            setting = bool(_SETTING_NOUNS.intersection(words))
            for k in range(len(words)):
                sub = words[k:]
                if (len(sub) == 1 and (sub[0] in _GENERIC_NOUNS or sub[0] in STOPWORDS)) or sub[0] == "of":
                    continue
                out.append(_Phrase("np", " ".join(sub), sub, in_pp=in_pp or setting, number_tail=n_words,
                                   tail_numbers=n_numbers))
            if not setting:
                out += [_Phrase("adj", x, [x]) for x, tx in clause[i:j] if _is_adjective(x, tx) and tx not in _NOUN_TAGS]
            if not in_pp:
                subject = _subject_key(words, tags)
            i = n_end if n_end > j else j
            continue
        if t in _VERB_TAGS and w not in _AUXILIARIES and _is_word(w):
            out.append(_verb_phrase(clause, i, subject))
            i = _vp_end(clause, i)
            continue
        if _is_adjective(w, t):
            words = [w]
            if i + 2 < len(clause) and clause[i + 1][0] == "in" and clause[i + 2][1] in _NOUN_TAGS:
                words = [w, "in", clause[i + 2][0]]  # "rich in harmonics", "high in pitch"
            out.append(_Phrase("adj", " ".join(words), words))
            i += len(words)
            continue
        if w in ("it", "they", "this", "these"):
            subject = ""
        i += 1
    return out, subject


def _vp_end(clause: list[tuple[str, str]], i: int) -> int:
    """A verb phrase runs from its verb to a setting preposition ("over a clean background"), a next verb
    after "and", or the end of the clause (at most _MAX_VP_TOKENS tokens)."""
    j = i + 1
    while j < len(clause) and j - i < _MAX_VP_TOKENS:
        w, t = clause[j]
        if w in _SETTING_PREPOSITIONS and j > i + 1:
            break
        if w == "and" and j + 1 < len(clause) and clause[j + 1][1] in _VERB_TAGS and clause[j + 1][0] not in _AUXILIARIES:
            break
        j += 1
    return j


def _verb_phrase(clause: list[tuple[str, str]], i: int, subject: str) -> _Phrase:
    """The verb phrase at i (numbers as '#'), keyed by its verb's lemma so 'pulses' matches 'is pulsing'."""
    words, numbers = [], []
    j, end = i, _vp_end(clause, i)
    while j < end:
        n_end, n_words, n_numbers = _number_phrase(clause, j)
        if n_end > j:
            words += n_words
            numbers += n_numbers
            j = n_end
            continue
        words.append(clause[j][0])
        j += 1
    aux = clause[i - 1][0] if i > 0 and clause[i - 1][0] in _AUXILIARIES else ""
    key = " ".join([lemma(words[0], "VERB")] + words[1:])
    return _Phrase("vp", key, ([aux] if aux else []) + words, numbers, subject=subject)


def _agree(vp_words: list[str], plural: bool) -> list[str]:
    """Verb agreement: ['pulses', 'on'] -> ['pulse', 'on'] (plural), ['wavering'] -> ['is', 'wavering']."""
    first, rest = vp_words[0], vp_words[1:]
    be = "are" if plural else "is"
    if first in ("is", "are", "was", "were", "am"):
        return [be] + rest
    if first in ("has", "have"):
        return ["have" if plural else "has"] + rest
    if first in _AUXILIARIES:
        return vp_words
    if first.endswith(("ing", "ed")) or first in ("struck", "made", "heard", "played", "pitched"):
        return [be, first] + rest
    third = first.endswith("s") and not first.endswith("ss")
    if plural and third:
        base = first[:-2] if first.endswith(("sses", "shes", "ches", "xes", "zzes")) else first[:-1]
        return [base] + rest
    if not plural and not third:
        return [first + ("es" if first.endswith(("s", "sh", "ch", "x", "z", "o")) else "s")] + rest
    return vp_words


def _range(values: list[str]) -> str:
    """'3' or '3-4' from the numbers seen in one slot."""
    nums = sorted({float(v) for v in values})
    fmt = [f"{v:g}" for v in (nums[0], nums[-1])]
    return fmt[0] if fmt[0] == fmt[1] else f"{fmt[0]}-{fmt[1]}"


def _fill(words: list[str], occurrences: list[list[str]]) -> str:
    """Put the number ranges (one per '#', over all occurrences) into the words; 'hz' is written 'Hz'."""
    slots = [[occ[k] for occ in occurrences if k < len(occ)] for k in range(words.count("#"))]
    it = iter(_range(s) if s else "some" for s in slots)
    return " ".join(next(it) if w == "#" else ("Hz" if w == "hz" else "kHz" if w == "khz" else w) for w in words)


def _plural(np_words: list[str]) -> str:
    """'pure tone' -> 'pure tones', 'train of rapid clicks' -> 'trains of rapid clicks', 'hits' stays."""
    words = list(np_words)
    k = words.index("of") - 1 if "of" in words else len(words) - 1
    head = words[k]
    if not head.endswith("s") or head.endswith("ss"):
        if head.endswith(("s", "sh", "ch", "x", "z")):
            head += "es"
        elif head.endswith("y") and head[-2:-1] not in "aeiou":
            head = head[:-1] + "ies"
        else:
            head += "s"
    words[k] = head
    return " ".join(words)


def _article(np_words: list[str]) -> str:
    head = np_words[np_words.index("of") - 1] if "of" in np_words else np_words[-1]
    if head.endswith("s") and not head.endswith("ss"):
        return " ".join(np_words)
    return ("an " if np_words[0][:1] in "aeiou" else "a ") + " ".join(np_words)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def extractive_summary(captions: Sequence[str], min_share: float = 0.5, clean: bool = True) -> str:
    """An offline summary of the descriptor phrases shared by MORE than `min_share` of the captions.

    Short sentences, each starting with "All" (every caption shares every item) or "Most":
      what they are   "Most of them are mid-pitched pure tones around 460-700 Hz."
      how they sound  "Most of them are quiet and steady."
      what they do    "Most of them are pulsing on and off about 3-4 times per second." (one per verb phrase)
                      "In most of them, the pitch is wavering about 5-6 times per second." (an attribute subject)
      what they have  "All of them have a clean background." (one per noun phrase)
    One descriptor group per sentence lets Module B drop exactly what the low-activating clips share too.
    Every sentence has more than five tokens, so Module B keeps it, and its adjectives are tagged so that
    Module C reads them back. With nothing shared the summary says so in one sentence.
    """
    if not captions:
        raise ValueError("extractive_summary needs at least one caption")
    n = len(captions)
    need = int(min_share * n) + 1
    per = [_caption_groups(c, clean) for c in captions]

    def shared(group: str) -> list[tuple[str, list[_Phrase]]]:
        """(key, its occurrences, one per caption) of a `_GROUPS` group, for keys in >= need captions; most shared
        first, then longest, then first seen."""
        occ: dict[str, list[_Phrase]] = {}
        for groups in per:
            for k, p in groups[group].items():
                occ.setdefault(k, []).append(p)
        order = {k: i for i, k in enumerate(occ)}
        kept = [(k, v) for k, v in occ.items() if len(v) >= need]
        return sorted(kept, key=lambda kv: (-len(kv[1]), -len(kv[1][0].words), order[kv[0]]))

    def quant(counts: list[int], lower: bool = False) -> str:
        q = "All" if all(c == n for c in counts) else "Most"
        return q.lower() if lower else q

    sentences = []
    # what they are: the longest (then most shared) noun phrase naming the sound, with its numbers
    nps = shared("np")
    best = max(nps, key=lambda kv: (len(kv[1][0].words), len(kv[1]))) if nps else None
    in_np = set(best[1][0].words) if best else set()
    adjs = [(k, v) for k, v in shared("adj") if not set(k.split()) <= in_np][:_MAX_ADJECTIVES]
    single = [(k, v) for k, v in adjs if " " not in k]
    multi = [(k, v) for k, v in adjs if " " in k]  # "rich in harmonics" follows the noun
    if best:
        what, counts = _plural(best[1][0].words), [len(best[1])]
        tails = [p for p in best[1] if p.number_tail]
        units = {tuple(w for w in p.number_tail if w not in _APPROX and w != "#") for p in tails}
        if len(tails) >= need and len(units) == 1 and next(iter(units)):
            what += " around " + _fill(["#", *next(iter(units))], [p.tail_numbers for p in tails])
        for k, v in shared("num")[:1] + multi:
            what += ", " + _fill(v[0].words, [p.numbers for p in v])
            counts.append(len(v))
        if best[1][0].words[-1] in _SOUND_NOUNS or best[1][0].words[-1].endswith("ing"):
            sentences.append(f"{quant(counts)} of them are {what}.")
        else:  # "a dog barking": the clips contain it
            sentences.append(f"{quant(counts)} of them contain {_article(best[1][0].words)}{what[len(_plural(best[1][0].words)):]}.")
    # how they sound: the shared adjectives
    described = single if best else single + multi
    if described:
        sentences.append(f"{quant([len(v) for _, v in described])} of them are {_join([k for k, _ in described])}.")
    # what they do: one sentence per verb phrase; adjectives already said are not repeated ("stays steady")
    said = {w for k, _ in adjs for w in k.split()} | in_np
    attribute = [(k, v) for k, v in shared("vp_subject") if not _clip_level(v[0])]
    clip = shared("vp_clip")
    n_vp = 0
    for k, v in clip + attribute:
        subject = v[0].subject if (k, v) in attribute else ""
        verb = next(w for w in v[0].words if w not in _AUXILIARIES)
        content = [w for w in v[0].words if w != verb and _is_word(w) and w not in STOPWORDS and w not in _UNITS]
        if (content and set(content) <= said) or (not content and verb in _LIGHT_VERBS) or n_vp >= _MAX_VERB_PHRASES:
            continue
        surface = Counter(" ".join(p.words) for p in v).most_common(1)[0][0].split()
        plural = not subject or (subject.endswith("s") and not subject.endswith("ss"))
        did = _fill(_agree(surface, plural), [p.numbers for p in v])
        q = quant([len(v)])
        sentences.append(f"In {q.lower()} of them, the {subject} {did}." if subject else f"{q} of them {did}.")
        n_vp += 1
    # what they have: noun phrases in prepositional phrases ("with a reverberant tail"), not already said
    said |= {w for s in sentences for w in re.findall(r"[\w-]+", s.lower())}
    heads = {best[1][0].words[-1]} if best else set()
    others = [(k, v) for k, v in shared("np_in_pp")
              if not set(k.split()) <= said and v[0].words[-1] not in heads]
    others = [(k, v) for i, (k, v) in enumerate(others)
              if not any(set(k.split()) <= set(o.split()) for o, _ in others[:i])][:_MAX_NOUN_PHRASES]
    sentences += [f"{quant([len(v)])} of them have {_article(v[0].words)}." for _, v in others]
    return " ".join(sentences) if sentences else "There is no clear commonality between them."
