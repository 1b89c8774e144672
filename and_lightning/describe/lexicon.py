"""Words: lists for Module C (acoustic adjectives for the offline acoustic filter, the original's `remove_dummy`
stop-list, English stopwords from NLTK's list, whose data is not available offline, negators) and the one
lemmatizer and whole-word matcher that concept pruning, ground truth and Module C use.

Lemmas come from lemminflect's dictionary (English lemma tables, no part-of-speech tagger needed); tokens are
`sentences.word_tokenize`'s.
"""
from __future__ import annotations

import functools
from typing import Collection, Sequence

from lemminflect import getAllLemmas

from and_lightning.describe.sentences import word_tokenize

# Adjectives that can describe the tone, emotion or acoustic features of a sound: the question the
# original asks an LLM (spec §8). Grouped for readability; `is_acoustic` also accepts inflected and
# hyphenated forms (see there).
ACOUSTIC_ADJECTIVES: dict[str, frozenset[str]] = {
    "pitch": frozenset("""
        high-pitched low-pitched mid-pitched high low deep shrill squeaky squeaking piercing pitched tonal
        atonal melodic melodious harmonic inharmonic bassy booming sonorous resonant rising falling
        ascending descending sliding gliding wavering warbling trilling whistling screechy screeching
        squealing chirpy chirping twittering flat treble
    """.split()),
    "loudness": frozenset("""
        loud quiet soft faint deafening thunderous thundering blaring silent gentle subtle intense
        powerful strong weak audible inaudible muted hushed roaring explosive forceful mild heavy
        light noisy
    """.split()),
    "timbre": frozenset("""
        bright dark warm cold harsh smooth rough gritty grainy raspy hoarse husky breathy airy hollow
        metallic wooden glassy crisp clean clear distorted muffled muddy tinny nasal buzzy buzzing
        humming hissing crackling crackly static scratchy fuzzy rich thin full dull mellow sweet
        sharp brassy reedy woody percussive plucked bowed synthetic electronic acoustic artificial
        natural organic realistic synthesized digital analog lo-fi hi-fi high-quality low-quality
        poor pure noiseless sibilant guttural throaty rumbling gravelly creaky creaking jangly
        tinkling ringing chiming clanging clattering whooshing whirring droning vocal instrumental
        musical dissonant consonant cacophonous harmonious discordant grating jarring sonic tonal
        resonating vibrant
    """.split()),
    "time": frozenset("""
        rhythmic rhythmical repetitive repeated repeating periodic regular irregular steady
        continuous constant sustained intermittent sporadic pulsing pulsed pulsating throbbing
        beating staccato legato choppy abrupt sudden brief short long prolonged lingering fading
        decaying swelling fast slow rapid quick syncopated monotonous monotone fluctuating
        oscillating vibrating tremulous trembling stuttering rolling rattling ticking clicking
        tapping knocking dripping impulsive transient punchy snappy uneven erratic consistent
        increasing decreasing
    """.split()),
    "space": frozenset("""
        reverberant reverberating echoing echoey echoy dry distant close near far faraway spacious
        ambient enveloping stereo mono roomy cavernous boomy boxy
    """.split()),
    "emotion": frozenset("""
        calm calming soothing relaxing peaceful tranquil serene pleasant unpleasant annoying
        irritating eerie spooky scary creepy ominous menacing dramatic tense suspenseful cheerful
        happy joyful playful upbeat lively energetic exciting aggressive angry sad melancholic
        melancholy mournful somber sombre dreamy mysterious haunting emotional romantic nostalgic
        uplifting festive chaotic frantic urgent alarming startling distressed frightening agitated
        excited hypnotic
    """.split()),
}
ALL_ACOUSTIC_ADJECTIVES: frozenset[str] = frozenset().union(*ACOUSTIC_ADJECTIVES.values())

# The values of one attribute exclude each other: "loud" and "quiet" (or "rising" and "falling") say opposite
# things of a sound, so two sentences that differ in them are a contrast, not a repeat (Module B keeps both).
# The attributes of conf/concepts/acoustic_attributes.yaml, with near-synonyms of each value; a word may be a
# value of several attributes ("noisy": a noisy sound, a noisy background).
_ATTRIBUTE_WORDS = {
    "register": ("low-pitched low deep bassy", "mid-pitched", "high-pitched high shrill treble"),
    "loudness": ("loud deafening thunderous blaring intense powerful strong", "quiet soft faint hushed muted weak"),
    "contour": ("rising ascending increasing", "falling descending decreasing"),
    "brightness": ("bright crisp", "dark dull muffled"),
    "noisiness": ("noisy hissing atonal inharmonic", "tonal pure harmonic melodic"),
    "background": ("noisy", "clean"),
    "rhythm": ("steady continuous constant sustained", "pulsing pulsed intermittent fluctuating rhythmic"),
    "speed": ("fast rapid quick quickly", "slow slowly"),
    "duration": ("short brief", "long prolonged"),
    "space": ("reverberant echoing echoey distant", "dry close"),
    "timbre": ("buzzy rough harsh distorted", "smooth clean"),
}
ATTRIBUTE_VALUES: dict[str, tuple[frozenset[str], ...]] = {
    name: tuple(frozenset(v.split()) for v in values) for name, values in _ATTRIBUTE_WORDS.items()
}


def attribute_values(word: str) -> set[tuple[str, int]]:
    """(attribute, value index) pairs a word names ("louder" -> {("loudness", 0)}); empty if none."""
    w = normalise_word(word)
    forms = {w, lemma(w, "ADJ")}
    return {(name, i) for name, values in ATTRIBUTE_VALUES.items() for i, v in enumerate(values) if forms & v}

