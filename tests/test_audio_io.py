"""Audio I/O: mono mixdown, resampling, crop/pad, save/load round trip, and AudioErrors that name the bad file."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from and_lightning.data.audio_io import AudioError, fix_length, load_audio, resample, save_audio
from fixtures_audio import write_tone


def peak_hz(wave: torch.Tensor, sample_rate: int) -> float:
    """Frequency of the largest FFT magnitude bin."""
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(wave.shape[-1], 1.0 / sample_rate)[spectrum.argmax()])


def test_stereo_file_is_mixed_down_to_the_channel_mean(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(1000, 2)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, 8000, subtype="FLOAT")

    wave, sr = load_audio(path)

    assert sr == 8000
    assert wave.dtype == torch.float32 and wave.shape == (1000,)
    np.testing.assert_allclose(wave.numpy(), (stereo[:, 0] + stereo[:, 1]) / 2, rtol=0, atol=1e-7)


def test_load_without_sample_rate_keeps_the_native_rate(tmp_path):
    written = write_tone(tmp_path / "a.wav", sample_rate=22050, seconds=0.2, subtype="FLOAT")
    wave, sr = load_audio(tmp_path / "a.wav")
    assert sr == 22050
    np.testing.assert_allclose(wave.numpy(), written[:, 0], atol=1e-7)


@pytest.mark.parametrize("orig_sr", [22050, 44100])
def test_load_resamples_to_the_requested_rate_keeping_pitch(tmp_path, orig_sr):
    write_tone(tmp_path / "tone.wav", sample_rate=orig_sr, seconds=0.2, freq=1000.0)

    wave, sr = load_audio(tmp_path / "tone.wav", sample_rate=16000)

    assert sr == 16000
    assert wave.shape == (3200,)  # 0.2 s at 16 kHz
    assert peak_hz(wave, 16000) == pytest.approx(1000.0, abs=5.0)  # 5 Hz = one FFT bin at 0.2 s


def test_resample_is_identity_when_rates_match_and_rejects_non_positive_rates():
    wave = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert resample(wave, 16000, 16000) is wave
    with pytest.raises(AudioError, match="positive"):
        resample(wave, 0, 16000)


def test_fix_length_crops_and_zero_pads_the_last_axis():
    wave = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert fix_length(wave, 2).tolist() == [1.0, 2.0]
    assert fix_length(wave, 6).tolist() == [1.0, 2.0, 3.0, 4.0, 0.0, 0.0]
    assert fix_length(wave, 4).tolist() == [1.0, 2.0, 3.0, 4.0]
    batch = torch.ones(2, 3)
    assert fix_length(batch, 5).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]


def test_save_then_load_round_trips_within_16_bit_precision(tmp_path):
    rng = np.random.default_rng(1)
    wave = torch.from_numpy(rng.uniform(-0.9, 0.9, size=4000).astype(np.float32))
    path = tmp_path / "nested" / "dir" / "out.wav"

    save_audio(path, wave, 16000)
    loaded, sr = load_audio(path)

    assert sr == 16000
    assert loaded.shape == wave.shape
    assert torch.max(torch.abs(loaded - wave)).item() <= 1.0 / 32768 + 1e-7
    assert sf.info(str(path)).subtype == "PCM_16"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]  # no temp file left behind


def test_save_accepts_a_numpy_array(tmp_path):
    save_audio(tmp_path / "np.wav", np.array([0.25, -0.5, 0.0]), 8000)
    loaded, sr = load_audio(tmp_path / "np.wav")
    assert sr == 8000
    assert loaded.tolist() == [0.25, -0.5, 0.0]  # exactly representable in 16-bit PCM


def _write_float_wav_with(value: float, path):
    samples = np.zeros(200, dtype=np.float32)
    samples[50] = value
    sf.write(str(path), samples, 16000, subtype="FLOAT")


BAD_FILES = {
    "garbage.wav": lambda p: p.write_bytes(np.random.default_rng(2).bytes(4096)),
    "zero_bytes.wav": lambda p: p.write_bytes(b""),
    "no_frames.wav": lambda p: sf.write(str(p), np.zeros((0, 1), dtype=np.float32), 16000),
    "has_nan.wav": lambda p: _write_float_wav_with(float("nan"), p),
    "has_inf.wav": lambda p: _write_float_wav_with(float("inf"), p),
    "missing.wav": lambda p: None,
}
EXPECTED_REASON = {
    "garbage.wav": "cannot read", "zero_bytes.wav": "cannot read", "no_frames.wav": "0 frames",
    "has_nan.wav": "NaN or infinite", "has_inf.wav": "NaN or infinite", "missing.wav": "not found",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_audio_file_raises_audio_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    BAD_FILES[name](path)
    if name == "no_frames.wav":
        assert path.stat().st_size > 0 and sf.info(str(path)).frames == 0  # a real header, no frames

    with pytest.raises(AudioError) as err:
        load_audio(path, sample_rate=16000)

    assert str(path) in str(err.value)
    assert EXPECTED_REASON[name] in str(err.value)
    assert isinstance(err.value, ValueError)


def test_save_audio_of_a_channel_first_mono_tensor_writes_one_channel(tmp_path):
    path = tmp_path / "one.wav"
    try:
        save_audio(path, torch.zeros(1, 100), 16000)
    except AudioError:
        return  # refusing the shape is also a correct fix
    info = sf.info(str(path))
    assert (info.channels, info.frames) == (1, 100)


def test_save_audio_refuses_non_finite_samples(tmp_path):
    with pytest.raises(AudioError, match="nan.wav"):
        save_audio(tmp_path / "nan.wav", np.array([0.1, np.nan], dtype=np.float32), 16000)
