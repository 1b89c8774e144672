"""The offline default captioner: measures each waveform (acoustic_features), names the type of sound with the
words a person would use (a pure tone, a buzzy harmonic tone, a rising chirp, a vibrato or tremolo tone, a noise
hiss, a low rumble, a click train, percussive hits, ...) and writes two plain English sentences: what it is
(loudness, pitch) and what it does (rhythm, background, reverberation).

Loudness (loud / quiet), brightness (bright / dark) and noisiness (noisy) are relative to the probing set: a clip is
loud when its level is above the set's `high_percentile` (`fit_reference` measures the set, `use_reference`
applies it); absolute thresholds are kept where physics fixes them (Hz, rates, seconds, silence, SNR). Without a
reference these words are left out.

It sees only the audio (Clip.wave, Clip.sample_rate), never labels or manifests. Phrasing varies between clips
but is deterministic: the wording is drawn with a random generator seeded by the clip's audio content. The second
sentence names the sound again ("The chirp is pulsing ...") and keeps verb forms the lexicon POS tagger reads
right, so the offline summaries (rule_summary.extractive_summary) find the phrases clips share.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from and_lightning.describe.acoustic_features import AcousticMeasurements, measure_clip
from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.captioners.cached import audio_sha256
from and_lightning.store.hashing import hash_obj

_DEFAULT_SETTINGS = {"analysis_rate": 16000, "fmin": 40.0, "fmax": 4000.0}  # measurement settings
# How the probing set's percentiles are taken (captioner.reference): every clip (clips=None) or a seeded sample.
_DEFAULT_REFERENCE = {"clips": None, "seed": 0, "low_percentile": 25.0, "high_percentile": 75.0}
# Measurements whose words are relative to the probing set: (word below its low percentile, word above its high one)
RELATIVE_WORDS = {"active_rms_dbfs": ("quiet", "loud"), "centroid_hz": ("dark", "bright"), "flatness": (None, "noisy")}


@dataclass(frozen=True)
class AcousticThresholds:
    """Where measurements turn into words (levels in dBFS = 20*log10(RMS); a full-scale sine is -3 dBFS). Loudness,
    brightness and noisiness are not here: they are relative to the probing set (RELATIVE_WORDS)."""

    silence_dbfs: float = -70.0          # loudest 10 ms below this: near silence
    low_pitch_hz: float = 250.0          # f0 below: low-pitched
    high_pitch_hz: float = 1000.0        # f0 above: high-pitched (between: mid-pitched)
    rumble_max_centroid_hz: float = 500.0  # a noise with its spectral centroid below this is a rumble
    tonal_min_periodicity: float = 0.86  # periodicity of the loudest frames of a pitched sound (else a noise)
    hiss_max_periodicity: float = 0.5    # a noise below this is a broadband hiss; between: partly tonal
    rumble_min_low_share: float = 0.3    # a noise with this share of its power below 150 Hz is a rumble
    buzzy_min_richness: float = 0.2      # share of harmonic energy above the fundamental: a buzzy harmonic tone
    pitch_slope_st_s: float = 2.0        # |pitch slope| in semitones per second: rising / falling
    fast_slope_st_s: float = 12.0        # ... at least this: "quickly"; below twice pitch_slope_st_s: "slowly"
    chirp_min_slope_st_s: float = 8.0    # a pitch sweep this fast ...
    sweep_min_st: float = 5.0            # ... spanning this many semitones is a chirp
    vibrato_min_wobble_st: float = 0.3   # RMS wavering of the pitch around a straight line: vibrato
    vibrato_min_extent_st: float = 0.3   # ... or (long sounds) a peak-to-peak modulation at one 3-12 Hz rate
    vibrato_min_purity: float = 0.5      # ... holding this share of the modulation
    flutter_min_strength: float = 0.5    # periodic 8-18 Hz loudness modulation while sounding: tremolo
    click_min_strength: float = 0.35     # periodic 18-60 Hz loudness modulation while sounding: a click train
    min_ripple: float = 0.25             # ... either needs this depth (std / mean of the fast modulation)
    min_hits: int = 2                    # struck events (sharp rise, at once dying away): percussive hits
    struck_max_flat_share: float = 0.35  # ... or a level that is almost never held (share of flat 5 ms steps) ...
    struck_min_decay_dominance: float = 0.15  # ... and falls more often than it rises
    pulse_min_gaps: int = 2              # silences inside the sound: it pulses on and off
    pulse_min_strength: float = 0.5      # envelope autocorrelation peak for a regular rhythm
    gap_pulse_min_strength: float = 0.25  # ... enough, with one silence inside the sound, for pulsing
    tremolo_min_transition: float = 0.25  # smooth modulation: this share of time between its on and off levels
    min_tremolo_hz: float = 4.5          # regular smooth modulation from this rate ...
    max_pulse_hz: float = 20.0           # ... to this one is a tremolo (slower: pulsing, or swelling)
    max_swell_hz: float = 2.0            # slower smooth modulation swells and fades
    click_max_s: float = 0.025           # regular events this short are clicks ...
    click_max_duty: float = 0.3          # ... when the clip is loud (within 25 dB of its peak) at most this share of time
    hit_max_attack_s: float = 0.03       # a single percussive hit rises this fast ...
    hit_max_decay_shape: float = 1.6     # ... and decays like an exponential (1 = exactly; hold-then-stop >> 1)
    long_decay_s: float = 0.5            # a hit taking longer than this to fall 20 dB rings out
    steady_max_depth_db: float = 4.0     # level range (interquartile, while on) of a steady sound
    continuous_min_share: float = 0.5    # one event covering this share of the clip is continuous, not a burst
    clean_snr_db: float = 20.0           # signal minus background at least this: clean background
    noisy_snr_db: float = 12.0           # ... below this: noisy background
    dry_max_rt60_s: float = 0.15         # decay after offsets (RT60 estimate) at most this: dry
    reverberant_min_rt60_s: float = 0.3  # ... at least this: reverberant


# What each sound type is called: the words a person would use for it.
KINDS = ("pure tone", "harmonic tone", "chord", "rising chirp", "falling chirp", "vibrato tone", "tremolo tone",
         "noise hiss", "low rumble", "noise", "click train", "percussive hits", "percussive hit", "silence")


@dataclass(frozen=True)
class SoundTraits:
    """The categorical description of one clip that the caption is written from."""

    kind: str                      # one of KINDS: the type of sound
    loudness: str                  # silent | quiet | moderate | loud
    register: str | None           # low | mid | high (sounds with a pitch)
    f0_hz: float                   # the pitch named (a chord's lowest strong partial)
    f0_start_hz: float
    f0_end_hz: float
    pitch_motion: str | None       # rising | falling: a tone's glide, slower than a chirp | None
    pitch_speed: str               # quickly | slowly | "": how fast a chirp sweeps or a tone glides
    brightness: str | None         # dark | bright
    noisiness: str | None          # noisy (a flat, noise-like spectrum)
    pattern: str                   # steady | fluctuating | pulsing | swelling | burst | irregular
    rate_hz: float                 # repetition rate of pulsing / swelling (NaN if unknown)
    mod_rate_hz: float             # tremolo / vibrato / click rate (NaN if unknown)
    duration_s: float              # length of a single burst
    ringing: bool | None           # hits: ring out (True) or die away quickly (False)
    background: str | None         # clean | noisy
    room: str | None               # dry | reverberant


def _kind(m: AcousticMeasurements, th: AcousticThresholds) -> tuple[str, float]:
    """(sound type, its modulation rate in Hz or NaN) from the measurements (pure)."""
    nan = float("nan")
    pitched = m.loud_periodicity >= th.tonal_min_periodicity and math.isfinite(m.f0_hz)
    regular = math.isfinite(m.env_rate_hz) and m.env_strength >= th.pulse_min_strength
    if m.click_strength >= th.click_min_strength and m.ripple >= th.min_ripple:
        return "click train", m.click_rate_hz
    if (regular and m.event_median_s <= th.click_max_s and m.n_events >= 2 and m.env_rate_hz <= 60.0
            and m.active_fraction <= th.click_max_duty):  # slower, sparse clicks (2-60 per second)
        return "click train", m.env_rate_hz
    if pitched and m.flutter_strength >= th.flutter_min_strength and m.ripple >= th.min_ripple:
        return "tremolo tone", m.flutter_rate_hz
    if (pitched and regular and th.min_tremolo_hz <= m.env_rate_hz <= th.max_pulse_hz
            and m.transition_fraction >= th.tremolo_min_transition and m.env_depth_db >= th.steady_max_depth_db):
        return "tremolo tone", m.env_rate_hz
    if m.n_hits >= th.min_hits or (m.level_flat_share < th.struck_max_flat_share
                                   and m.decay_dominance >= th.struck_min_decay_dominance):
        return "percussive hits", nan
    if m.n_events == 1 and m.attack_s <= th.hit_max_attack_s and m.decay_shape <= th.hit_max_decay_shape:
        return "percussive hit", nan
    if not pitched:
        if m.low_share >= th.rumble_min_low_share or m.centroid_hz < th.rumble_max_centroid_hz:
            return "low rumble", nan
        if m.loud_periodicity < th.hiss_max_periodicity:
            return "noise hiss", nan
        return ("percussive hits" if m.n_hits >= 1 else "noise"), nan
    if m.lowest_harmonic >= 4:
        return "chord", nan
    span = 12.0 * math.log2(m.f0_end_hz / m.f0_start_hz)
    slope = m.pitch_slope_st_s
    if (math.isfinite(slope) and abs(slope) >= th.chirp_min_slope_st_s and abs(span) >= th.sweep_min_st
            and (span > 0) == (slope > 0)):
        return ("rising chirp" if span > 0 else "falling chirp"), nan
    if (m.pitch_wobble_st >= th.vibrato_min_wobble_st
            or (m.vibrato_extent_st >= th.vibrato_min_extent_st and m.vibrato_purity >= th.vibrato_min_purity)):
        return "vibrato tone", m.vibrato_rate_hz
    if m.harmonic_richness >= th.buzzy_min_richness:
        return "harmonic tone", nan
    return "pure tone", nan


def _pattern(m: AcousticMeasurements, th: AcousticThresholds, kind: str, mod_rate: float) -> tuple[str, float]:
    """(temporal pattern, its repetition rate or NaN) from the envelope measurements."""
    nan = float("nan")
    regular = math.isfinite(m.env_rate_hz) and m.env_strength >= th.pulse_min_strength
    if regular and m.env_rate_hz < th.max_swell_hz and m.transition_fraction >= th.tremolo_min_transition:
        return "swelling", m.env_rate_hz
    smooth_tremolo = kind == "tremolo tone" and math.isfinite(mod_rate) and abs(mod_rate - m.env_rate_hz) < 0.5
    some_rhythm = math.isfinite(m.env_rate_hz) and m.env_strength >= th.gap_pulse_min_strength
    # a click train's own gaps between clicks are not pulsing: gated clicks have far fewer gaps than clicks
    own_gaps = kind == "click train" and math.isfinite(mod_rate) and m.n_gaps > 0.5 * mod_rate * m.duration_s
    if not (smooth_tremolo or own_gaps) and (m.n_gaps >= th.pulse_min_gaps or (m.n_gaps >= 1 and some_rhythm)):
        rate = m.env_rate_hz if some_rhythm and m.env_rate_hz < th.min_tremolo_hz * 2 else nan
        return "pulsing", rate
    if kind == "percussive hits" or (kind == "click train" and m.n_gaps >= 1 and not own_gaps):
        return "irregular", nan
    if kind == "percussive hit" or (m.n_events == 1 and m.event_median_s < th.continuous_min_share * m.duration_s):
        return "burst", nan
    # a tremolo's or a click train's own modulation is not an uneven loudness
    uneven = m.env_depth_db >= th.steady_max_depth_db and kind not in ("tremolo tone", "click train")
    return ("fluctuating" if uneven else "steady"), nan


def relative_word(m: AcousticMeasurements, measure: str, reference: Mapping[str, Any] | None) -> str | None:
    """The RELATIVE_WORDS word of `measure` for this clip: below the reference's low cut, above its high cut, or
    None (between them, unmeasurable, or no reference)."""
    cuts = reference.get(measure) if reference else None
    value = getattr(m, measure)
    if cuts is None or not math.isfinite(value):
        return None
    below, above = RELATIVE_WORDS[measure]
    return below if value < cuts[0] else above if value > cuts[1] else None


def to_traits(m: AcousticMeasurements, th: AcousticThresholds,
              reference: Mapping[str, Any] | None = None) -> SoundTraits:
    """Turn measurements into categorical traits using the thresholds and the probing set's `reference` (pure)."""
    nan = float("nan")
    if m.peak_dbfs < th.silence_dbfs:
        return SoundTraits("silence", "silent", None, nan, nan, nan, None, "", None, None, "steady", nan, nan,
                           m.duration_s, None, None, None)
    loudness = relative_word(m, "active_rms_dbfs", reference) or "moderate"
    kind, mod_rate = _kind(m, th)
    scale = m.lowest_harmonic if kind == "chord" else 1
    f0, f0_start, f0_end = m.f0_hz * scale, m.f0_start_hz * scale, m.f0_end_hz * scale
    # hits and clicks ring at a pitch when at least 30 % of their sounding frames are periodic
    has_pitch = math.isfinite(f0) and (m.loud_periodicity >= th.tonal_min_periodicity
                                       or (kind in ("percussive hits", "percussive hit", "click train")
                                           and m.voiced_fraction >= 0.3))
    register = None
    if has_pitch:
        register = "low" if f0 < th.low_pitch_hz else "high" if f0 > th.high_pitch_hz else "mid"
    motion, speed = None, ""  # a chirp's speed, or a steady-pitched tone's slower glide
    slope = m.pitch_slope_st_s
    if (kind in ("pure tone", "harmonic tone", "chord", "rising chirp", "falling chirp") and math.isfinite(slope)
            and abs(slope) >= th.pitch_slope_st_s):
        motion = None if kind.endswith("chirp") else "rising" if slope > 0 else "falling"
        speed = "quickly" if abs(slope) >= th.fast_slope_st_s else "slowly" if abs(slope) < 2 * th.pitch_slope_st_s else ""
    brightness = relative_word(m, "centroid_hz", reference)
    pattern, rate = _pattern(m, th, kind, mod_rate)
    percussive = kind in ("percussive hits", "percussive hit")
    ringing = bool(not math.isfinite(m.decay_s) or m.decay_s > th.long_decay_s) if percussive else None
    background = None
    if math.isfinite(m.snr_db):
        background = "clean" if m.snr_db >= th.clean_snr_db else "noisy" if m.snr_db < th.noisy_snr_db else None
    room = None
    if kind not in ("percussive hits", "percussive hit", "click train") and m.n_offsets > 0 and math.isfinite(m.rt60_s):
        room = ("dry" if m.rt60_s <= th.dry_max_rt60_s
                else "reverberant" if m.rt60_s >= th.reverberant_min_rt60_s else None)
    return SoundTraits(kind, loudness, register, f0, f0_start, f0_end, motion, speed, brightness,
                       relative_word(m, "flatness", reference), pattern, rate, mod_rate, m.event_median_s, ringing,
                       background, room)