# Second halves of hyphenated compounds that make any compound acoustic: "low-frequency",
# "metallic-sounding", "poor-quality", "fast-paced", "high-volume", "bright-toned".
ACOUSTIC_COMPOUND_HEADS = frozenset("pitched sounding toned quality frequency volume paced tempo fi".split())

# The original's `remove_dummy` stop-list (sentence_utils.py), verbatim; multi-word entries never match a
# single token but are kept for fidelity.
NON_DESCRIPTIVE = frozenset([
    "other", "most", "some", "any", "several", "many", "few", "all", "each", "every", "another", "both",
    "either", "neither", "such", "more", "less", "a few", "a lot", "much", "little", "none", "no one",
    "somebody", "someone", "something", "somewhere", "used", "audio", "best", "due", "recorded", "various",
    "video", "meant", "easy", "737-800", "personal", "external", "overall", "sound", "mobile", "designed",
    "well-defined", "detailed", "suitable", "small", "third", "second", "fourth", "fifth", "first",
    "related", "different", "actual", "kitchen", "*", "2-3", "everyday", "common",
])

# NLTK's English stopword list (179 words) plus the clitic tokens our tokenizer produces.
STOPWORDS = frozenset("""
    i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he
    him his himself she she's her hers herself it it's its itself they them their theirs themselves what
    which who whom this that that'll these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about against between
    into through during before after above below to from up down in out on off over under again further
    then once here there when where why how all any both each few more most other some such no nor not
    only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain
    aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
    ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't
    won won't wouldn wouldn't n't 's 're 've 'll 'd 'm
""".split())

# Tokens that negate a following adjective (the original used only "no" and "not"; our tokenizer splits
# "isn't" into "is" + "n't", so "n't" must count too).
NEGATORS = frozenset(["no", "not", "n't", "never", "without", "nor"])

CLAUSE_PUNCTUATION = frozenset(",.;:!?")
# Without a part of speech, a word is lemmatised as the first of these that it can be.
_POS_ORDER = ("NOUN", "ADJ", "VERB", "ADV", "AUX")


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of `text` (`word_tokenize`'s: hyphenated compounds whole, "isn't" -> "is", "n't";
    "_" as a space: "noise_hiss" -> "noise", "hiss") and its clause punctuation; other symbols are dropped."""
    return [t for t in word_tokenize(str(text).lower().replace("_", " "))
            if t in CLAUSE_PUNCTUATION or any(ch.isalnum() for ch in t)]


@functools.lru_cache(maxsize=65536)
def normalise_word(word: str) -> str:
    """A word or spaced compound as one token: " 'High pitched' " -> "high-pitched"."""
    return "-".join(t for t in tokens(word) if t not in CLAUSE_PUNCTUATION)


@functools.lru_cache(maxsize=None)
def lemma(word: str, pos: str | None = None) -> str:
    """The dictionary lemma of a lower-case token: rumbles -> rumble, chirping -> chirp, louder -> loud.

    `pos` is a universal part of speech ("NOUN", "VERB", "ADJ", ...); without one, the lemma for the first of
    NOUN, ADJ, VERB, ADV, AUX that the word can be (lower -> low, cleaner -> cleaner). A hyphenated compound is
    lemmatised on its last part (click-trains -> click-train). A word the dictionary does not know (or not as
    `pos`) is its own lemma.
    """
    head, dash, last = word.rpartition("-")
    found = getAllLemmas(last, pos) if pos else getAllLemmas(last)
    return head + dash + next((found[p][0] for p in ((pos,) if pos else _POS_ORDER) if p in found), last)


@functools.lru_cache(maxsize=65536)
def lemmas(text: str) -> tuple[str, ...]:
    """The lemmas of `tokens(text)`, punctuation as is: "Low rumbles." -> ("low", "rumble", ".")."""
    return tuple(lemma(t) for t in tokens(text))


def find(phrase: str, text: str) -> int | None:
    """Where the phrase's words first occur in the text, whole, consecutive and up to inflection (the position of
    its first token), or None: "low_rumble" is at 2 in "they are low rumbles", "tone" is in "tones"; "rain" is
    not in "train", "his" not in "hissing"."""
    found = find_phrases(lemmas(text), {lemmas(phrase)})
    return found[0][0] if found else None


def find_phrases(words: Sequence[str], phrases: Collection[tuple[str, ...]]) -> list[tuple[int, tuple[str, ...]]]:
    """(position, phrase) of the `phrases` (lemma tuples) in `words` (a text's lemmas): longest first, left to
    right, never overlapping."""
    longest = max(map(len, phrases), default=0)
    found, i = [], 0
    while i < len(words):
        n = next((n for n in range(min(longest, len(words) - i), 0, -1) if tuple(words[i:i + n]) in phrases), 0)
        if n:
            found.append((i, tuple(words[i:i + n])))
        i += max(n, 1)
    return found


def is_acoustic(word: str) -> bool:
    """Whether `word` can describe the tone, emotion or acoustic features of a sound (offline lexicon).

    Accepts the lexicon's words, their comparative/superlative forms ("louder", "quietest"),
    hyphenated compounds whose head is acoustic ("low-frequency", "metallic-sounding") or whose parts
    are all acoustic ("loud-rhythmic"), and spaced compounds ("high pitched").
    """
    w = normalise_word(word)
    if not w:
        return False
    if w in ALL_ACOUSTIC_ADJECTIVES or lemma(w, "ADJ") in ALL_ACOUSTIC_ADJECTIVES:
        return True
    if "-" in w:
        parts = [p for p in w.split("-") if p]
        if parts and parts[-1] in ACOUSTIC_COMPOUND_HEADS:
            return True
        return bool(parts) and all(is_acoustic(p) for p in parts)
    return False
