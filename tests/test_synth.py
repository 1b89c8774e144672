"""Synthetic probing set: deterministic, cached on disk, and every recorded attribute audible in the audio."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torchaudio.functional as AF

from and_lightning.data.clips import ClipRecord
from and_lightning.data.synth import (
    ATTRIBUTES,
    LOUDNESS_DBFS,
    PITCH_BANDS_HZ,
    SOURCES,
    clip_attributes,
    draw_params,
    generate_synth,
)

SR = 16000
TONAL = ("pure_tone", "harmonic_tone", "tremolo_tone", "vibrato_tone")
CHIRPS = ("rising_chirp", "falling_chirp")


# ---------------------------------------------------------------- measurements from audio (pure functions)
def energy_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(x**2)) + 1e-20)


def frame_rows(x: np.ndarray, win: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [n, win] of `x` and their centre sample indices."""
    n = 1 + (len(x) - win) // hop
    starts = hop * np.arange(n)
    return x[starts[:, None] + np.arange(win)[None, :]], starts + win / 2


def active_spectrum(x: np.ndarray, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum (Hann window, ~1.4 Hz resolution) of the first `t_end` s, zeroed below 80 Hz."""
    seg = x[: int(t_end * SR)]
    power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=1 << 15)) ** 2
    freqs = np.fft.rfftfreq(1 << 15, 1 / SR)
    power[freqs < 80] = 0.0
    return freqs, power


def lowest_strong_peak_hz(x: np.ndarray, t_end: float, within_db: float = 12.0) -> float:
    """Fundamental of a harmonic tone: its lowest spectral peak within `within_db` of the strongest."""
    freqs, power = active_spectrum(x, t_end)
    strong = power >= power.max() * 10 ** (-within_db / 10)
    is_peak = strong & (power >= np.roll(power, 1)) & (power >= np.roll(power, -1))
    return float(freqs[np.argmax(is_peak)])


def strongest_hz(x: np.ndarray, t_end: float) -> float:
    freqs, power = active_spectrum(x, t_end)
    return float(freqs[np.argmax(power)])


def peak_track(x: np.ndarray, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Strongest frequency (>= 80 Hz) of each 40 ms frame (hop 20 ms) before `t_end` that is within 6 dB of the
    loudest frame: (frame times s, Hz)."""
    rows, centres = frame_rows(x[: int(t_end * SR)], 640, 320)
    spec = np.abs(np.fft.rfft(rows * np.hanning(640), n=16384)) ** 2
    freqs = np.fft.rfftfreq(16384, 1 / SR)
    spec[:, freqs < 80] = 0.0
    energy = spec.sum(1)
    keep = energy >= energy.max() * 10 ** (-6 / 10)
    return centres[keep] / SR, freqs[spec[keep].argmax(1)]


@functools.lru_cache(maxsize=4)
def _mel_bands(n_freqs: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-band HTK mel filterbank [n_freqs, 64] for SR and the bands' centre frequencies."""
    fb = AF.melscale_fbanks(n_freqs, 0.0, SR / 2, 64, SR).numpy()
    mel_edges = np.linspace(0.0, 2595 * np.log10(1 + (SR / 2) / 700), 66)
    return fb, 700 * (10 ** (mel_edges[1:-1] / 2595) - 1)


def loudest_mel_band_hz(x: np.ndarray, t_end: float, fmin: float = 90.0) -> float:
    """Centre of the most energetic band (centre >= `fmin`) of a 64-band mel spectrum of the first `t_end` s."""
    seg = x[: int(t_end * SR)]
    power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    fb, centres = _mel_bands(len(power))
    band_energy = np.where(centres >= fmin, power @ fb, 0.0)
    return float(centres[int(np.argmax(band_energy))])


def envelope(x: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """RMS envelope in 20 ms frames every 5 ms between t0 and t1: (times s, amplitudes)."""
    rows, centres = frame_rows(x, 320, 80)
    t = centres / SR
    keep = (t >= t0) & (t <= t1)
    return t[keep], np.sqrt(np.mean(rows[keep] ** 2, axis=1))


def gate_contrast_db(t: np.ndarray, env: np.ndarray, rate_hz: float, phase: float) -> float:
    """Envelope energy in the on-halves of an on/off gate over that in its off-halves (dB), ignoring 15 ms
    around each edge; ~0 dB for a steady sound."""
    pos = np.mod(rate_hz * t + phase, 1.0)
    edge = 0.015 * rate_hz
    on = (pos > edge) & (pos < 0.5 - edge)
    off = (pos > 0.5 + edge) & (pos < 1.0 - edge)
    return 10 * math.log10(np.mean(env[on] ** 2) / (np.mean(env[off] ** 2) + 1e-20) + 1e-20)


def modulation_index(t: np.ndarray, env: np.ndarray, rate_hz: float) -> float:
    """Amplitude of the envelope's component at `rate_hz` relative to its mean (Hann-windowed DFT);
    a 50 %-duty on/off gate gives 4/pi ~ 1.27, a steady envelope ~ 0."""
    w = np.hanning(len(env))
    comp = np.sum(w * (env - env.mean()) * np.exp(-2j * np.pi * rate_hz * t))
    return float(2 * abs(comp) / np.sum(w * env))


def source_offsets(meta: dict) -> list[float]:
    """Times at which the source stops sounding: the gate's on->off edges (pulsed) and the end of the active part."""
    t_active = meta["active_seconds"]
    if meta["rhythm"] == "steady":
        return [t_active]
    rate, phase = meta["pulse_rate_hz"], meta["pulse_phase"]
    offs = [(k + 0.5 - phase) / rate for k in range(-1, int(t_active * rate) + 2)]
    offs = [o for o in offs if 0.05 < o < t_active - 0.01]
    if math.fmod(rate * t_active + phase, 1.0) < 0.5:  # gate still on when the source ends
        offs.append(t_active)
    return offs


def tail_excess_db(x: np.ndarray, meta: dict) -> float:
    """Energy 10-40 ms after each offset of the source (gate edges take 10 ms) over that of the clip's last
    150 ms (dB)."""
    floor = np.mean(x[-int(0.15 * SR):] ** 2) + 1e-20
    early = [np.mean(x[int((o + 0.01) * SR): int((o + 0.04) * SR)] ** 2) for o in source_offsets(meta)]
    return 10 * math.log10((float(np.mean(early)) + 1e-20) / floor)


def auroc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    p, n = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def test_measurements_on_hand_made_signals():
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 440 * t)
    assert energy_db(tone) == pytest.approx(-3.01, abs=0.01)
    assert strongest_hz(tone, 1.0) == pytest.approx(440, abs=1)
    buzz = sum(np.sin(2 * np.pi * 200 * k * t) / math.sqrt(k) for k in range(1, 20))
    assert lowest_strong_peak_hz(buzz * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)), 1.0) == pytest.approx(200, abs=1)
    times, freqs = peak_track(np.sin(2 * np.pi * (300 * t + 200 * t**2)), 1.0)  # 300 -> 700 Hz
    assert np.polyfit(times, freqs, 1)[0] == pytest.approx(400, rel=0.02)
    gate = (np.mod(4.0 * t, 1.0) < 0.5).astype(float)
    te, env = envelope(tone * gate, 0.0, 1.0)
    assert gate_contrast_db(te, env, 4.0, 0.0) > 40 and modulation_index(te, env, 4.0) > 1.0
    te, env = envelope(tone, 0.0, 1.0)
    assert abs(gate_contrast_db(te, env, 4.0, 0.0)) < 0.1 and modulation_index(te, env, 4.0) < 0.05
    rng = np.random.default_rng(0)
    band = np.fft.irfft(np.fft.rfft(rng.standard_normal(SR)) * (np.abs(np.fft.rfftfreq(SR, 1 / SR) - 1000) < 100))
    assert loudest_mel_band_hz(band, 1.0) == pytest.approx(1000, rel=0.1)
    decaying = np.concatenate([tone[:8000], rng.standard_normal(8000) * np.exp(-np.arange(8000) / 800)])
    assert tail_excess_db(decaying, {"active_seconds": 0.5, "rhythm": "steady"}) > 30
    assert source_offsets({"active_seconds": 0.7, "rhythm": "pulsed", "pulse_rate_hz": 2.5, "pulse_phase": 0.0}) \
        == pytest.approx([0.2, 0.6])
    assert auroc([2.0, 3.0], [1.0, 2.0]) == pytest.approx(0.875) and auroc([1.0], [2.0]) == 0.0