# ----------------------------------------------------------------------------------------------- phrasing


def _hz(f: float) -> str:
    """A frequency as a person would say it: two significant digits (2100, 440, 95)."""
    digits = max(0, int(math.floor(math.log10(max(f, 1.0)))) - 1)
    return str(int(round(f, -digits)))


def _rate(r: float) -> str:
    return str(int(round(r))) if r >= 1.95 else f"{r:.1f}"


def _seconds(s: float) -> str:
    return f"{s:.1f}" if s >= 0.1 else f"{s:.2f}"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(words: list[str]) -> str:
    return " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]


def _adjectives(t: SoundTraits) -> list[str]:
    """Loudness, pitch register, noisiness (of sounds not named as noises) and (for noises, clicks and hits)
    brightness."""
    adj = [t.loudness] if t.loudness in ("loud", "quiet") else []
    if t.register:
        adj.append(f"{t.register}-pitched")
    if t.noisiness and t.kind not in ("noise hiss", "low rumble", "noise"):
        adj.append(t.noisiness)
    if t.brightness and t.kind in ("noise hiss", "noise", "click train", "percussive hits", "percussive hit"):
        adj.append(t.brightness)
    elif t.kind == "low rumble" and t.brightness == "dark":
        adj.append("dark")
    return adj


def _head(t: SoundTraits, rng: random.Random) -> tuple[str, str, bool]:
    """(noun phrase naming the sound type, what follows it, plural?). The type is always named the same way, so
    captions of one type share their noun phrase (summaries find it; DB matches it to the concept's words)."""
    r = _rate(t.mod_rate_hz) if math.isfinite(t.mod_rate_hz) else ""
    where = rng.choice([f" around {_hz(t.f0_hz)} Hz", f" at about {_hz(t.f0_hz)} Hz"]) if t.register else ""
    if t.kind == "pure tone":
        return "pure tone", where, False
    if t.kind == "harmonic tone":
        return "buzzy harmonic tone", where + ", rich in harmonics", False
    if t.kind == "chord":
        return rng.choice(["chord of tones", "chord-like tone"]), f" with its lowest note{where}", False
    if t.kind in ("rising chirp", "falling chirp"):
        up = t.kind == "rising chirp"
        speed = f" {t.pitch_speed}" if t.pitch_speed else ""
        sweep = f" sweeping{speed} {'up' if up else 'down'} from about {_hz(t.f0_start_hz)} to {_hz(t.f0_end_hz)} Hz"
        return t.kind, sweep, False
    if t.kind == "vibrato tone":
        how = f", its pitch wavering about {r} times per second" if r else ", its pitch wavering up and down"
        return "vibrato tone", where + how, False
    if t.kind == "tremolo tone":
        how = f", its loudness trembling about {r} times per second" if r else ", its loudness trembling"
        return "tremolo tone", where + how, False
    if t.kind == "noise hiss":
        return "noise hiss", "", False
    if t.kind == "low rumble":
        return "low rumble", "", False
    if t.kind == "noise":
        return "noisy, partly tonal sound", where, False
    if t.kind == "click train":
        how = f", about {r} clicks per second" if r else ""
        return "click train", how, False
    if t.kind == "percussive hit":
        return "single percussive hit", f"{where} that {'rings out slowly' if t.ringing else 'dies away quickly'}", False
    return "percussive hits", f"{where} that {'ring out slowly' if t.ringing else 'die away quickly'}", True


