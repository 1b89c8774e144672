"""Audio file I/O with soundfile + torchaudio resampling, and clear errors that name the file."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from and_lightning.data.ogg import with_serial
from and_lightning.store.atomic import atomic_path

OGG_SERIAL = 0x414E4400  # "AND\0": every Ogg stream we write carries this serial number


class AudioError(ValueError):
    """Raised for audio that cannot be used: unreadable, empty, non-finite or wrongly shaped."""


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read `path` as a mono float32 waveform [T]; resample to `sample_rate` if given. Returns (wave, sr)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        with sf.SoundFile(str(path)) as f:
            declared = _declared_beyond_file(f.extra_info)
            data, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise AudioError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from e
    if declared:
        raise AudioError(f"{path}: truncated audio file: its header declares {declared[0]} bytes of samples but "
                         f"only {declared[1]} are in the file ({data.shape[0]} frames readable)")
    if data.ndim != 2 or data.shape[1] < 1:
        raise AudioError(f"{path}: expected [frames, channels] audio, got shape {data.shape}")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 frames)")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(wave).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if sample_rate is not None and sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
        sr = sample_rate
    return wave, sr


# libsndfile's header log notes a chunk size larger than what the file holds: "data : 32000 (should be 15978)"
_CHUNK_BEYOND_FILE = re.compile(r"^\s*(?:data|SSND) : (\d+) \(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZE = (0, 0xFFFFFFFF)  # streamed WAVs whose writer could not seek back to fill in the size


def _declared_beyond_file(header_log: str) -> tuple[int, int] | None:
    """(declared, present) sample-data bytes when the header promises more than the file holds (a cut-off file)."""
    found = _CHUNK_BEYOND_FILE.search(header_log)
    if found is None:
        return None
    declared, present = int(found[1]), int(found[2])
    return (declared, present) if declared > present and declared not in _UNKNOWN_SIZE else None


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample the last axis from `orig_sr` to `new_sr` (no-op when equal)."""
    if orig_sr == new_sr:
        return wave
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    return AF.resample(wave, orig_sr, new_sr)


def fix_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to exactly `num_samples`."""
    n = wave.shape[-1]
    if n >= num_samples:
        return wave[..., :num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - n))


def _mono_samples(path: str | os.PathLike, wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """`wave` as a float32 array [T], or an AudioError naming `path` (the file it was to be written to)."""
    arr = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise AudioError(f"{path}: expected a non-empty mono waveform [T] (or [1, T]), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    return arr.astype(np.float32)


def save_audio(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform as 16-bit PCM WAV (atomically)."""
    arr = _mono_samples(path, wave)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), arr, sample_rate, subtype="PCM_16", format="WAV")


OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # the only input rates the Opus encoder takes


def opus_rate(sample_rate: int) -> int:
    """The lowest rate Opus encodes that keeps every frequency of `sample_rate` audio (48 kHz above that)."""
    return next((r for r in OPUS_RATES if r >= sample_rate), OPUS_RATES[-1])


def save_opus(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int, kbps: float = 24.0) -> None:
    """Write a mono waveform as Ogg Opus (variable bit rate around `kbps` kbit/s; resampled to `opus_rate` first),
    atomically and byte-reproducibly: the same samples give the same file (the Ogg serial number is fixed)."""
    arr = _mono_samples(path, wave)
    rate = opus_rate(sample_rate)
    arr = resample(torch.from_numpy(arr), sample_rate, rate).numpy()
    buf = io.BytesIO()
    # libsndfile maps compression level 0..1 linearly to 256..6 kbit/s for Opus
    level = min(max((256.0 - kbps) / 250.0, 0.0), 1.0)
    sf.write(buf, arr, rate, format="OGG", subtype="OPUS", compression_level=level)
    with atomic_path(path) as tmp:
        tmp.write_bytes(with_serial(buf.getvalue(), OGG_SERIAL))
