"""The offline default captioner: measures each waveform (acoustic_features) and writes one or two plain English
sentences with acoustic-lexicon words (loud, high-pitched, rising, pulsing, reverberant, ...).

It sees only the audio (Clip.wave, Clip.sample_rate), never labels or manifests. Phrasing varies between clips
but is deterministic: the wording is drawn with a random generator seeded by the clip's audio content.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from and_lightning.describe.acoustic_features import AcousticMeasurements, measure_clip
from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.captioners.cached import audio_sha256
from and_lightning.store.hashing import hash_obj

_DEFAULT_SETTINGS = {"analysis_rate": 16000, "fmin": 40.0, "fmax": 4000.0}  # measurement settings


@dataclass(frozen=True)
class AcousticThresholds:
    """Where measurements turn into words (levels in dBFS = 20*log10(RMS); a full-scale sine is -3 dBFS)."""

    silence_dbfs: float = -70.0          # loudest 10 ms below this: near silence
    quiet_dbfs: float = -35.0            # RMS of the active part below this: quiet
    loud_dbfs: float = -18.0             # ... above this: loud
    low_pitch_hz: float = 250.0          # f0 below: low-pitched
    high_pitch_hz: float = 1000.0        # f0 above: high-pitched (between: mid-pitched)
    dark_hz: float = 500.0               # spectral centroid below: dark
    bright_hz: float = 2500.0            # spectral centroid above: bright
    tonal_min_periodicity: float = 0.7   # median YIN periodicity for a pitched (tonal / buzzy) sound
    noisy_max_periodicity: float = 0.45  # ... at most this, or flatness above noisy_min_flatness: noisy
    noisy_min_flatness: float = 0.3
    buzzy_min_richness: float = 0.2      # share of harmonic energy above the fundamental: buzzy
    pitch_slope_st_s: float = 2.0        # |pitch slope| in semitones per second: rising / falling
    fast_slope_st_s: float = 12.0        # ... at least this: "quickly"; below twice pitch_slope: "slowly"
    sweep_min_st: float = 5.0            # a rise/fall spanning this many semitones is named with its range
    vibrato_min_extent_st: float = 0.3   # peak-to-peak pitch modulation for vibrato
    vibrato_min_purity: float = 0.5      # share of the modulation at one rate (3-12 Hz)
    steady_max_depth_db: float = 6.0     # level range (95th-5th percentile while sounding) of a steady sound
    pulse_min_strength: float = 0.5      # envelope autocorrelation peak for a regular rhythm
    pulse_min_depth_db: float = 6.0      # ... and its level range (or >= 2 separate events)
    max_pulse_hz: float = 20.0           # faster regular modulation is heard as roughness, not rhythm
    tremolo_min_transition: float = 0.25  # share of time between on and off levels: smooth modulation
    min_tremolo_hz: float = 2.0          # slower smooth modulation swells and fades rather than trembles
    click_max_s: float = 0.025           # events this short are clicks
    hit_max_attack_s: float = 0.03       # a percussive hit rises this fast ...
    hit_max_decay_shape: float = 1.6     # ... and decays like an exponential (1 = exactly; hold-then-stop >> 1)
    long_decay_s: float = 0.5            # a hit taking longer than this to fall 20 dB rings out
    continuous_min_share: float = 0.7    # one event covering this share of the clip is continuous
    clean_snr_db: float = 20.0           # signal minus background at least this: clean background
    noisy_snr_db: float = 12.0           # ... below this: noisy background
    dry_max_rt60_s: float = 0.15         # decay after offsets (RT60 estimate) at most this: dry
    reverberant_min_rt60_s: float = 0.3  # ... at least this: reverberant


@dataclass(frozen=True)
class SoundTraits:
    """The categorical description of one clip that the caption is written from."""

    loudness: str                  # silent | quiet | moderate | loud
    source: str                    # tonal | buzzy | noisy | mixed
    chord: bool                    # pitched, but its lowest strong partial is the 4th+ harmonic: several tones
    register: str | None           # low | mid | high (pitched sounds only)
    f0_hz: float                   # the pitch named (a chord's lowest strong partial)
    f0_start_hz: float
    f0_end_hz: float
    pitch_motion: str | None       # rising | falling | steady
    pitch_speed: str               # quickly | slowly | ""
    sweep: bool                    # the rise/fall is large enough to name its range
    vibrato: bool
    brightness: str | None         # dark | bright
    pattern: str                   # steady | fluctuating | pulsing | tremolo | swelling | rough | clicks | click
    #                                hits | hit | irregular | burst
    rate_hz: float                 # repetition rate of pulsing / tremolo / rough / clicks / hits (NaN if irregular)
    duration_s: float              # length of a single burst
    ringing: bool | None           # hits: rings out (True) or dies away quickly (False)
    background: str | None         # clean | noisy
    room: str | None               # dry | reverberant


def to_traits(m: AcousticMeasurements, th: AcousticThresholds) -> SoundTraits:
    """Turn measurements into categorical traits using the thresholds (pure)."""
    nan = float("nan")
    if m.peak_dbfs < th.silence_dbfs:
        return SoundTraits("silent", "noisy", False, None, nan, nan, nan, None, "", False, False, None, "steady", nan,
                           m.duration_s, None, None, None)
    level = m.active_rms_dbfs
    loudness = "quiet" if level < th.quiet_dbfs else "loud" if level > th.loud_dbfs else "moderate"

    pitched = m.periodicity >= th.tonal_min_periodicity and m.voiced_fraction >= 0.5 and math.isfinite(m.f0_hz)
    if pitched:
        source = "buzzy" if m.harmonic_richness >= th.buzzy_min_richness else "tonal"
    elif m.periodicity <= th.noisy_max_periodicity or m.flatness >= th.noisy_min_flatness:
        source = "noisy"
    else:
        source = "mixed"
    chord = pitched and m.lowest_harmonic >= 4
    if chord:
        source = "tonal"  # its "richness" is the chord's own notes, not buzz
    scale = m.lowest_harmonic if chord else 1
    f0, f0_start, f0_end = m.f0_hz * scale, m.f0_start_hz * scale, m.f0_end_hz * scale
    show_pitch = pitched or (source == "mixed" and m.voiced_fraction >= 0.3 and math.isfinite(m.f0_hz))
    register = None
    if show_pitch:
        register = "low" if f0 < th.low_pitch_hz else "high" if f0 > th.high_pitch_hz else "mid"

    motion, speed, sweep = None, "", False
    if show_pitch and math.isfinite(m.pitch_slope_st_s):
        slope = m.pitch_slope_st_s
        if abs(slope) >= th.pitch_slope_st_s:
            motion = "rising" if slope > 0 else "falling"
            speed = ("quickly" if abs(slope) >= th.fast_slope_st_s
                     else "slowly" if abs(slope) < 2 * th.pitch_slope_st_s else "")
            span = 12.0 * math.log2(m.f0_end_hz / m.f0_start_hz)
            sweep = pitched and abs(span) >= th.sweep_min_st and (span > 0) == (slope > 0)
        else:
            motion = "steady"
    vibrato = bool(show_pitch and m.vibrato_extent_st >= th.vibrato_min_extent_st
                   and m.vibrato_purity >= th.vibrato_min_purity)
    brightness = "dark" if m.centroid_hz < th.dark_hz else "bright" if m.centroid_hz > th.bright_hz else None

    pattern, rate, ringing = _pattern(m, th)
    if pattern != "steady" and motion == "steady":
        motion = None  # "steady pitch" next to "pulsing" reads as a contradiction; a constant pitch goes unsaid

    background = None
    if math.isfinite(m.snr_db):
        background = "clean" if m.snr_db >= th.clean_snr_db else "noisy" if m.snr_db < th.noisy_snr_db else None
    room = None
    if pattern not in ("click", "clicks", "hit", "hits") and m.n_offsets > 0 and math.isfinite(m.rt60_s):
        room = ("dry" if m.rt60_s <= th.dry_max_rt60_s
                else "reverberant" if m.rt60_s >= th.reverberant_min_rt60_s else None)
    return SoundTraits(loudness, source, chord, register, f0, f0_start, f0_end, motion, speed, sweep,
                       vibrato, brightness, pattern, rate, m.event_median_s, ringing, background, room)


def _pattern(m: AcousticMeasurements, th: AcousticThresholds) -> tuple[str, float, bool | None]:
    """(temporal pattern, repetition rate, rings out?) from the envelope measurements."""
    nan = float("nan")
    percussive = (m.attack_s <= th.hit_max_attack_s and math.isfinite(m.decay_shape)
                  and m.decay_shape <= th.hit_max_decay_shape)
    ringing = bool(not math.isfinite(m.decay_s) or m.decay_s > th.long_decay_s) if percussive else None
    regular = (math.isfinite(m.env_rate_hz) and m.env_strength >= th.pulse_min_strength
               and (m.n_events >= 2 or m.env_depth_db >= th.pulse_min_depth_db))
    short = m.event_median_s <= th.click_max_s
    if regular:
        if m.env_rate_hz > th.max_pulse_hz:
            return "rough", m.env_rate_hz, None
        if short and m.n_events >= 2:
            return "clicks", m.env_rate_hz, None
        if m.transition_fraction >= th.tremolo_min_transition:
            return ("tremolo" if m.env_rate_hz >= th.min_tremolo_hz else "swelling"), m.env_rate_hz, None
        if percussive and m.n_events >= 2:
            return "hits", m.env_rate_hz, ringing
        return "pulsing", m.env_rate_hz, None
    if m.n_events == 1:
        if percussive:
            return ("click" if short else "hit"), nan, ringing
        if m.event_median_s >= th.continuous_min_share * m.duration_s:
            return ("steady" if m.env_depth_db < th.steady_max_depth_db else "fluctuating"), nan, None
        return "burst", nan, None
    if short:
        return "clicks", nan, None
    if percussive:
        return "hits", nan, ringing
    return "irregular", nan, None


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


def _noun(t: SoundTraits, rng: random.Random) -> tuple[str, bool]:
    """The head noun phrase of the first sentence and whether it is plural."""
    if t.pattern == "clicks":
        return rng.choice(["repeated clicks", "clicking sounds"]), True
    if t.pattern == "click":
        return rng.choice(["click", "short click"]), False
    if t.pattern in ("hit", "hits"):
        kind = {"tonal": "" if t.register else "pitched ", "buzzy": "buzzy ", "noisy": "noisy "}.get(t.source, "")
        return f"{kind}percussive hit" + ("s" if t.pattern == "hits" else ""), t.pattern == "hits"
    if t.chord:
        return rng.choice(["chord-like tone", "chord of tones"]), False
    if t.source == "tonal":
        options = ["tone", "tonal sound"] + (["hum"] if t.register == "low" and t.pattern == "steady" else [])
        return rng.choice(options), False
    if t.source == "buzzy":
        return rng.choice(["buzzy tone", "buzzy sound"]), False
    if t.source == "noisy":
        if t.brightness == "dark":
            return rng.choice(["rumbling noise", "rumbling sound"]), False
        if t.brightness == "bright":
            return rng.choice(["hissing noise", "hissing sound"]), False
        return rng.choice(["noise", "noisy sound"]), False
    return (rng.choice(["sound", "partly tonal sound"]) if t.register else "sound"), False


def _adjectives(t: SoundTraits) -> list[str]:
    adj = [t.loudness] if t.loudness in ("loud", "quiet") else []
    if t.register:
        adj.append(f"{t.register}-pitched")
    # "rumbling"/"hissing" already say dark/bright; a pure tone's brightness is its pitch, already said
    said = t.source == "tonal" or (t.source == "noisy" and t.pattern not in ("click", "clicks", "hit", "hits"))
    if t.brightness and not said:
        adj.append(t.brightness)
    return adj


def _pitch_phrases(t: SoundTraits, rng: random.Random) -> tuple[str, str]:
    """(where, how): ' around 440 Hz' and ' with a quickly rising pitch, wavering with vibrato' (leading
    spaces or commas; empty when the sound has no pitch)."""
    if not t.register:
        return "", ""
    if t.sweep:
        verb = "sweeping up" if t.pitch_motion == "rising" else "sweeping down"
        where = f" {verb} from about {_hz(t.f0_start_hz)} to {_hz(t.f0_end_hz)} Hz"
    else:
        where = rng.choice([f" around {_hz(t.f0_hz)} Hz", f" at about {_hz(t.f0_hz)} Hz"])
        if t.chord:
            where = f" with its lowest note{where}"
    how = ""
    if t.pitch_motion in ("rising", "falling"):
        w, before, after = t.pitch_motion, f"{t.pitch_speed} " if t.pitch_speed else "", \
            f" {t.pitch_speed}" if t.pitch_speed else ""
        how = rng.choice([f" with a {before}{w} pitch", f", {before}{w} in pitch", f" whose pitch keeps {w}{after}"])
    elif t.pitch_motion == "steady" and not t.vibrato:
        how = rng.choice([" holding a steady pitch", ", steady in pitch"])
    if t.vibrato:
        how += rng.choice([", wavering with vibrato", " with a wavering vibrato"])
    return where, how


def _first_sentence(t: SoundTraits, rng: random.Random) -> str:
    """'A loud, high-pitched tone around 2100 Hz with a quickly rising pitch.' and equivalent wordings."""
    noun, plural = _noun(t, rng)
    adj = _adjectives(t)
    where, how = _pitch_phrases(t, rng)
    if t.ringing is not None:
        verb = ("ring out slowly" if t.ringing else "die away quickly") if plural else \
            ("rings out slowly" if t.ringing else "dies away quickly")
        how += f" that {verb}"
    form = rng.randrange(3) if adj else 0
    if form == 2 and not plural and len(adj) >= 2:  # "A tone around 440 Hz, loud and high-pitched, rising in pitch."
        joined = " and ".join(adj) if len(adj) <= 2 else ", ".join(adj[:-1]) + " and " + adj[-1]
        text = f"{_article(noun)}{where}, {joined}" + ("," + how if how.startswith(" ") else how)
    else:
        phrase = (", ".join(adj) + " " if adj else "") + noun
        text = (phrase if form == 1 or plural else _article(phrase)) + where + how
    return text[:1].upper() + text[1:] + "."


def _second_sentence(t: SoundTraits, rng: random.Random) -> str:
    r = _rate(t.rate_hz) if math.isfinite(t.rate_hz) else ""
    clause = {
        "steady": rng.choice(["It is steady and continuous", "It stays steady", "The sound is steady"]),
        "fluctuating": rng.choice(["Its loudness is uneven and fluctuating", "It is continuous but fluctuating"]),
        "pulsing": rng.choice([f"It is pulsing about {r} times per second",
                               f"It keeps pulsing about {r} times a second",
                               f"It has a pulsing rhythm of about {r} per second"]),
        "rough": rng.choice([f"Its loudness flutters rapidly, about {r} times per second, giving a rough texture",
                             f"It has a rough, rattling texture from about {r} rapid flutters per second"]),
        "swelling": rng.choice([f"Its loudness slowly swells and fades, about once every {_seconds(1 / t.rate_hz)} s",
                                f"It keeps swelling and fading, once every {_seconds(1 / t.rate_hz)} s or so"])
        if r else "",
        "tremolo": rng.choice([f"Its loudness trembles with a tremolo about {r} times per second",
                               f"It has a trembling tremolo about {r} times per second"]),
        "clicks": rng.choice([f"The clicking repeats about {r} times per second",
                              f"It is clicking about {r} times a second"]) if r
        else "The clicking comes at irregular times",
        "hits": f"The hits repeat about {r} times per second" if r else "The hits come at irregular times",
        "irregular": rng.choice(["It comes in irregular bursts", "It starts and stops at irregular times"]),
        "burst": (rng.choice(["It is short, lasting", "It is brief, lasting"]) if t.duration_s < 0.3 else "It lasts")
        + f" about {_seconds(t.duration_s)} s",
    }.get(t.pattern, "")
    back = {"clean": rng.choice(["over a clean background", "against a clean background"]),
            "noisy": rng.choice(["over a noisy background", "against a noisy background"])}.get(t.background or "", "")
    room = {"reverberant": rng.choice(["with a reverberant tail", "with a reverberant, echoing tail"]),
            "dry": rng.choice(["and sounds dry", "and sounds dry and close"])}.get(t.room or "", "")
    if clause:
        text = clause + (f" {back}" if back else "")
        text += ("," if room.startswith("with") else "") + f" {room}" if room else ""
    elif back:
        text = rng.choice([f"The background is {t.background}", f"It stands out {back}"])
    elif room:
        text = "It sounds dry" if t.room == "dry" else "It has a reverberant tail"
    else:
        return ""
    return text + "."


def write_caption(t: SoundTraits, rng: random.Random) -> str:
    """One or two sentences from the traits; `rng` picks among equivalent wordings."""
    if t.loudness == "silent":
        return rng.choice(["Near silence, with no clear sound.", "Almost silent; no clear sound can be heard."])
    first = _first_sentence(t, rng)
    second = _second_sentence(t, rng)
    return f"{first} {second}" if second else first


def content_seed(clip: Clip) -> int:
    """A 64-bit seed from the audio content (the caption cache's audio hash), for deterministic wording."""
    return int(audio_sha256(clip)[:16], 16)


class AcousticCaptioner(Captioner):
    """Captions clips from signal measurements alone (loudness, pitch, timbre, rhythm, background, reverb).

    thresholds: overrides of AcousticThresholds fields. analysis_rate/fmin/fmax: measurement settings.
    `prompt` is "" with the default settings and a short hash of the changed ones otherwise, so cached
    captions are never reused across different settings.
    """

    name = "acoustic"
    model = "acoustic-v1"

    def __init__(self, thresholds: Mapping[str, Any] | None = None, analysis_rate: int = 16000,
                 fmin: float = 40.0, fmax: float = 4000.0) -> None:
        given = dict(thresholds or {})
        known = {f.name for f in fields(AcousticThresholds)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"captioner.thresholds: unknown key(s) {unknown}; expected some of {sorted(known)}")
        try:
            self.thresholds = AcousticThresholds(**{k: float(v) for k, v in given.items()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"captioner.thresholds: every value must be a number ({e})") from e
        if not 0 < fmin < fmax < analysis_rate / 2:
            raise ValueError(f"captioner: need 0 < fmin < fmax < analysis_rate/2, got fmin={fmin}, fmax={fmax}, "
                             f"analysis_rate={analysis_rate}")
        self.analysis_rate, self.fmin, self.fmax = int(analysis_rate), float(fmin), float(fmax)
        changed = {k: v for k, v in asdict(self.thresholds).items() if v != getattr(AcousticThresholds, k)}
        settings = {"analysis_rate": self.analysis_rate, "fmin": self.fmin, "fmax": self.fmax}
        changed.update({k: v for k, v in settings.items() if v != _DEFAULT_SETTINGS[k]})
        self.prompt = f"settings:{hash_obj(changed)[:12]}" if changed else ""

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

    def traits(self, clip: Clip) -> SoundTraits:
        """The categorical description of one clip."""
        return to_traits(self.measure(clip), self.thresholds)

    def caption(self, clips: list[Clip]) -> list[str]:
        """One caption per clip, in order."""
        return [write_caption(self.traits(c), random.Random(content_seed(c))) for c in clips]
