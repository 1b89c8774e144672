"""Pure measurements of a mono waveform for the acoustic captioner: loudness, pitch (YIN), spectral shape,
envelope rhythm, background noise and reverberation decay.

librosa computes the standard features (resampling, dB, framing, RMS, STFT, spectral centroid and flatness,
autocorrelation); this module holds what it lacks: YIN with its aperiodicity, pitch movement and harmonics, and
the loudness-envelope measures of rhythm, hits, gaps and decay the captioner words.

Levels are in dB re full-scale amplitude 1 ("dBFS" here: 20*log10(RMS), so a full-scale sine is -3 dB).
Functions that take arrays work on the last axis and accept leading batch axes unless stated otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import librosa
import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter1d, median_filter, uniform_filter1d
from scipy.signal import butter, sosfiltfilt

_TINY = 1e-12
DB_FLOOR = -120.0  # 10*log10(_TINY): every level is floored here, so digital silence is finite
power_to_db = partial(librosa.power_to_db, amin=_TINY, top_db=None)  # 10*log10(power), floored at DB_FLOOR


def smooth_envelope(x: np.ndarray, sample_rate: float, hop: int, cutoff_hz: float = 60.0, start: int = 0) -> np.ndarray:
    """Amplitude envelope sampled every `hop` samples from `start`: sqrt of the squared signal low-passed (zero phase, 4th-order
    Butterworth) at `cutoff_hz`, so beats between partials (a chord's 100-200 Hz) do not alias into slow
    modulation the way short RMS frames let them. Modulation up to ~cutoff_hz (tremolo, click trains) passes."""
    x = np.asarray(x, dtype=np.float64)
    power = sosfiltfilt(butter(4, cutoff_hz, fs=sample_rate, output="sos"), x * x)
    return np.sqrt(np.maximum(power[start::hop], 0.0))


_MAX_MULTIPLE = 8


def _parabolic_min(curve: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parabolic interpolation of `curve` [..., N] around integer minima `idx` [..., M] -> (position, value)."""
    y0 = np.take_along_axis(curve, idx - 1, -1)
    y1 = np.take_along_axis(curve, idx, -1)
    y2 = np.take_along_axis(curve, idx + 1, -1)
    bend = y0 - 2.0 * y1 + y2
    shift = np.where(bend > _TINY, 0.5 * (y0 - y2) / np.maximum(bend, _TINY), 0.0).clip(-0.5, 0.5)
    return idx + shift, y1 - 0.25 * (y0 - y2) * shift


# librosa.yin returns f0 only; the captioner also needs YIN's aperiodicity (voicing, periodicity, harmonic SNR), and
# librosa.pyin's voiced probability is an HMM posterior, not a noise share (and pyin takes ~1.6 s per 1 s clip)
def yin(frames: np.ndarray, sample_rate: float, fmin: float = 50.0, fmax: float = 4000.0,
        threshold: float = 0.15, integration: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch (de Cheveigne & Kawahara 2002) of frames [..., F, L] -> (f0 Hz, aperiodicity in [0, 1]).

    The difference function integrates `integration` samples (default L - sr/fmin) and is computed with one FFT
    cross-correlation per frame. The period is the first dip of the cumulative-mean-normalised difference below
    `threshold` (else below its global minimum + 0.1), refined by parabolic interpolation of the difference at
    the multiple of the period (up to 8) that lands closest to a whole sample. Aperiodicity (the normalised
    difference there) is ~ noise power / total power for a periodic sound in white noise; 1 - it is the
    periodicity confidence. Periods shorter than sr/fmax come out as a multiple (fix with
    `correct_subharmonic`). Silent frames get f0 NaN and aperiodicity 1.
    """
    frames = np.asarray(frames, dtype=np.float32)  # float32 FFTs: ~1e-6 error in the normalised difference
    length = frames.shape[-1]
    tau_max = int(np.ceil(sample_rate / fmin))
    tau_min = max(2, int(np.floor(sample_rate / fmax)))
    width = integration if integration is not None else length - tau_max - 1
    if width < tau_max or width + tau_max + 1 > length:
        raise ValueError(f"yin: frame length {length} too short for fmin={fmin} Hz at {sample_rate} Hz "
                         f"(need integration >= {tau_max} and integration + {tau_max + 1} <= frame length)")
    n_fft = 1 << int(np.ceil(np.log2(width + tau_max + 1)))
    span = frames[..., : width + tau_max + 1]
    head = scipy.fft.rfft(frames[..., :width], n_fft, axis=-1)
    full = scipy.fft.rfft(span, n_fft, axis=-1)
    corr = scipy.fft.irfft(np.conj(head) * full, n_fft, axis=-1)[..., : tau_max + 2].astype(np.float64)
    span = span.astype(np.float64)
    sq = np.concatenate([np.zeros(span.shape[:-1] + (1,)), np.cumsum(span * span, axis=-1)], axis=-1)
    energy_head = sq[..., width : width + 1]
    energy_lag = sq[..., width : width + tau_max + 2] - sq[..., : tau_max + 2]
    diff = np.maximum(energy_head + energy_lag - 2.0 * corr, 0.0)
    taus = np.arange(tau_max + 2)
    cum = np.cumsum(diff[..., 1:], axis=-1)
    cmnd = np.ones_like(diff)
    cmnd[..., 1:] = diff[..., 1:] * taus[1:] / np.maximum(cum, _TINY)

    search = cmnd[..., tau_min : tau_max + 1]
    # the first dip below the threshold, or (no such dip) below the global minimum + 0.1: for decaying or noisy
    # sounds the global minimum often sits at a long multiple of the period
    limit = np.maximum(threshold, search.min(axis=-1, keepdims=True) + 0.1)
    first = np.argmax(search < limit, axis=-1)
    # walk from there down to the local minimum
    upturn = np.concatenate([search[..., 1:] >= search[..., :-1], np.ones(search.shape[:-1] + (1,), bool)], -1)
    idx = np.arange(search.shape[-1])
    best = np.argmax(upturn & (idx >= first[..., None]), axis=-1) + tau_min

    tau = _parabolic_min(diff, best[..., None])[0][..., 0]
    # a period-T sound is also periodic at m*T: take the multiple whose lag lands closest to a whole sample,
    # which sharpens f0 and the aperiodicity when T itself is fractional (high pitches, sharp waveforms)
    multiples = np.arange(1, _MAX_MULTIPLE + 1)
    lags = np.rint(tau[..., None] * multiples).astype(int)  # [..., F, M]
    ok = lags <= tau_max
    lags = np.clip(lags, 1, tau_max)
    m_tau, m_diff = _parabolic_min(diff, lags)
    mean_diff = np.take_along_axis(cum, lags - 1, -1) / lags  # mean of d(1..lag), the YIN normaliser
    m_ap = np.where(ok, np.clip(np.maximum(m_diff, 0.0) / np.maximum(mean_diff, _TINY), 0.0, 1.0), np.inf)
    pick = np.argmin(m_ap, axis=-1)[..., None]
    aperiodicity = np.take_along_axis(m_ap, pick, -1)[..., 0]
    f0 = sample_rate * (pick[..., 0] + 1) / np.take_along_axis(m_tau, pick, -1)[..., 0]
    silent = energy_head[..., 0] <= (1e-5) ** 2 * width  # frame RMS below -100 dBFS
    return np.where(silent, np.nan, f0), np.where(silent, 1.0, aperiodicity)


# scipy.stats.theilslopes takes every pair: here pairs stay within one voiced stretch and at least min_dt apart
def theil_sen_slope(t: np.ndarray, y: np.ndarray, min_dt: float = 0.03, groups: np.ndarray | None = None,
                    max_points: int = 400) -> float:
    """Median of pairwise slopes (y units per t unit) over pairs at least `min_dt` apart; NaN if none.

    Robust to outliers such as octave jumps of a pitch track. With `groups`, only pairs within the same group
    count (e.g. one group per voiced stretch, so repeated upward chirps rise rather than average out). Uses at
    most `max_points` evenly spaced points.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    g = np.zeros(len(t), int) if groups is None else np.asarray(groups)
    if len(t) > max_points:
        keep = np.linspace(0, len(t) - 1, max_points).round().astype(int)
        t, y, g = t[keep], y[keep], g[keep]
    dt = t[None, :] - t[:, None]
    mask = (dt >= min_dt) & (g[None, :] == g[:, None])
    if not mask.any():
        return float("nan")
    return float(np.median((y[None, :] - y[:, None])[mask] / dt[mask]))


# no library measures pitch modulation (vibrato rate / extent / purity of a pitch contour)
def vibrato(semitones: np.ndarray, frame_rate: float, fmin: float = 3.0,
            fmax: float = 12.0) -> tuple[float, float, float]:
    """Periodic modulation of a contiguous pitch contour (semitones) -> (rate Hz, peak-to-peak extent, purity).

    The contour is detrended with a quadratic fit; the rate is the strongest spectral peak of the residual in
    [fmin, fmax] Hz, purity is the share of residual power within +-1.5 Hz of it, and the extent is the
    peak-to-peak size of a sinusoid with that band's power. NaNs when the contour is shorter than two cycles.
    """
    y = np.asarray(semitones, dtype=np.float64)
    n = len(y)
    if n < max(8, int(2 * frame_rate / fmin)):
        return float("nan"), float("nan"), float("nan")
    t = np.arange(n) / frame_rate
    resid = y - np.polyval(np.polyfit(t, y, 2), t)
    n_fft = max(512, 1 << int(np.ceil(np.log2(4 * n))))
    spec = np.abs(np.fft.rfft(resid * np.hanning(n), n_fft)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / frame_rate)
    band = (freqs >= fmin) & (freqs <= fmax)
    total = spec[freqs > 0.5].sum()
    if total <= _TINY or not band.any():
        return float("nan"), 0.0, 0.0
    peak = freqs[band][np.argmax(spec[band])]
    near = np.abs(freqs - peak) <= 1.5
    purity = float(spec[near].sum() / total)
    extent = float(2.0 * np.sqrt(2.0) * np.std(resid) * np.sqrt(purity))
    return float(peak), extent, purity


# librosa.f0_harmonics samples the spectrum at k*f0; the harmonic measures need the energy of the Hann main lobe there
def harmonic_energies(power: np.ndarray, freqs: np.ndarray, f0: np.ndarray, n_harmonics: int = 30,
                      half_width_bins: float = 2.0) -> np.ndarray:
    """Energy near each harmonic k*f0 (k = 1..n_harmonics) of each frame: power [..., F, B], f0 [..., F] -> [..., F, K].

    Bands are +-half_width_bins around k*f0 (the Hann main lobe); harmonics above Nyquist or with NaN f0 get 0.
    """
    bin_hz = freqs[1] - freqs[0]
    n_bins = power.shape[-1]
    cs = np.concatenate([np.zeros(power.shape[:-1] + (1,)), np.cumsum(power, axis=-1)], axis=-1)
    k = np.arange(1, n_harmonics + 1)
    pos = np.nan_to_num(f0, nan=-1.0)[..., None] * k / bin_hz
    lo = np.clip(np.round(pos - half_width_bins), 0, n_bins).astype(int)
    hi = np.clip(np.round(pos + half_width_bins) + 1, 0, n_bins).astype(int)
    energy = np.take_along_axis(cs, hi, -1) - np.take_along_axis(cs, lo, -1)
    valid = (pos >= 0) & (pos + half_width_bins < n_bins - 1)
    return np.where(valid, energy, 0.0)


def harmonic_richness(harmonics: np.ndarray) -> float:
    """Share of harmonic energy above the fundamental, summed over frames: harmonics [F, K] -> [0, 1] (NaN if none).

    ~0 for a pure tone, ~0.19 for a square wave, ~0.39 for a sawtooth.
    """
    totals = harmonics.reshape(-1, harmonics.shape[-1]).sum(axis=0)
    whole = totals.sum()
    return float(totals[1:].sum() / whole) if whole > _TINY else float("nan")


def correct_subharmonic(f0: np.ndarray, harmonics: np.ndarray, share: float = 0.95, max_factor: int = 8) -> np.ndarray:
    """Undo YIN answers that are a fraction f0/q of the true pitch: f0 [..., F], harmonics [..., F, K] -> f0.

    If >= `share` of a frame's harmonic energy sits on harmonics k that are multiples of q (so the band at f0 is
    empty), the pitch is q*f0; the largest such q <= max_factor wins. This happens above YIN's search range
    (periods shorter than sr/fmax) and for fractional periods of sharp waveforms. A genuinely missing
    fundamental (energy on k = 2, 3, 4, ...) is left alone.
    """
    k = np.arange(1, harmonics.shape[-1] + 1)
    factors = np.arange(2, max_factor + 1)
    on_multiple = (k[None, :] % factors[:, None] == 0).astype(harmonics.dtype)  # [Q, K]
    total = np.maximum(harmonics.sum(axis=-1, keepdims=True), _TINY)
    fits = (harmonics @ on_multiple.T) / total >= share  # [..., F, Q]
    last = fits.shape[-1] - 1 - np.argmax(fits[..., ::-1], axis=-1)
    factor = np.where(fits.any(axis=-1), factors[last], 1)
    return f0 * factor


# librosa.beat / tempo track onset pulses (BPM); this is the rhythm of the loudness envelope, slow swells included
def envelope_periodicity(env: np.ndarray, env_rate: float, min_hz: float = 0.5, peak_ratio: float = 0.85,
                         min_prominence: float = 0.25) -> tuple[float, float]:
    """Repetition rate of an amplitude envelope [n] -> (rate Hz, strength in [-1, 1]); (NaN, 0) if none.

    Uses the unbiased normalised autocorrelation over lags from 2 frames to half the envelope. A local
    maximum counts only if the autocorrelation dipped at least `min_prominence` below it at a shorter lag
    (a slow swell keeps it near 1 at short lags, where tiny ripples would otherwise look like a rhythm). Of
    those, the shortest lag reaching `peak_ratio` of the highest is the period (not a multiple of it). Rates
    above ~20 Hz are heard as roughness rather than rhythm; the caller decides.
    """
    x = np.asarray(env, dtype=np.float64)
    x = x - x.mean()
    n = len(x)
    lag_min = 2
    lag_max = min(n // 2, int(np.ceil(env_rate / min_hz)))
    if lag_max <= lag_min + 1 or np.dot(x, x) <= _TINY:
        return float("nan"), 0.0
    acf = librosa.autocorrelate(x, max_size=lag_max + 2)
    lags = np.arange(lag_max + 2)
    acf = acf / acf[0] * n / (n - lags)
    mid = acf[lag_min : lag_max + 1]
    left = acf[lag_min - 1 : lag_max]
    right = acf[lag_min + 1 : lag_max + 2]
    peaks = np.flatnonzero((mid > left) & (mid >= right) & (mid > 0)) + lag_min
    lowest_before = np.minimum.accumulate(acf)[peaks - 1]
    peaks = peaks[acf[peaks] - lowest_before >= min_prominence]
    if len(peaks) == 0:
        return float("nan"), 0.0
    values = acf[peaks]
    lag = int(peaks[np.argmax(values >= peak_ratio * values.max())])
    y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
    curve = y0 - 2.0 * y1 + y2
    shift = float(np.clip(0.5 * (y0 - y2) / curve, -0.5, 0.5)) if curve < -_TINY else 0.0
    return float(env_rate / (lag + shift)), float(min(y1, 1.0))


# envelope measures below (masked autocorrelation, hits, gaps, wobble, onsets, decay): no library counterpart;
# librosa.onset detects spectral-flux onsets, not the level rises and decays in dB that are worded here
def masked_autocorrelation(x: np.ndarray, mask: np.ndarray, max_lag: int, min_pairs: int = 20) -> np.ndarray:
    """Pearson correlation of x[t] with x[t+lag] over the pairs where both frames are in `mask`, for lags
    0..max_lag -> [max_lag + 1] (NaN where fewer than `min_pairs` pairs remain).

    Used on the loudness envelope while the sound is on: a gated (pulsed) sound's on/off steps fall outside the
    mask, so a faster modulation inside the on-windows (tremolo, a click train) still shows as a peak.
    """
    x = np.asarray(x, dtype=np.float64)
    mask = np.asarray(mask, bool)
    out = np.full(max_lag + 1, np.nan)
    out[0] = 1.0
    for lag in range(1, min(max_lag, len(x) - 1) + 1):
        both = mask[:-lag] & mask[lag:]
        if both.sum() < min_pairs:
            break
        a, b = x[:-lag][both], x[lag:][both]
        a, b = a - a.mean(), b - b.mean()
        norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
        out[lag] = np.dot(a, b) / norm if norm > _TINY else 0.0
    return out


def autocorrelation_peak(acf: np.ndarray, lag_min: int, lag_max: int,
                         min_prominence: float = 0.2) -> tuple[float, int]:
    """The highest local maximum of `acf` with lag in [lag_min, lag_max] that rises at least `min_prominence`
    above the lowest value at a shorter lag -> (value, lag); (0.0, 0) if there is none."""
    best, best_lag = 0.0, 0
    lowest = np.minimum.accumulate(np.nan_to_num(acf, nan=np.inf))
    for lag in range(max(lag_min, 2), min(lag_max, len(acf) - 2) + 1):
        y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
        if not np.isfinite(y2):
            break
        if y1 > y0 and y1 >= y2 and y1 - lowest[lag - 1] >= min_prominence and y1 > best:
            best, best_lag = float(y1), lag
    return best, best_lag


def hit_peaks(env_db: np.ndarray, env_rate: float, rise_db: float = 9.0, rise_s: float = 0.02,
              drop_db: float = 5.0, drop_s: float = 0.04, within_db: float = 8.0, spacing_s: float = 0.025) -> np.ndarray:
    """Frames where a struck (percussive) event peaks: the loudest frame within +-spacing_s, within `within_db`
    of the clip's peak, reached by a rise of >= rise_db within rise_s, and already `drop_db` lower drop_s later
    (a held or gated sound stays up; a hit dies away at once)."""
    env_db = np.asarray(env_db, dtype=np.float64)
    n = len(env_db)
    k_sp, k_rise, k_drop = (max(1, int(round(s * env_rate))) for s in (spacing_s, rise_s, drop_s))
    local_max = maximum_filter1d(env_db, 2 * k_sp + 1, mode="constant", cval=-np.inf)
    before = sliding_window_view(np.concatenate([np.full(k_rise, np.inf), env_db]), k_rise).min(axis=-1)[:n]
    later = np.concatenate([env_db[k_drop:], np.full(k_drop, np.inf)])
    ok = ((env_db >= local_max) & (env_db >= env_db.max() - within_db) & (env_db - before >= rise_db)
          & (env_db - later >= drop_db))
    peaks = np.flatnonzero(ok)
    if len(peaks) == 0:
        return peaks
    keep = np.concatenate([[True], np.diff(peaks) > k_sp])
    return peaks[keep]


def internal_gaps(level_db: np.ndarray, env_rate: float, depth_db: float = 10.0, min_gap_s: float = 0.03,
                  range_db: float = 20.0) -> int:
    """Silences inside a sound: stretches >= min_gap_s at least `depth_db` below the sound's typical level
    (90th percentile) with sound on both sides (the sound = frames within `range_db` of the peak)."""
    level_db = np.asarray(level_db, dtype=np.float64)
    on = np.flatnonzero(level_db >= level_db.max() - range_db)
    seg = level_db[on[0]:on[-1] + 1]
    low = seg < np.percentile(seg, 90) - depth_db
    runs = true_runs(low)
    inside = (runs[:, 0] > 0) & (runs[:, 1] < len(seg))
    return int(np.sum(inside & ((runs[:, 1] - runs[:, 0]) >= min_gap_s * env_rate)))


def pitch_wobble(f0: np.ndarray, voiced: np.ndarray, min_frames: int = 8, max_jump_st: float = 4.0) -> float:
    """RMS deviation (semitones) of the pitch from a straight line within each voiced stretch of >= min_frames
    frames (median-of-5 smoothed, stretch-length weighted); frames more than `max_jump_st` off the line (octave
    errors) are left out and the line refitted. NaN if there is no such stretch.

    ~0 for steady pitches and for exponential sweeps (straight in semitones), ~0.5-0.9 for a vibrato of 2-3
    semitones peak to peak even when each stretch holds only part of a cycle.
    """
    total, weight = 0.0, 0
    for a, b in true_runs(voiced):
        if b - a < min_frames:
            continue
        st = 12.0 * np.log2(f0[a:b] / 440.0)
        st = median_filter(st, 5, mode="nearest")
        t = np.arange(len(st), dtype=np.float64)
        resid = st - np.polyval(np.polyfit(t, st, 1), t)
        keep = np.abs(resid - np.median(resid)) < max_jump_st  # octave / fifth errors are not wavering
        if keep.sum() >= min_frames:
            resid = st[keep] - np.polyval(np.polyfit(t[keep], st[keep], 1), t[keep])
        total += float(np.sum(resid[np.abs(resid) < max_jump_st] ** 2))
        weight += int(keep.sum())
    return float(np.sqrt(total / weight)) if weight else float("nan")


def true_runs(mask: np.ndarray) -> np.ndarray:
    """[start, stop) index pairs of the runs of True in a 1-D boolean mask, shape [n_runs, 2]."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return edges.reshape(-1, 2)


def onset_frames(env_db: np.ndarray, env_rate: float, rise_db: float = 9.0, rise_s: float = 0.02,
                 min_gap_s: float = 0.04, min_level_db: float = -80.0) -> np.ndarray:
    """Frames where the envelope (dB) rises by >= rise_db within rise_s from its recent minimum (one per onset)."""
    span = max(1, int(round(rise_s * env_rate)))
    padded = np.concatenate([np.full(span, env_db[0]), env_db])
    recent_min = sliding_window_view(padded[:-1], span).min(axis=-1)
    rising = (env_db - recent_min >= rise_db) & (env_db >= min_level_db)
    starts = true_runs(rising)[:, 0]
    if len(starts) == 0:
        return starts
    gap = max(1, int(round(min_gap_s * env_rate)))
    keep = np.concatenate([[True], np.diff(starts) >= gap])
    return starts[keep]


def transition_fraction(env: np.ndarray, low: float = 0.2, high: float = 0.8) -> float:
    """Share of envelope frames between `low` and `high` of its 2-98 percentile range.

    ~0.41 for a sinusoidal (smooth, tremolo-like) modulation, small for on/off gating with sharp edges.
    """
    lo, hi = np.percentile(env, [2, 98])
    if hi - lo <= _TINY:
        return 0.0
    z = (np.asarray(env) - lo) / (hi - lo)
    return float(np.mean((z > low) & (z < high)))


def fall_time(env_db: np.ndarray, start: int, drop_db: float, env_rate: float) -> float:
    """Seconds from frame `start` until the envelope first falls `drop_db` below its level there; NaN if never."""
    below = np.flatnonzero(env_db[start:] <= env_db[start] - drop_db)
    return float(below[0] / env_rate) if len(below) else float("nan")


def offset_decay_rates(env_db: np.ndarray, env_rate: float, floor_db: float, hold_s: float = 0.05,
                       rise_db: float = 10.0, min_drop_db: float = 15.0, fit_db: tuple[float, float] = (5.0, 25.0),
                       min_level_db: float = -60.0) -> np.ndarray:
    """Free-decay rates (dB/s) of the envelope after each offset; [n_decays]. 60 / rate estimates RT60.

    A decay starts where the level (>= min_level_db) is the highest of the last `hold_s` and then falls (at
    the last frame within 2 dB of that level). It ends at a re-rise of `rise_db` above its running minimum,
    5 dB above `floor_db`, a new level stretch (within 1 dB for hold_s, so decays slower than ~20 dB/s, i.e.
    RT60 > 3 s, are not seen) or the clip end, and counts if it falls >= min_drop_db. Its rate is fitted to
    the Schroeder backward integral (the energy still to come, in dB) between -fit_db[0] and -fit_db[1] dB
    (less if the drop is smaller), which averages out the fluctuations of a reverberant tail; a decay too
    fast to fit (a dry stop) counts its whole drop over its length. A sound that dies away by itself (a
    plucked note, a fade-out) decays like reverberation: this measures "how fast the sound stops", which
    bounds the room's RT60 from above.
    """
    env_db = np.asarray(env_db, dtype=np.float64)
    n = len(env_db)
    k = max(1, int(round(hold_s * env_rate)))
    if n < k + 3:
        return np.zeros(0)
    recent_max = sliding_window_view(np.concatenate([np.full(k, -np.inf), env_db]), k + 1).max(axis=-1)
    starts = np.flatnonzero((env_db >= recent_max) & (np.concatenate([env_db[1:], [np.inf]]) < env_db)
                            & (env_db >= max(min_level_db, floor_db + min_drop_db + 5.0)))
    rates, busy_until = [], -1
    for t in starts:
        if t < busy_until:
            continue
        falling = np.flatnonzero(env_db[t:] <= env_db[t] - 2.0)
        if len(falling) == 0:
            break
        t = t + int(falling[0]) - 1  # skip a level stretch: the decay starts at its last frame
        after = env_db[t:]
        stops = [len(after)]
        rise = np.flatnonzero(after > np.minimum.accumulate(after) + rise_db)
        stops += [int(rise[0])] if len(rise) else []
        at_floor = np.flatnonzero(after <= floor_db + 5.0)
        stops += [int(at_floor[0]) + 1] if len(at_floor) else []
        if len(after) > k:  # a new level stretch (within 1 dB for hold_s) is not part of the decay
            win = sliding_window_view(after[1:], k)
            level = np.flatnonzero(win.max(axis=-1) - win.min(axis=-1) <= 1.0)
            stops += [int(level[0]) + 2] if len(level) else []
        end = min(stops)
        seg = after[: int(np.argmin(after[:end])) + 1]
        drop = seg[0] - seg[-1]
        if drop < min_drop_db:
            continue
        busy_until = t + len(seg)
        energy = 10.0 ** ((seg - seg[0]) / 10.0)
        edc = power_to_db(np.cumsum(energy[::-1])[::-1] / energy.sum())
        sel = (edc <= -fit_db[0]) & (edc >= -min(fit_db[1], drop - 5.0))
        if sel.sum() >= 3:
            rates.append(-np.polyfit(np.flatnonzero(sel) / env_rate, edc[sel], 1)[0])
        else:
            rates.append(drop * env_rate / (len(seg) - 1))
    return np.asarray(rates, dtype=np.float64)


@dataclass(frozen=True)
class AcousticMeasurements:
    """Everything the acoustic captioner measures on one clip (plain floats/ints; NaN = not measurable)."""

    duration_s: float
    rms_dbfs: float            # whole clip
    active_rms_dbfs: float     # envelope frames within `active_range_db` of the loudest
    peak_dbfs: float           # loudest 10 ms envelope frame
    active_fraction: float     # share of envelope frames within active_range_db of the peak
    # pitch (YIN on 64 ms frames every 10 ms)
    f0_hz: float               # median f0 of voiced frames
    f0_start_hz: float         # median f0 of the first / last fifth of the voiced frames
    f0_end_hz: float
    voiced_fraction: float     # share of active frames that are periodic
    periodicity: float         # median (1 - aperiodicity) over active frames
    pitch_slope_st_s: float    # Theil-Sen slope of the pitch track within voiced stretches, semitones/s
    vibrato_rate_hz: float
    vibrato_extent_st: float   # peak-to-peak
    vibrato_purity: float
    harmonic_richness: float   # share of harmonic energy above the fundamental
    lowest_harmonic: int       # first harmonic with >= 10% of the strongest one's energy (0: unpitched)
    harmonic_snr_db: float     # -10 log10(median aperiodicity) of voiced frames
    pitch_wobble_st: float     # RMS wavering of the pitch around a straight line within voiced stretches
    # spectrum
    centroid_hz: float
    flatness: float            # mean over active frames
    low_share: float           # share of the power below 150 Hz (active frames)
    loud_periodicity: float    # median (1 - aperiodicity) over frames within 10 dB of the loudest
    # envelope (10 ms RMS every 5 ms)
    env_depth_db: float        # interquartile range of the (25 ms smoothed) level while on (ignores on/off ends)
    env_rate_hz: float         # envelope repetition rate
    env_strength: float        # its autocorrelation peak
    transition_fraction: float
    onset_rate_hz: float
    n_events: int              # stretches within event_range_db of the peak
    event_median_s: float
    attack_s: float            # loudest event: from its start to its peak
    decay_s: float             # loudest event: peak to -20 dB (NaN if it does not get there)
    decay_shape: float         # (time to -6 dB) / (time to -D dB) * D / 6: ~1 exponential decay, >>1 hold-then-stop
    flutter_rate_hz: float     # loudness modulation at 8-18 Hz while the sound is on (masked autocorrelation)
    flutter_strength: float    # ... its autocorrelation peak (0: none)
    click_rate_hz: float       # ... and at 18-60 Hz (a click train)
    click_strength: float
    ripple: float              # std / mean of the envelope relative to its 80 ms mean while sounding (fast modulation depth)
    n_hits: int                # struck events: sharp rise, then at once dying away (hit_peaks)
    level_flat_share: float    # share of on-frames whose 25 ms level moves <= 0.5 dB in 5 ms (held sounds ~1)
    decay_dominance: float     # (falling - rising) / (falling + rising) of those moves: struck, decaying sounds > 0
    n_gaps: int                # silences inside the sound (internal_gaps): a gated, pulsing sound has several
    # background and room
    noise_floor_db: float      # 10th percentile of the envelope, when quiet frames exist
    snr_db: float              # signal (95th percentile) minus the background estimate
    rt60_s: float              # 60 / median offset decay rate
    n_offsets: int


_NAN = float("nan")
_PITCH_NONE = dict(f0_hz=_NAN, f0_start_hz=_NAN, f0_end_hz=_NAN, pitch_slope_st_s=_NAN, vibrato_rate_hz=_NAN,
                   vibrato_extent_st=_NAN, vibrato_purity=_NAN, harmonic_richness=_NAN, lowest_harmonic=0,
                   harmonic_snr_db=_NAN, pitch_wobble_st=_NAN)


def _pitch_measures(f0: np.ndarray, aperiodicity: np.ndarray, voiced: np.ndarray, power: np.ndarray,
                    freqs: np.ndarray, frame_rate: float) -> dict:
    """Pitch, pitch movement, vibrato and harmonic structure of the voiced frames (fixes f0 in place)."""
    if not voiced.any():
        return dict(_PITCH_NONE)
    harmonics = harmonic_energies(power[voiced], freqs, f0[voiced])
    fixed = correct_subharmonic(f0[voiced], harmonics)
    if np.any(fixed != f0[voiced]):
        f0[voiced] = fixed
        harmonics = harmonic_energies(power[voiced], freqs, fixed)
    vf0 = f0[voiced]
    fifth = max(1, len(vf0) // 5)
    run_id = np.cumsum(np.diff(np.concatenate([[False], voiced]).astype(int)) == 1)[voiced]
    frame_t = np.flatnonzero(voiced) / frame_rate
    runs = true_runs(voiced)
    a, b = runs[np.argmax(runs[:, 1] - runs[:, 0])]
    contour = 12.0 * np.log2(f0[a:b] / 440.0)
    if len(contour) >= 5:  # median-of-5 smoothing removes isolated octave errors
        contour = median_filter(contour, 5, mode="nearest")
    vib_rate, vib_extent, vib_purity = vibrato(contour, frame_rate)
    totals = harmonics.sum(axis=0)
    return dict(
        f0_hz=float(np.median(vf0)), f0_start_hz=float(np.median(vf0[:fifth])),
        f0_end_hz=float(np.median(vf0[-fifth:])),
        pitch_slope_st_s=theil_sen_slope(frame_t, 12.0 * np.log2(vf0 / 440.0), groups=run_id),
        vibrato_rate_hz=vib_rate, vibrato_extent_st=vib_extent, vibrato_purity=vib_purity,
        harmonic_richness=harmonic_richness(harmonics),
        lowest_harmonic=int(np.argmax(totals >= 0.1 * totals.max())) + 1 if totals.max() > _TINY else 0,
        harmonic_snr_db=float(-power_to_db(max(float(np.median(aperiodicity[voiced])), 1e-6))),
        pitch_wobble_st=pitch_wobble(f0, voiced),
    )


def _envelope_measures(env: np.ndarray, env_db: np.ndarray, smooth_env: np.ndarray, env_rate: float,
                       active_range_db: float, event_range_db: float) -> dict:
    """Level range, rhythm, onsets, events and the attack/decay of the loudest event."""
    peak_db = float(env_db.max())
    # depth and onsets on a 25 ms smoothing: narrow-band noise flickers at 10 ms
    smooth_db = power_to_db(uniform_filter1d(env**2, 5, mode="nearest"))
    sounding = env_db >= peak_db - event_range_db
    rate, strength = envelope_periodicity(env, env_rate)
    onsets = onset_frames(smooth_db, env_rate, min_level_db=peak_db - active_range_db)
    events = true_runs(sounding)
    loudest = int(np.argmax([env_db[s:e].max() for s, e in events]))
    start, stop = events[loudest]
    peak_i = int(start + np.argmax(env_db[start:stop]))
    reach = min(20.0, float(env_db[peak_i] - env_db[peak_i:].min()))
    shape = _NAN
    if reach >= 12.0:  # exponential decay: the first 6 dB take 6/reach of the time to fall `reach` dB
        t6 = fall_time(env_db, peak_i, 6.0, env_rate)
        shape = t6 / max(fall_time(env_db, peak_i, reach, env_rate), 1.0 / env_rate) * reach / 6.0
    # modulation while the sound is on (40 ms smoothed level within 15 dB of its peak), so gates fall outside,
    # on the alias-free envelope; flutter uses it relative to its 80 ms running mean (a gate's slow shape divided out)
    slow_db = power_to_db(uniform_filter1d(env**2, 8, mode="nearest"))
    on = slow_db >= slow_db.max() - 15.0
    depth = float(np.percentile(smooth_db[on], 75) - np.percentile(smooth_db[on], 25))
    step = np.diff(smooth_db)[on[1:]]
    falling, rising = float(np.mean(step < -0.5)) if len(step) else 0.0, float(np.mean(step > 0.5)) if len(step) else 0.0
    relative = smooth_env / np.maximum(uniform_filter1d(smooth_env, 16, mode="nearest"), _TINY)
    acf = masked_autocorrelation(relative, on, int(np.ceil(env_rate / 8.0)) + 2)
    flutter, flutter_lag = autocorrelation_peak(acf, int(np.ceil(env_rate / 18.0)), int(np.ceil(env_rate / 8.0)))
    acf = masked_autocorrelation(smooth_env, on, int(env_rate / 18.0) + 2)
    click, click_lag = autocorrelation_peak(acf, int(env_rate / 60.0), int(env_rate / 18.0))
    return dict(
        flutter_rate_hz=env_rate / flutter_lag if flutter_lag else _NAN, flutter_strength=flutter,
        click_rate_hz=env_rate / click_lag if click_lag else _NAN, click_strength=click,
        ripple=float(np.std(relative[on])),
        n_hits=int(len(hit_peaks(env_db, env_rate))), n_gaps=internal_gaps(smooth_db, env_rate),
        level_flat_share=1.0 - falling - rising,
        decay_dominance=(falling - rising) / (falling + rising) if falling + rising > 0 else 0.0,
        env_depth_db=depth, env_rate_hz=rate, env_strength=strength, transition_fraction=transition_fraction(env),
        onset_rate_hz=float(len(onsets) * env_rate / len(env)), n_events=int(len(events)),
        event_median_s=float(np.median(events[:, 1] - events[:, 0]) / env_rate),
        attack_s=float((peak_i - start) / env_rate), decay_s=fall_time(env_db, peak_i, 20.0, env_rate),
        decay_shape=float(shape),
    )


def measure_clip(wave: np.ndarray, sample_rate: int, analysis_rate: int = 16000, fmin: float = 40.0,
                 fmax: float = 4000.0, yin_threshold: float = 0.15, voicing_min: float = 0.7,
                 active_range_db: float = 25.0, event_range_db: float = 20.0, gap_db: float = 15.0,
                 silence_dbfs: float = -75.0) -> AcousticMeasurements:
    """Measure one mono clip at `analysis_rate`: 64 ms spectra and YIN every 10 ms, a 10 ms RMS envelope every 5 ms.

    The background level comes from quiet envelope frames when >= 10% of them are `gap_db` below the peak,
    else (mostly periodic sounds) from YIN's aperiodicity; otherwise it is not measurable (NaN).
    """
    x = librosa.resample(np.asarray(wave, dtype=np.float64), orig_sr=sample_rate, target_sr=analysis_rate,
                         res_type="polyphase")
    x = x - x.mean()
    sr = float(analysis_rate)
    hop, n_fft = int(sr * 0.010), 1024
    env_hop = int(sr * 0.005)
    env_rate = sr / env_hop
    base = dict(duration_s=len(x) / sr, rms_dbfs=float(power_to_db(np.mean(x * x))))
    x = np.pad(x, (0, max(0, n_fft - len(x))))  # at least one spectrum frame
    env = librosa.feature.rms(y=x, frame_length=int(sr * 0.010), hop_length=env_hop, center=False,
                              dtype=np.float64)[0]
    env_db = power_to_db(env**2)
    peak_db = base["peak_dbfs"] = float(env_db.max())
    active_env = env_db >= peak_db - active_range_db
    if peak_db < silence_dbfs:
        return AcousticMeasurements(
            **base, **_PITCH_NONE, active_rms_dbfs=DB_FLOOR, active_fraction=0.0, voiced_fraction=0.0,
            periodicity=0.0, centroid_hz=_NAN, flatness=_NAN, env_depth_db=0.0, env_rate_hz=_NAN, env_strength=0.0,
            transition_fraction=0.0, onset_rate_hz=0.0, n_events=0, event_median_s=_NAN, attack_s=_NAN,
            decay_s=_NAN, decay_shape=_NAN, noise_floor_db=_NAN, snr_db=_NAN, rt60_s=_NAN, n_offsets=0,
            low_share=_NAN, loud_periodicity=0.0, flutter_rate_hz=_NAN, flutter_strength=0.0, click_rate_hz=_NAN,
            click_strength=0.0, ripple=0.0, n_hits=0, n_gaps=0, level_flat_share=1.0, decay_dominance=0.0)

    frames = librosa.util.frame(x, frame_length=n_fft, hop_length=hop, axis=0)
    power = np.abs(librosa.stft(x.astype(np.float32), n_fft=n_fft, hop_length=hop, center=False).T) ** 2
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    frame_db = power_to_db(np.mean(frames * frames, axis=-1))
    active = frame_db >= frame_db.max() - active_range_db
    loud = frame_db >= frame_db.max() - 10.0
    f0, aperiodicity = np.full(len(frames), np.nan), np.ones(len(frames))
    f0[active], aperiodicity[active] = yin(frames[active], sr, fmin=fmin, fmax=fmax, threshold=yin_threshold)
    voiced = active & (aperiodicity <= 1.0 - voicing_min) & np.isfinite(f0)
    pitch = _pitch_measures(f0, aperiodicity, voiced, power, freqs, sr / hop)
    smooth_env = smooth_envelope(x, sr, env_hop, start=int(sr * 0.005))[: len(env)]  # frame centres
    envelope = _envelope_measures(env, env_db, smooth_env, env_rate, active_range_db, event_range_db)

    signal_db = float(np.percentile(env_db, 95))
    floor_db = float(np.percentile(env_db, 10)) if np.mean(env_db < peak_db - gap_db) >= 0.1 else _NAN
    if np.isfinite(floor_db):
        snr = signal_db - floor_db
    elif voiced.sum() >= 0.5 * active.sum():
        snr = pitch["harmonic_snr_db"]
    else:
        snr = _NAN
    rates = offset_decay_rates(env_db, env_rate, floor_db if np.isfinite(floor_db) else DB_FLOOR)
    mean_power = power[active].mean(axis=0)

    return AcousticMeasurements(
        **base, **pitch, **envelope,
        active_rms_dbfs=float(power_to_db(np.mean(env[active_env] ** 2))),
        active_fraction=float(active_env.mean()), voiced_fraction=float(voiced.sum() / max(active.sum(), 1)),
        periodicity=float(np.median(1.0 - aperiodicity[active])),
        centroid_hz=float(librosa.feature.spectral_centroid(S=mean_power[:, None], freq=freqs)[0, 0]),
        flatness=float(np.mean(librosa.feature.spectral_flatness(S=power[active][:, freqs >= fmin].T, power=1.0,
                                                                 amin=_TINY))),
        low_share=float(mean_power[freqs < 150.0].sum() / max(mean_power.sum(), _TINY)),
        loud_periodicity=float(np.median(1.0 - aperiodicity[loud])),
        noise_floor_db=floor_db, snr_db=float(snr),
        rt60_s=float(60.0 / max(np.median(rates), 1e-3)) if len(rates) else _NAN, n_offsets=int(len(rates)),
    )
