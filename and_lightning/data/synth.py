"""Synthetic probing set: ten sound sources whose acoustic attributes are drawn independently and recorded.

The framework's offline default dataset and the ground truth for judging neuron descriptions: every clip
carries its labels (`clip_attributes`) and every parameter that produced it (`ClipRecord.meta`). docs/synth.md
has the full description; in short:

Each clip (`clip_seconds` long, mono) holds one source (the class, `SOURCES`) that sounds during the first
`ACTIVE_FRACTION` (70 %) of the clip and then stops, so the reverberation tail and the background are audible
after it. Five attributes are drawn independently and uniformly per clip, by a numpy Generator seeded with
(seed, class index, clip index), so clip i of a class does not depend on `clips_per_class`:

- pitch low/mid/high: `pitch_hz` drawn log-uniformly in `PITCH_BANDS_HZ`. It is the sine frequency (pure_tone,
  tremolo_tone), the fundamental (harmonic_tone, vibrato_tone), the geometric centre of a two-octave sweep
  (rising_chirp, falling_chirp), the centre of a one-octave noise band 18 dB above a white floor (noise_hiss),
  the centre of a resonant noise band as strong as the sub-120 Hz body (low_rumble), the ring frequency of each
  click (click_train) and the frequency each drum-like hit settles to (percussive_hits).
- loudness quiet/loud: the clip's RMS level in dBFS (`gain_db`, the gain applied to the unit-RMS mix),
  drawn in `LOUDNESS_DBFS`; quiet and loud are >= 20 dB apart.
- rhythm steady/pulsed: pulsed sources pass through a hard on/off gate (50 % duty, 10 ms edges) at
  `pulse_rate_hz` (2.5-4 Hz) from phase `pulse_phase` (cycles); percussive hits fall inside its on-windows.
  tremolo_tone's own modulation is smooth, sinusoidal, full-depth and 2.5-6x faster (10-16 Hz).
- background clean/noisy: pink noise (> 50 Hz) over the whole clip, `snr_db` (12-20 dB) below the RMS of the
  (reverberated) source over the active part; clean clips have no background at all.
- reverb dry/reverberant: convolution with a direct impulse plus Gaussian noise decaying 60 dB in `rt60_s`
  (0.3-0.6 s) after 5 ms, `drr_db` (2-6 dB) weaker than the direct sound.

Files: 16-bit PCM WAVs in `<root>/audio/<source>/<clip_id>.wav`, then `<root>/manifest.json` (parameters, their
hash, one record per clip), written last and atomically: a manifest means a complete set, and a later call
with the same parameters loads it without generating anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy.signal import fftconvolve

from and_lightning.data.audio_io import save_audio
from and_lightning.data.clips import ClipRecord, DatasetIndex
from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj

GENERATOR_VERSION = 1  # bump when the audio a given set of parameters produces changes

SOURCES = [
    "pure_tone",
    "harmonic_tone",
    "rising_chirp",
    "falling_chirp",
    "noise_hiss",
    "low_rumble",
    "click_train",
    "tremolo_tone",
    "vibrato_tone",
    "percussive_hits",
]
ATTRIBUTES: dict[str, list[str]] = {
    "source": list(SOURCES),
    "pitch": ["low", "mid", "high"],
    "loudness": ["quiet", "loud"],
    "rhythm": ["steady", "pulsed"],
    "background": ["clean", "noisy"],
    "reverb": ["dry", "reverberant"],
}
PITCH_BANDS_HZ = {"low": (100.0, 250.0), "mid": (400.0, 900.0), "high": (1500.0, 3500.0)}
LOUDNESS_DBFS = {"quiet": (-58.0, -52.0), "loud": (-32.0, -26.0)}
PULSE_RATE_HZ = (2.5, 4.0)
TREMOLO_RATE_HZ = (10.0, 16.0)
VIBRATO_RATE_HZ = (5.0, 7.0)
VIBRATO_DEPTH_SEMITONES = (1.0, 1.5)
CLICK_RATE_HZ = (20.0, 40.0)
SNR_DB = (12.0, 20.0)
RT60_S = (0.3, 0.6)
DRR_DB = (2.0, 6.0)
ACTIVE_FRACTION = 0.7
MANIFEST = "manifest.json"
_FADE_S = 0.01
_GATE_EDGE_S = 0.01


def clip_attributes(record: ClipRecord) -> dict[str, str]:
    """Ground-truth attribute labels of a synthetic clip: {attribute: value} for every key of `ATTRIBUTES`."""
    out = {}
    for name, values in ATTRIBUTES.items():
        value = record.meta.get(name)
        if value not in values:
            raise ValueError(
                f"clip '{record.clip_id}': meta['{name}'] is {value!r}, expected one of {values} "
                "(is this a clip of the synthetic set?)"
            )
        out[name] = value
    return out


def generate_synth(
    root: str | Path,
    seed: int = 0,
    clips_per_class: int = 60,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    num_folds: int = 5,
) -> DatasetIndex:
    """Generate (or load from `root`, when already generated with the same parameters) the synthetic set."""
    check_params(clips_per_class, num_folds, sample_rate, clip_seconds, "clip_seconds")
    root = Path(root)
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "clips_per_class": int(clips_per_class),
        "sample_rate": int(sample_rate),
        "clip_seconds": float(clip_seconds),
        "num_folds": int(num_folds),
        "ranges": {
            "pitch_bands_hz": PITCH_BANDS_HZ, "loudness_dbfs": LOUDNESS_DBFS, "pulse_rate_hz": PULSE_RATE_HZ,
            "tremolo_rate_hz": TREMOLO_RATE_HZ, "vibrato_rate_hz": VIBRATO_RATE_HZ,
            "vibrato_depth_semitones": VIBRATO_DEPTH_SEMITONES, "click_rate_hz": CLICK_RATE_HZ, "snr_db": SNR_DB,
            "rt60_s": RT60_S, "drr_db": DRR_DB, "active_fraction": ACTIVE_FRACTION,
        },
    }
    params_hash = hash_obj(params)
    cached = load_manifest(root, params_hash)
    if cached is not None:
        return cached

    manifest_path = root / MANIFEST
    manifest_path.unlink(missing_ok=True)  # a stale manifest must never describe half-rewritten audio
    clips = []
    for label, source, i, clip_id, rel, rng in numbered_clips(seed, clips_per_class, "synth"):
        meta = draw_params(rng, source, clip_seconds)
        save_audio(root / rel, render(meta, rng, sample_rate, clip_seconds), sample_rate)
        clips.append({"clip_id": clip_id, "path": rel, "label": label, "fold": i % num_folds + 1, "meta": meta})
    remove_stale_audio(root, {c["path"] for c in clips})
    manifest = {"params": params, "params_hash": params_hash, "class_names": SOURCES,
                "attributes": ATTRIBUTES, "clips": clips}
    write_json(manifest_path, manifest)
    return _index(root, manifest)


def numbered_clips(seed: int, clips_per_class: int,
                   prefix: str) -> Iterator[tuple[int, str, int, str, str, np.random.Generator]]:
    """(label, source, index, clip id, audio path relative to the root, Generator) of every clip, class by class;
    clip i of class c draws from a Generator seeded with (seed, c, i)."""
    for label, source in enumerate(SOURCES):
        for i in range(clips_per_class):
            clip_id = f"{prefix}-{source}-{i:04d}"
            rng = np.random.default_rng([int(seed), label, i])
            yield label, source, i, clip_id, f"audio/{source}/{clip_id}.wav", rng


def check_params(clips_per_class: int, num_folds: int, sample_rate: int, seconds: float, seconds_name: str) -> None:
    """Refuse settings the generator cannot honour (ValueError naming the setting); `seconds`: a rendered clip's
    length, called `seconds_name`."""
    if clips_per_class < 1 or num_folds < 1:
        raise ValueError(f"clips_per_class and num_folds must be >= 1, got {clips_per_class}, {num_folds}")
    if sample_rate < 16000:
        raise ValueError(f"sample_rate must be >= 16000 (the high pitch band reaches 7.5 kHz), got {sample_rate}")
    if seconds < 0.5:
        raise ValueError(f"{seconds_name} must be >= 0.5, got {seconds}")


def load_manifest(root: Path, params_hash: str) -> DatasetIndex | None:
    """The cached set if `root` holds a readable manifest for `params_hash` whose audio files all exist."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if manifest["params_hash"] != params_hash:
            return None
        index = _index(root, manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(Path(r.path).is_file() for r in index.records):
        return None
    return index


def _index(root: Path, manifest: dict[str, Any]) -> DatasetIndex:
    """The index of a manifest (named by its "name", "synth" when it has none)."""
    records = [
        ClipRecord(c["clip_id"], str(root / c["path"]), int(c["label"]), int(c["fold"]), dict(c["meta"]))
        for c in manifest["clips"]
    ]
    return DatasetIndex(name=manifest.get("name", "synth"), records=records,
                        class_names=list(manifest["class_names"]))


def remove_stale_audio(root: Path, keep: set[str]) -> None:
    """Delete clips left by an earlier generation with other parameters (e.g. more clips per class)."""
    for path in (root / "audio").glob("*/synth-*.wav"):
        if path.relative_to(root).as_posix() not in keep:
            path.unlink()


# ---------------------------------------------------------------- drawing the parameters of one clip
def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 4) -> float:
    return round(float(rng.uniform(*bounds)), digits)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return round(float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1])))), 2)


