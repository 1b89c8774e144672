"""The openai_audio captioner through the real openai client against the local test server, and caption_clips
(one caption per unique audio, cached, a rerun sends nothing)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.captioners.cached import audio_sha256, caption_clips
from and_lightning.describe.captioners.openai_audio import OpenAIAudioCaptioner, wav_base64
from and_lightning.describe.llm.base import LLMRequestError
from and_lightning.store.kvcache import KVCache
from openai_server import OpenAITestServer

CONF = Path(__file__).resolve().parents[1] / "conf"


def audio_part(body: dict) -> dict:
    (part,) = [p for p in body["messages"][-1]["content"] if p["type"] == "input_audio"]
    return part["input_audio"]


def answer_with_duration(body: dict) -> str:
    """The test server 'captions' a clip by decoding its WAV: 'N samples at R Hz'."""
    wave, sr = sf.read(io.BytesIO(base64.b64decode(audio_part(body)["data"])), dtype="float32")
    return f"{len(wave)} samples at {sr} Hz"


def tone(freq: float, seconds: float = 0.5, sr: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def server():
    with OpenAITestServer(answer=answer_with_duration) as srv:
        yield srv


def make_captioner(server: OpenAITestServer, **kw) -> OpenAIAudioCaptioner:
    cfg = dict(model="audio-test-model", base_url=server.base_url, api_key_env="AND_TEST_API_KEY",
               max_retries=2, reply_backoff=0.01, timeout=5.0)
    cfg.update(kw)
    return OpenAIAudioCaptioner(**cfg)


def test_wav_base64_is_a_16bit_wav_clipped_to_unit_range():
    data = base64.b64decode(wav_base64(np.array([0.0, 0.5, 2.0, -3.0], np.float32), 16000))
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("WAV", "PCM_16", 16000, 4)
    wave, _ = sf.read(io.BytesIO(data), dtype="int16")
    assert wave.tolist() == [0, 16384, 32767, -32768]  # libsndfile: x * 32768, clipped to int16


def test_caption_sends_prompt_and_input_audio_wav_resampled_to_16k(server, monkeypatch):
    monkeypatch.setenv("AND_TEST_API_KEY", "sk-caption-test")
    captioner = make_captioner(server, prompt="What do you hear?")
    clips = [Clip("a", tone(440, 0.5, 8000), 8000), Clip("b", tone(880, 0.25, 16000), 16000)]
    assert captioner.caption(clips) == ["8000 samples at 16000 Hz", "4000 samples at 16000 Hz"]
    for body in server.bodies():
        assert body["model"] == "audio-test-model"
        (message,) = body["messages"]
        assert message["role"] == "user"
        assert [p["type"] for p in message["content"]] == ["text", "input_audio"]
        assert message["content"][0]["text"] == "What do you hear?"
        assert audio_part(body)["format"] == "wav"
        assert not audio_part(body)["data"].startswith("data:")
    assert all(r.headers["authorization"] == "Bearer sk-caption-test" for r in server.requests)


def test_captioner_retries_5xx_and_reports_clear_error(server):
    server.fault_next(503)
    captioner = make_captioner(server)
    assert captioner.caption([Clip("a", tone(440), 8000)]) == ["8000 samples at 16000 Hz"]
    assert captioner.stats.retries == 1
    server.fault_next(500, 3)
    with pytest.raises(LLMRequestError, match=r"openai_audio backend \(model 'audio-test-model'.*HTTP 500"):
        captioner.caption([Clip("b", tone(660), 8000)])


def test_config_builds_the_captioner(server, tmp_path):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "captioner" / "openai_audio.yaml")
    assert cfg.cache_path.endswith("/openai_audio.sqlite")  # answers are cached by default
    cfg.base_url, cfg.cache_path = server.base_url, str(tmp_path / "openai_audio.sqlite")
    captioner = instantiate(cfg)
    assert isinstance(captioner, OpenAIAudioCaptioner) and captioner.name == "openai_audio"
    assert captioner.prompt.startswith("Describe this audio clip") and captioner.llm.concurrency == 16
    assert captioner.caption([Clip("a", tone(440), 8000)]) == ["8000 samples at 16000 Hz"]


# --- caption_clips: one caption per unique audio, cached ------------------------------------------------------
def test_caption_clips_captions_each_unique_clip_once_and_rerun_sends_nothing(server, tmp_path):
    a, b, c = tone(440), tone(660), tone(880, 0.75)
    clips = [Clip("a", a, 8000), Clip("b", b, 8000), Clip("a_copy", a.copy(), 8000), Clip("c", c, 8000),
             Clip("b", b, 8000)]  # same id twice, and two ids with the same audio
    cache = KVCache(tmp_path / "captions.sqlite")
    captions = caption_clips(make_captioner(server), clips, cache, chunk_size=2)
    assert captions == {"a": "8000 samples at 16000 Hz", "b": "8000 samples at 16000 Hz",
                        "a_copy": "8000 samples at 16000 Hz", "c": "12000 samples at 16000 Hz"}
    assert (captions.requested, captions.cache_hits, captions.unique) == (3, 0, 3)
    assert server.count == 3

    again = caption_clips(make_captioner(server), clips, KVCache(tmp_path / "captions.sqlite"))
    assert again == captions and (again.requested, again.cache_hits) == (0, 3) and server.count == 3

    other_prompt = caption_clips(make_captioner(server, prompt="Name the instrument."), clips[:1], cache)
    assert other_prompt.requested == 1 and server.count == 4


class FakeCountingCaptioner(Captioner):
    """Fake for speed: captions by clip length, records every call, fails once `fail_after` clips were done."""

    name, model, prompt = "fake_counting", "none", "count"

    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def caption(self, clips):
        done = sum(len(c) for c in self.calls)
        if self.fail_after is not None and done >= self.fail_after:
            raise RuntimeError("fake captioner failure")
        self.calls.append([c.clip_id for c in clips])
        return [f"len {len(c.wave)}" for c in clips]


def test_caption_clips_keeps_finished_chunks_when_the_captioner_fails(tmp_path):
    clips = [Clip(f"c{i}", np.full(100 + i, 0.1, np.float32), 16000) for i in range(5)]
    cache = KVCache(tmp_path / "captions.sqlite")
    with pytest.raises(RuntimeError, match="fake captioner failure"):
        caption_clips(FakeCountingCaptioner(fail_after=4), clips, cache, chunk_size=2)
    assert len(cache) == 4
    resumed = FakeCountingCaptioner()
    captions = caption_clips(resumed, clips, cache, chunk_size=2)
    assert resumed.calls == [["c4"]] and captions["c4"] == "len 104" and captions.requested == 1


def test_caption_clips_rejects_one_id_with_two_audios(tmp_path):
    clips = [Clip("x", tone(440), 8000), Clip("x", tone(660), 8000)]
    with pytest.raises(ValueError, match="clip id 'x' appears twice with different audio"):
        caption_clips(FakeCountingCaptioner(), clips, KVCache(tmp_path / "c.sqlite"))


def test_audio_hash_depends_on_samples_and_rate_not_id():
    w = tone(440)
    assert audio_sha256(Clip("a", w, 8000)) == audio_sha256(Clip("b", w.copy(), 8000))
    assert audio_sha256(Clip("a", w, 8000)) != audio_sha256(Clip("a", w, 16000))
    assert audio_sha256(Clip("a", w, 8000)) != audio_sha256(Clip("a", w * 0.5, 8000))