# ---------------------------------------------------------------- generation, determinism, caching
def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_index_records_folds_and_attributes(tmp_path):
    index = generate_synth(tmp_path / "s", seed=0, clips_per_class=6, num_folds=3)
    assert index.name == "synth" and index.class_names == SOURCES
    assert len(index.records) == 60
    for label, source in enumerate(SOURCES):
        recs = [r for r in index.records if r.label == label]
        assert [r.clip_id for r in recs] == [f"synth-{source}-{i:04d}" for i in range(6)]
        assert [r.fold for r in recs] == [1, 2, 3, 1, 2, 3]
        assert all(Path(r.path).is_file() and r.meta["source"] == source for r in recs)
    rec = index.records[0]
    attrs = clip_attributes(rec)
    assert set(attrs) == set(ATTRIBUTES) and all(attrs[k] in ATTRIBUTES[k] for k in attrs)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["clips"][0]["meta"] == rec.meta and manifest["params"]["clips_per_class"] == 6
    for key in ("pitch_hz", "gain_db", "pulse_rate_hz", "pulse_phase", "snr_db", "rt60_s", "drr_db"):
        assert key in rec.meta
    with pytest.raises(ValueError, match="clip 'x'.*meta\\['source'\\]"):
        clip_attributes(ClipRecord("x", "x.wav", 0, 1, {}))


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
    generate_synth(tmp_path / "a", seed=7, clips_per_class=3)
    generate_synth(tmp_path / "b", seed=7, clips_per_class=3)
    generate_synth(tmp_path / "c", seed=8, clips_per_class=3)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 31 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)  # every wav and the manifest differ


