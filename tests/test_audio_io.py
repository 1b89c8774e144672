"""Audio I/O: mono mixdown, resampling, crop/pad, save/load round trip, and AudioErrors that name the bad file."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from and_lightning.data.audio_io import (OGG_SERIAL, AudioError, fix_length, load_audio, opus_rate, resample,
                                         save_audio, save_opus)
from and_lightning.data.ogg import ogg_crc, with_serial
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


# ------------------------------------------------------------------------- Ogg Opus (the HTML report's audio)
def ogg_pages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(serial, stored CRC, page bytes) of each page, parsed independently of and_lightning.data.ogg."""
    pages, pos = [], 0
    while pos < len(data):
        n = data[pos + 26]
        end = pos + 27 + n + sum(data[pos + 27:pos + 27 + n])
        serial, crc = (int.from_bytes(data[pos + i:pos + i + 4], "little") for i in (14, 22))
        pages.append((serial, crc, data[pos:end]))
        pos = end
    return pages


def test_ogg_crc_of_hand_computed_inputs():
    assert ogg_crc(b"") == 0 and ogg_crc(b"\x00\x00") == 0
    assert ogg_crc(b"\x01") == 0x04C11DB7  # one shifted-in bit: the polynomial itself
    assert ogg_crc(b"\x80") == 0x690CE0EE  # 0x80 << 24 through eight shift-xor rounds, worked by hand


def test_with_serial_reproduces_libsndfile_pages_and_stays_decodable(tmp_path):
    buf = tmp_path / "a.ogg"
    sf.write(str(buf), 0.3 * np.sin(np.arange(16000) / 7).astype(np.float32), 16000, format="OGG", subtype="OPUS")
    data = buf.read_bytes()
    pages = ogg_pages(data)
    assert len(pages) >= 3 and len({s for s, _, _ in pages}) == 1
    assert with_serial(data, pages[0][0]) == data  # our CRC is libogg's: same serial gives back the same bytes
    fixed = with_serial(data, 12345)
    assert [s for s, _, _ in ogg_pages(fixed)] == [12345] * len(pages)
    buf.write_bytes(fixed)
    assert sf.info(str(buf)).frames == 16000  # libogg checks every page's CRC while reading
    with pytest.raises(ValueError, match="not an Ogg page at byte 0"):
        with_serial(b"RIFF" + data[4:], 1)
    with pytest.raises(ValueError, match="runs past the end"):
        with_serial(data[:-10], 1)


def test_opus_rate_is_the_lowest_opus_rate_that_keeps_the_band():
    assert [opus_rate(r) for r in (8000, 11025, 16000, 22050, 44100, 96000)] == [8000, 12000, 16000, 24000, 48000,
                                                                                  48000]


def test_save_opus_is_short_byte_reproducible_and_keeps_the_length(tmp_path):
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    save_opus(tmp_path / "a.opus", wave, 16000)
    save_opus(tmp_path / "b.opus", torch.from_numpy(wave), 16000)
    data = (tmp_path / "a.opus").read_bytes()
    assert data == (tmp_path / "b.opus").read_bytes()  # libsndfile alone picks a random serial number each time
    assert {s for s, _, _ in ogg_pages(data)} == {OGG_SERIAL}
    info = sf.info(str(tmp_path / "a.opus"))
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("OGG", "OPUS", 16000, 16000)
    assert len(data) < 4500  # ~24 kbit/s: 1 s in about 3 kB (16-bit WAV: 32 kB)
    loaded, _ = load_audio(tmp_path / "a.opus")
    assert peak_hz(loaded, 16000) == pytest.approx(440, abs=2)
    save_opus(tmp_path / "c.opus", wave, 22050)
    assert (sf.info(str(tmp_path / "c.opus")).samplerate, sf.info(str(tmp_path / "c.opus")).frames) == (24000, 17415)
    with pytest.raises(AudioError, match="nan.opus"):
        save_opus(tmp_path / "nan.opus", np.array([0.1, np.nan]), 16000)