def _first_sentence(t: SoundTraits, rng: random.Random) -> str:
    """'A loud, high-pitched pure tone around 2100 Hz.' and equivalent wordings."""
    noun, tail, plural = _head(t, rng)
    adj = _adjectives(t)
    if t.pitch_motion:
        speed = f"{t.pitch_speed} " if t.pitch_speed else ""
        tail += f" with a {speed}{t.pitch_motion} pitch"
    form = rng.randrange(2) if len(adj) >= 2 and not plural and "," not in tail else 0
    if form == 1:  # "A pure tone around 440 Hz, loud and high-pitched."
        text = f"{_article(noun)}{tail}, {_join(adj)}"
    else:
        phrase = (", ".join(adj) + " " if adj else "") + noun
        text = (phrase if plural else _article(phrase)) + tail
    return text[:1].upper() + text[1:] + "."


# The second sentence's subject names the sound again, as a person describing it would ("The hiss pulses ...").
_SUBJECTS = {"pure tone": "The pure tone", "harmonic tone": "The harmonic tone", "chord": "The chord",
             "rising chirp": "The chirp", "falling chirp": "The chirp", "vibrato tone": "The vibrato tone",
             "tremolo tone": "The tremolo tone", "noise hiss": "The hiss", "low rumble": "The rumble",
             "noise": "The noise", "click train": "The clicks", "percussive hits": "The hits",
             "percussive hit": "The hit"}