def test_second_call_generates_nothing(tmp_path):
    root = tmp_path / "s"
    first = generate_synth(root, seed=1, clips_per_class=4)
    before = _mtimes(root)
    second = generate_synth(root, seed=1, clips_per_class=4)
    assert _mtimes(root) == before
    assert second.records == first.records and [r.meta for r in second.records] == [r.meta for r in first.records]


def test_other_params_regenerate_and_drop_stale_clips(tmp_path):
    root = tmp_path / "s"
    generate_synth(root, seed=1, clips_per_class=4)
    index = generate_synth(root, seed=1, clips_per_class=2)
    assert len(index.records) == 20
    assert len(list((root / "audio").rglob("*.wav"))) == 20
    assert json.loads((root / "manifest.json").read_text())["params"]["clips_per_class"] == 2
    fresh = generate_synth(tmp_path / "fresh", seed=1, clips_per_class=2)
    for r, f in zip(index.records, fresh.records):  # clip i is the same whatever clips_per_class is
        assert Path(r.path).read_bytes() == Path(f.path).read_bytes()


def test_missing_or_corrupt_manifest_regenerates(tmp_path):
    root = tmp_path / "s"
    generate_synth(root, seed=2, clips_per_class=3)
    reference = _files(root)
    (root / "manifest.json").unlink()  # a run killed before the manifest: some audio missing, no manifest
    for p in sorted((root / "audio").rglob("*.wav"))[::2]:
        p.unlink()
    generate_synth(root, seed=2, clips_per_class=3)
    assert _files(root) == reference
    (root / "manifest.json").write_text("{ not json")
    generate_synth(root, seed=2, clips_per_class=3)
    assert _files(root) == reference


def test_failure_half_way_leaves_no_manifest(tmp_path):
    root = tmp_path / "s"
    blocker = root / "audio" / "click_train" / "synth-click_train-0000.wav"
    blocker.mkdir(parents=True)  # a directory where a wav must go: generation fails part-way
    with pytest.raises(OSError):
        generate_synth(root, seed=3, clips_per_class=2)
    assert not (root / "manifest.json").exists()
    assert (root / "audio" / "pure_tone" / "synth-pure_tone-0000.wav").is_file()  # it did get part-way
    blocker.rmdir()
    index = generate_synth(root, seed=3, clips_per_class=2)
    assert (root / "manifest.json").is_file() and all(Path(r.path).is_file() for r in index.records)


