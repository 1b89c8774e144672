"""Word lists for Module C: acoustic adjectives (the offline acoustic filter), non-descriptive words
(the original's `remove_dummy` stop-list), English stopwords (NLTK's list, whose data is not available
offline) and negators."""
from __future__ import annotations

import re

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
    forms = {w, *_base_forms(w)}
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

_STRIP_RE = re.compile(r"^[^\w]+|[^\w]+$")


def normalise_word(word: str) -> str:
    """Lower-case, trim surrounding punctuation/quotes, join spaced compounds: " 'High pitched' " -> "high-pitched"."""
    return re.sub(r"\s+", "-", _STRIP_RE.sub("", word.strip().lower()))


def _base_forms(word: str) -> list[str]:
    """Candidate positive forms of a comparative/superlative: louder -> loud, noisier -> noisy,
    gentlest -> gentle, bigger -> big."""
    out = []
    for suffix in ("er", "est"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            out += [stem, stem + "e"]
            if stem.endswith("i"):
                out.append(stem[:-1] + "y")
            if len(stem) > 2 and stem[-1] == stem[-2]:
                out.append(stem[:-1])
    return out


def is_acoustic(word: str) -> bool:
    """Whether `word` can describe the tone, emotion or acoustic features of a sound (offline lexicon).

    Accepts the lexicon's words, their comparative/superlative forms ("louder", "quietest"),
    hyphenated compounds whose head is acoustic ("low-frequency", "metallic-sounding") or whose parts
    are all acoustic ("loud-rhythmic"), and spaced compounds ("high pitched").
    """
    w = normalise_word(word)
    if not w:
        return False
    if w in ALL_ACOUSTIC_ADJECTIVES or any(b in ALL_ACOUSTIC_ADJECTIVES for b in _base_forms(w)):
        return True
    if "-" in w:
        parts = [p for p in w.split("-") if p]
        if parts and parts[-1] in ACOUSTIC_COMPOUND_HEADS:
            return True
        return bool(parts) and all(is_acoustic(p) for p in parts)
    return False