def _second_sentence(t: SoundTraits, rng: random.Random) -> str:
    """Rhythm, background and room: 'The hiss is pulsing on and off about 3 times per second over a noisy
    background.' Verbs keep forms the lexicon tagger reads right ("is pulsing", not "pulses")."""
    r = _rate(t.rate_hz) if math.isfinite(t.rate_hz) else ""
    they = t.kind in ("percussive hits", "click train")
    subject = _SUBJECTS[t.kind]
    is_, s_ = ("are", "") if they else ("is", "s")
    clause = {
        "steady": f"{subject} {is_} steady",
        "fluctuating": f"{subject} {is_} uneven and fluctuating in loudness",
        "pulsing": f"{subject} {is_} pulsing on and off" + (f" about {r} times per second" if r else ""),
        "swelling": f"{subject} {is_} slowly swelling and fading, about once every {_seconds(1 / t.rate_hz)} s",
        "irregular": f"{subject} {is_} coming at irregular times",
        "burst": "" if t.kind == "percussive hit" else
        f"{subject} {'is short, lasting' if t.duration_s < 0.3 else 'lasts'} about {_seconds(t.duration_s)} s,",
    }.get(t.pattern, "")
    back = {"clean": rng.choice(["over a clean background", "against a clean background"]),
            "noisy": rng.choice(["over a noisy background", "against a noisy background"])}.get(t.background or "", "")
    room = {"reverberant": "with a reverberant tail", "dry": f"and sound{s_} dry"}.get(t.room or "", "")
    if not clause and back:
        clause = f"{subject} {is_} heard"
    if not clause and room:
        clause, room = (f"{subject} sound{s_} dry", "") if t.room == "dry" else (f"{subject} {is_} heard", room)
    if not clause:
        return ""
    text = clause + (f" {back}" if back else "")
    text += ("," if room.startswith("with") else "") + f" {room}" if room else ""
    return text.rstrip(",") + "."