def test_attributes_are_drawn_independently_of_source_and_each_other():
    draws = [draw_params(np.random.default_rng([0, label, i]), s, 1.0)
             for label, s in enumerate(SOURCES) for i in range(300)]
    for name, values in ATTRIBUTES.items():
        if name == "source":
            continue
        for source in SOURCES:
            got = [d[name] for d in draws if d["source"] == source]
            for v in values:  # each value ~ uniform within every source (binomial 3-sigma bounds)
                p = 1 / len(values)
                assert abs(got.count(v) / 300 - p) < 3 * math.sqrt(p * (1 - p) / 300) + 0.01, (source, name, v)
    both = sum(d["rhythm"] == "pulsed" and d["reverb"] == "reverberant" for d in draws) / len(draws)
    assert both == pytest.approx(0.25, abs=0.03)


# ---------------------------------------------------------------- every attribute is audible
@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A 12-clips-per-class set read back from disk: list of (meta, waveform float64)."""
    index = generate_synth(tmp_path_factory.mktemp("synth"), seed=11, clips_per_class=12)
    return [(r.meta, sf.read(r.path, dtype="float64")[0]) for r in index.records]


def test_no_clip_clips_and_every_combination_occurs(probe):
    assert max(np.abs(x).max() for _, x in probe) < 1.0
    for name, values in ATTRIBUTES.items():
        assert {m[name] for m, _ in probe} == set(values)


def test_loudness_is_the_measured_rms(probe):
    for m, x in probe:
        assert energy_db(x) == pytest.approx(m["gain_db"], abs=0.1), m
    loud = [energy_db(x) for m, x in probe if m["loudness"] == "loud"]
    quiet = [energy_db(x) for m, x in probe if m["loudness"] == "quiet"]
    assert min(loud) - max(quiet) >= 15.0
    assert LOUDNESS_DBFS["loud"][0] - LOUDNESS_DBFS["quiet"][1] >= 15.0


def _in_band(freq: float, band: str) -> bool:
    lo, hi = PITCH_BANDS_HZ[band]
    return lo / 1.25 <= freq <= hi * 1.25  # bands are >= 1.6x apart, so this never admits a neighbour


def test_pitch_of_tonal_and_noise_like_sources_is_in_the_recorded_band(probe):
    for m, x in probe:
        if m["source"] in CHIRPS:
            continue
        if m["source"] == "vibrato_tone":  # its pitch moves: median of each frame's strongest partial
            measured = float(np.median(peak_track(x, m["active_seconds"])[1]))
        elif m["source"] == "harmonic_tone":  # partials 1/sqrt(k): the fundamental need not be the strongest
            measured = lowest_strong_peak_hz(x, m["active_seconds"])
        elif m["source"] in TONAL:
            measured = strongest_hz(x, m["active_seconds"])
        else:
            measured = loudest_mel_band_hz(x, m["active_seconds"])
        if m["source"] in TONAL:
            # amplitude modulation adds partials at f0 +- its rate (+- 3x the rate for a square gate) that
            # reverberation may favour; vibrato swings +-9 %
            slack = (0.1 if m["source"] == "vibrato_tone" else 0.03) * m["pitch_hz"]
            slack += 3 * (m["pulse_rate_hz"] or 0.0) + m.get("tremolo_rate_hz", 0.0)
            assert abs(measured - m["pitch_hz"]) <= slack, (measured, m)
        assert _in_band(measured, m["pitch"]), (measured, m)


def test_chirp_direction_and_centre(probe):
    chirps = [(m, x) for m, x in probe if m["source"] in CHIRPS]
    assert len(chirps) == 24
    for m, x in chirps:
        t, f = peak_track(x, m["active_seconds"])
        slope, centre = np.polyfit(t - m["active_seconds"] / 2, np.log2(f), 1)  # octaves/s, log2 Hz mid-way
        sign = 1 if m["source"] == "rising_chirp" else -1
        assert sign * slope > 1.5, (slope, m)  # sweeps 2 octaves in 0.7 s: ~2.9 octaves/s
        assert _in_band(2**centre, m["pitch"]), (2**centre, m)


def test_pulsed_clips_are_gated_at_the_recorded_rate_and_steady_ones_are_not(probe):
    """On/off envelope contrast at the recorded gate for pulsed clips, at the best-fitting 2.5-4 Hz gate for steady
    ones. Reverberation fills a gate's off-halves: for a narrow-band source by a random amount (the room's response
    at one frequency), so reverberant pulsed clips are checked as a group."""
    pulsed = {"dry": [], "reverberant": []}
    steady = []
    gates = [(r, ph) for r in np.arange(2.5, 4.01, 0.1) for ph in np.arange(0.0, 1.0, 0.05)]
    for m, x in probe:
        t, env = envelope(x, 0.03, m["active_seconds"] - 0.03)
        if m["rhythm"] == "pulsed":
            pulsed[m["reverb"]].append(gate_contrast_db(t, env, m["pulse_rate_hz"], m["pulse_phase"]))
        elif m["source"] != "percussive_hits":  # isolated hits are intrinsically unsteady
            steady.append(max(gate_contrast_db(t, env, r, ph) for r, ph in gates))
    assert min(len(v) for v in pulsed.values()) > 20 and len(steady) > 40
    assert min(pulsed["dry"]) > 10.0 > 6.0 > max(steady), (sorted(pulsed["dry"])[:3], sorted(steady)[-3:])
    assert np.median(steady) < 1.5 and np.median(pulsed["reverberant"]) > 8.0
    assert auroc(pulsed["reverberant"], steady) > 0.97


def test_tremolo_is_a_fast_smooth_modulation(probe):
    index = {"dry": [], "reverberant": []}
    for m, x in probe:
        if m["source"] == "tremolo_tone" and m["rhythm"] == "steady":
            t, env = envelope(x, 0.03, m["active_seconds"] - 0.03)
            index[m["reverb"]].append(modulation_index(t, env, m["tremolo_rate_hz"]))
    assert len(index["dry"] + index["reverberant"]) >= 3
    assert min(index["dry"], default=1.0) > 0.5 and np.median(index["reverberant"] or [1.0]) > 0.4, index


def test_noisy_clips_have_a_higher_noise_floor(probe):
    """Level of the clip's last 60 ms (after the source) relative to the active part, per source."""
    for source in SOURCES:
        floors = {"clean": [], "noisy": []}
        for m, x in probe:
            if m["source"] == source:
                body = x[: int(m["active_seconds"] * SR)]
                floors[m["background"]].append(energy_db(x[-int(0.06 * SR):]) - energy_db(body))
        assert floors["clean"] and floors["noisy"], source
        assert min(floors["noisy"]) > -23.5 > max(floors["clean"]), (source, floors)


def test_reverberant_clips_have_a_decaying_tail(probe):
    """Energy just after the source stops, over the clip's final floor. Percussive hits are left out in noise:
    each hit decays on its own (time constant 30-60 ms), and its reverberation sinks below the background with it."""
    excess = {(bg, rv): [] for bg in ATTRIBUTES["background"] for rv in ATTRIBUTES["reverb"]}
    for m, x in probe:
        if not (m["source"] == "percussive_hits" and m["background"] == "noisy"):
            excess[(m["background"], m["reverb"])].append(tail_excess_db(x, m))
    assert all(len(v) > 15 for v in excess.values())
    assert min(excess[("clean", "reverberant")]) > 2.0 and max(excess[("clean", "dry")]) < 0.1
    noisy_rev, noisy_dry = excess[("noisy", "reverberant")], excess[("noisy", "dry")]
    assert max(noisy_dry) < 2.5 < np.median(noisy_rev) - 3.0  # the tail of a single tone may hide under noise
    assert auroc(noisy_rev, noisy_dry) > 0.95, excess