def draw_params(rng: np.random.Generator, source: str, clip_seconds: float) -> dict[str, Any]:
    """Draw the five attributes independently, then their parameters and the source's own parameters."""
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}', expected one of {SOURCES}")
    labels = {name: str(rng.choice(values)) for name, values in ATTRIBUTES.items() if name != "source"}
    p: dict[str, Any] = {"source": source, **labels}
    p["pitch_hz"] = _log_uniform(rng, PITCH_BANDS_HZ[labels["pitch"]])
    p["gain_db"] = _uniform(rng, LOUDNESS_DBFS[labels["loudness"]], 2)
    pulsed = labels["rhythm"] == "pulsed"
    p["pulse_rate_hz"] = _uniform(rng, PULSE_RATE_HZ) if pulsed else None
    p["pulse_phase"] = _uniform(rng, (0.0, 1.0)) if pulsed else None
    p["snr_db"] = _uniform(rng, SNR_DB, 2) if labels["background"] == "noisy" else None
    reverberant = labels["reverb"] == "reverberant"
    p["rt60_s"] = _uniform(rng, RT60_S, 3) if reverberant else None
    p["drr_db"] = _uniform(rng, DRR_DB, 2) if reverberant else None
    p["active_seconds"] = round(ACTIVE_FRACTION * clip_seconds, 4)
    f = p["pitch_hz"]
    if source in ("rising_chirp", "falling_chirp"):
        lo, hi = round(f / 2, 2), round(f * 2, 2)
        p["start_hz"], p["end_hz"] = (lo, hi) if source == "rising_chirp" else (hi, lo)
    elif source == "harmonic_tone":
        p["num_harmonics"] = int(7500 // f)
    elif source == "tremolo_tone":
        p["tremolo_rate_hz"] = _uniform(rng, TREMOLO_RATE_HZ)
    elif source == "vibrato_tone":
        p["vibrato_rate_hz"] = _uniform(rng, VIBRATO_RATE_HZ)
        p["vibrato_depth_semitones"] = _uniform(rng, VIBRATO_DEPTH_SEMITONES, 3)
    elif source == "click_train":
        p["click_rate_hz"] = _uniform(rng, CLICK_RATE_HZ, 2)
    elif source == "percussive_hits":
        p["hit_times_s"] = _hit_times(rng, p)
        p["hit_decay_s"] = _uniform(rng, (0.03, 0.06), 3)
    return p


def _hit_times(rng: np.random.Generator, p: dict[str, Any]) -> list[float]:
    """4-7 hit onsets inside the active part (and inside the gate's on-windows when pulsed), sorted."""
    grid = np.arange(0.0, p["active_seconds"] - 0.05, 0.001)
    if p["rhythm"] == "pulsed":
        grid = grid[_square(grid, p["pulse_rate_hz"], p["pulse_phase"]) > 0]
    n = int(rng.integers(4, 8))
    return sorted(round(float(t), 3) for t in rng.choice(grid, size=n, replace=False))


# ---------------------------------------------------------------- rendering
def _square(t: np.ndarray, rate_hz: float, phase: float) -> np.ndarray:
    """1 during the first half of each gate cycle, 0 during the second (hard on/off at `rate_hz`)."""
    return (np.mod(rate_hz * t + phase, 1.0) < 0.5).astype(np.float64)


def _active_window(n: int, n_active: int, fade: int) -> np.ndarray:
    """1 over the first `n_active` samples with raised-cosine fades of `fade` samples, 0 afterwards."""
    w = np.zeros(n)
    w[:n_active] = 1.0
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    w[:fade] = ramp
    w[n_active - fade : n_active] = ramp[::-1]
    return w


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Convolve with a unit-sum Hann window of `width` samples (soft edges for gates and fades)."""
    win = np.hanning(width + 2)[1:-1]
    return np.convolve(x, win / win.sum(), mode="same")


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, psd) -> np.ndarray:
    """Gaussian noise of `n` samples whose power spectral density follows `psd(freqs_hz)`, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    x = np.fft.irfft(spec * np.sqrt(psd(freqs)), n)
    return x / np.sqrt(np.mean(x**2))


def _log_bump(freqs: np.ndarray, centre: float, sigma_octaves: float) -> np.ndarray:
    """Gaussian bump over log2-frequency centred at `centre` (1 at the centre)."""
    octaves = np.log2(np.maximum(freqs, 1.0) / centre)
    return np.exp(-0.5 * (octaves / sigma_octaves) ** 2)


def _phase(freq_hz: np.ndarray, sr: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq_hz) / sr


def _source(p: dict[str, Any], rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    """The dry, ungated source signal over the whole clip (any scale)."""
    s, f, n = p["source"], p["pitch_hz"], len(t)
    if s == "pure_tone":
        return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    if s == "harmonic_tone":
        ph = 2 * np.pi * f * t
        return sum(np.sin(k * ph) / np.sqrt(k) for k in range(1, p["num_harmonics"] + 1))
    if s in ("rising_chirp", "falling_chirp"):
        ratio = p["end_hz"] / p["start_hz"]
        freq = p["start_hz"] * ratio ** np.clip(t / p["active_seconds"], 0.0, 1.0)
        return np.sin(_phase(freq, sr))
    if s == "noise_hiss":
        return _shaped_noise(rng, n, sr, lambda fr: (1.0 + 10 ** 1.8 * _log_bump(fr, f, 0.35)) * (fr > 20))
    if s == "low_rumble":
        body = _shaped_noise(rng, n, sr, lambda fr: (fr > 20) / np.maximum(fr, 20.0) ** 2 / (1 + (fr / 120.0) ** 8))
        return body + _shaped_noise(rng, n, sr, lambda fr: _log_bump(fr, f, 0.15))
    if s == "click_train":
        tau = max(3.0 / f, 0.003)
        k = np.arange(int(5 * tau * sr)) / sr
        kernel = np.exp(-k / tau) * np.sin(2 * np.pi * f * k)
        kernel[0] += 0.5  # broadband tick at each click's onset
        train = np.zeros(n)
        train[(np.arange(0.0, t[-1], 1.0 / p["click_rate_hz"]) * sr).astype(int)] = 1.0
        return fftconvolve(train, kernel)[:n]
    if s == "tremolo_tone":
        lfo = 0.5 * (1 + np.sin(2 * np.pi * p["tremolo_rate_hz"] * t))
        return np.sin(2 * np.pi * f * t) * (1 - lfo)
    if s == "vibrato_tone":
        depth = p["vibrato_depth_semitones"] / 12
        ph = _phase(f * 2 ** (depth * np.sin(2 * np.pi * p["vibrato_rate_hz"] * t)), sr)
        return np.sin(ph) + 0.5 * np.sin(2 * ph) + 0.25 * np.sin(3 * ph)
    if s == "percussive_hits":
        out = np.zeros(n)
        k = np.arange(int(5 * p["hit_decay_s"] * sr)) / sr
        glide = f * (1 + 0.3 * np.exp(-k / 0.01))
        for onset in p["hit_times_s"]:
            hit = np.exp(-k / p["hit_decay_s"]) * np.sin(_phase(glide, sr))
            hit += 0.8 * np.exp(-k / 0.006) * rng.uniform(-1.0, 1.0, len(k))
            i = int(onset * sr)
            m = min(len(k), n - i)
            out[i : i + m] += rng.uniform(0.7, 1.0) * hit[:m]
        return out
    raise ValueError(f"unknown source '{s}'")


def _impulse_response(rng: np.random.Generator, rt60: float, drr_db: float, sr: int) -> np.ndarray:
    """Direct impulse + Gaussian tail decaying 60 dB in `rt60` s, tail energy `drr_db` below the direct."""
    n = int(rt60 * sr)
    tail = rng.standard_normal(n) * np.exp(-6.9078 * np.arange(n) / (rt60 * sr))
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    ir = np.zeros(int(0.005 * sr) + n)
    ir[0] = 1.0
    ir[-n:] = tail
    return ir


def render(p: dict[str, Any], rng: np.random.Generator, sample_rate: int, clip_seconds: float) -> np.ndarray:
    """Audio of the clip described by `p` (from `draw_params`): float32 [T] with RMS 10**(gain_db/20)."""
    sr = sample_rate
    n = int(round(clip_seconds * sr))
    t = np.arange(n) / sr
    x = _source(p, rng, t, sr) * _active_window(n, int(round(p["active_seconds"] * sr)), int(_FADE_S * sr))
    if p["rhythm"] == "pulsed":
        x *= _smooth(_square(t, p["pulse_rate_hz"], p["pulse_phase"]), int(_GATE_EDGE_S * sr))
    if p["reverb"] == "reverberant":
        x = fftconvolve(x, _impulse_response(rng, p["rt60_s"], p["drr_db"], sr))[:n]
    if p["background"] == "noisy":
        src_rms = np.sqrt(np.mean(x[t < p["active_seconds"]] ** 2))
        pink = _shaped_noise(rng, n, sr, lambda fr: (fr > 50) / np.maximum(fr, 50.0))
        x = x + pink * src_rms * 10 ** (-p["snr_db"] / 20)
    x = x * (10 ** (p["gain_db"] / 20) / np.sqrt(np.mean(x**2)))
    peak = float(np.max(np.abs(x)))
    if peak >= 1.0:
        raise ValueError(f"synthetic clip would clip (peak {peak:.3f}) with parameters {p}")
    return x.astype(np.float32)