def write_caption(t: SoundTraits, rng: random.Random) -> str:
    """One or two sentences from the traits; `rng` picks among equivalent wordings."""
    if t.kind == "silence":
        return rng.choice(["Near silence, with no clear sound.", "Almost silent; no clear sound can be heard."])
    first = _first_sentence(t, rng)
    second = _second_sentence(t, rng)
    return f"{first} {second}" if second else first


def content_seed(clip: Clip) -> int:
    """A 64-bit seed from the audio content (the caption cache's audio hash), for deterministic wording."""
    return int(audio_sha256(clip)[:16], 16)


class AcousticCaptioner(Captioner):
    """Captions clips from signal measurements alone (loudness, pitch, timbre, rhythm, background, reverb).

    thresholds: overrides of AcousticThresholds fields. reference: how the probing set's percentiles are taken
    (`_DEFAULT_REFERENCE`: clips = None for every clip or a seeded sample of that many, low_percentile,
    high_percentile). analysis_rate/fmin/fmax: measurement settings. `prompt` (the caption cache key) is "" with
    the default settings, else a short hash of the changed ones, plus a hash of the reference once one is used,
    so cached captions are never reused across settings or probing sets.
    """

    name = "acoustic"
    model = "acoustic-v4"  # bumped when the measurements change (v4: librosa STFT, periodic Hann window)

    def __init__(self, thresholds: Mapping[str, Any] | None = None, reference: Mapping[str, Any] | None = None,
                 analysis_rate: int = 16000, fmin: float = 40.0, fmax: float = 4000.0) -> None:
        given = dict(thresholds or {})
        known = {f.name for f in fields(AcousticThresholds)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"captioner.thresholds: unknown key(s) {unknown}; expected some of {sorted(known)}")
        try:
            self.thresholds = AcousticThresholds(**{k: type(getattr(AcousticThresholds, k))(v) for k, v in given.items()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"captioner.thresholds: every value must be a number ({e})") from e
        rs = {**_DEFAULT_REFERENCE, **dict(reference or {})}
        unknown = sorted(set(rs) - set(_DEFAULT_REFERENCE))
        if unknown:
            raise ValueError(f"captioner.reference: unknown key(s) {unknown}; "
                             f"expected some of {sorted(_DEFAULT_REFERENCE)}")
        try:
            rs = {"clips": None if rs["clips"] is None else int(rs["clips"]), "seed": int(rs["seed"]),
                  "low_percentile": float(rs["low_percentile"]), "high_percentile": float(rs["high_percentile"])}
        except (TypeError, ValueError) as e:
            raise ValueError(f"captioner.reference: clips must be null or a count, the others numbers ({e})") from e
        if not 0 <= rs["low_percentile"] <= rs["high_percentile"] <= 100:
            raise ValueError(f"captioner.reference: need 0 <= low_percentile <= high_percentile <= 100, got "
                             f"{rs['low_percentile']} and {rs['high_percentile']}")
        if rs["clips"] is not None and rs["clips"] < 1:
            raise ValueError(f"captioner.reference.clips: expected null (every clip) or >= 1, got {rs['clips']}")
        self.reference_settings = rs
        if not 0 < fmin < fmax < analysis_rate / 2:
            raise ValueError(f"captioner: need 0 < fmin < fmax < analysis_rate/2, got fmin={fmin}, fmax={fmax}, "
                             f"analysis_rate={analysis_rate}")
        self.analysis_rate, self.fmin, self.fmax = int(analysis_rate), float(fmin), float(fmax)
        changed = {k: v for k, v in asdict(self.thresholds).items() if v != getattr(AcousticThresholds, k)}
        settings = {"analysis_rate": self.analysis_rate, "fmin": self.fmin, "fmax": self.fmax}
        changed.update({k: v for k, v in settings.items() if v != _DEFAULT_SETTINGS[k]})
        changed.update({k: v for k, v in rs.items() if v != _DEFAULT_REFERENCE[k]})
        self._settings = f"settings:{hash_obj(changed)[:12]}" if changed else ""
        self.prompt = self._settings
        self.reference: dict[str, Any] | None = None
        self._measured: dict[str, AcousticMeasurements] = {}  # audio sha256 -> measurements (of fit_reference)

    def measure(self, clip: Clip) -> AcousticMeasurements:
        """The measurements of one clip (raises ValueError naming the clip if its audio is unusable)."""
        wave = np.asarray(clip.wave)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"clip {clip.clip_id!r}: expected a non-empty mono waveform [T], got shape {wave.shape}")
        if not np.all(np.isfinite(wave)):
            raise ValueError(f"clip {clip.clip_id!r}: waveform contains NaN or infinite samples")
        if clip.sample_rate <= 0:
            raise ValueError(f"clip {clip.clip_id!r}: sample_rate must be positive, got {clip.sample_rate}")
        return measure_clip(wave, int(clip.sample_rate), analysis_rate=self.analysis_rate, fmin=self.fmin,
                            fmax=self.fmax, silence_dbfs=self.thresholds.silence_dbfs)

    def reference_ids(self, clip_ids: Sequence[str]) -> list[str]:
        """The probing clips `fit_reference` measures: all, or a sample of `reference.clips` drawn with its seed."""
        n = self.reference_settings["clips"]
        if n is None or n >= len(clip_ids):
            return list(clip_ids)
        pick = np.random.default_rng(self.reference_settings["seed"]).choice(len(clip_ids), n, replace=False)
        return [clip_ids[i] for i in sorted(pick)]

    def fit_reference(self, clips: Iterable[Clip]) -> dict[str, Any]:
        """The probing set's reference: the low and high percentiles of each RELATIVE_WORDS measurement over the
        clips that are not silent (JSON; None where no clip is measurable). The measurements are kept, so
        captioning the same clips does not measure them again."""
        rows = []
        for clip in clips:
            m = self._measured[audio_sha256(clip)] = self.measure(clip)
            if m.peak_dbfs >= self.thresholds.silence_dbfs:
                rows.append([getattr(m, k) for k in RELATIVE_WORDS])
        values = np.asarray(rows, dtype=np.float64).reshape(-1, len(RELATIVE_WORDS))
        q = [self.reference_settings["low_percentile"], self.reference_settings["high_percentile"]]
        out: dict[str, Any] = {"clips": len(rows), "percentiles": q}
        for j, k in enumerate(RELATIVE_WORDS):
            v = values[np.isfinite(values[:, j]), j]
            out[k] = [round(float(x), 6) for x in np.percentile(v, q)] if len(v) else None
        return out

    def use_reference(self, reference: Mapping[str, Any]) -> None:
        """Word loudness, brightness and noisiness relative to `reference` (`fit_reference`); it enters `prompt`."""
        self.reference = dict(reference)
        self.prompt = ";".join(filter(None, [self._settings, f"reference:{hash_obj(self.reference)[:12]}"]))

    def traits(self, clip: Clip) -> SoundTraits:
        """The categorical description of one clip."""
        m = self._measured.get(audio_sha256(clip)) or self.measure(clip)
        return to_traits(m, self.thresholds, self.reference)

    def caption(self, clips: list[Clip]) -> list[str]:
        """One caption per clip, in order."""
        return [write_caption(self.traits(c), random.Random(content_seed(c))) for c in clips]
