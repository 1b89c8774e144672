"""Text/audio encoders: offline MiniLM (loaded once for the module) and tiny random CLIP/CLAP checkpoints
built from config classes, all instantiated from the project's Hydra configs; Module B and ICL mapping on
real MiniLM embeddings."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from and_lightning.describe.calibration import DEFAULT_THRESHOLD, ORIGINAL_THRESHOLD, calibrate
from and_lightning.describe.closed_set import map_to_concept

from tiny_hf import tiny_clap, tiny_clip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def minilm():
    return instantiate(OmegaConf.load(CONF / "text_encoder" / "minilm.yaml"))


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory)


def test_minilm_encodes_unit_vectors_with_dedup(minilm):
    texts = ["A dog barks.", "A puppy is barking.", "Heavy rain falls on a roof.", "A dog barks."]
    e = minilm.encode(texts)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    assert torch.equal(e[0], e[3]) and len(minilm._cache) >= 3
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # meaning, not noise
    assert torch.equal(minilm.encode(["A dog barks."])[0], e[0])
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode("A dog barks.")


def test_persisted_embeddings_are_per_text_and_rows_keep_input_order(minilm, tmp_path):
    """New texts are embedded shortest first (3 per batch here); each row still belongs to its own text, within
    padding's last bits of the text embedded alone. Persisted per text: a fresh encoder asking for some of them in
    another order and batching reads the very same floats back (stages run apart equal one process)."""
    texts = ["A long and steady low-pitched hum with a reverberant tail that fades out slowly.", "Hiss.",
             "Most of them are quiet and steady.", "A click.", "Rain on a tin roof, with distant thunder.",
             "Birds chirp.", "An engine idles, then revs up twice before it stops."]
    first = type(minilm)(batch_size=3)
    first.persist(tmp_path / "emb.sqlite", {"model": "minilm"})
    got = first.encode(texts)
    alone = torch.nn.functional.normalize(torch.stack([first.model.encode([t], convert_to_tensor=True)[0]
                                                       for t in texts]).float(), dim=-1)
    assert (got - alone).abs().max() < 1e-5
    assert torch.equal((got @ alone.T).argmax(dim=1), torch.arange(len(texts)))
    again = type(minilm)(batch_size=2)
    again.persist(tmp_path / "emb.sqlite", {"model": "minilm"})
    order = [4, 0, 6, 2]
    assert torch.equal(again.encode([texts[i] for i in order]), got[order])


def test_calibration_on_real_sentences(minilm):
    high = ("All of the clips contain a dog barking loudly. The recordings are noisy and of low quality. "
            "The barking is sharp, short and repetitive.")
    low = "The clips have poor recording quality with a lot of background noise. A person is speaking softly in a quiet room."
    out = calibrate(high, low, minilm, threshold=0.5)
    assert out.removed_high == ["The recordings are noisy and of low quality."]
    assert out.high == ["All of the clips contain a dog barking loudly.", "The barking is sharp, short and repetitive."]
    assert out.removed_low == ["The clips have poor recording quality with a lot of background noise."]


def test_map_free_answers_to_esc50_concepts(minilm):
    esc = yaml.safe_load((CONF / "concepts" / "esc50.yaml").read_text())["concepts"]
    cases = {"a dog barking loudly": "dog", "rainfall on a roof": "rain", "someone typing on a keyboard": "keyboard_typing",
             '{"concept": "church bell", "reason": "bells ring"}': "church_bells", "Answer: a ticking clock": "clock_tick"}
    for answer, concept in cases.items():
        assert map_to_concept(answer, esc, minilm) == concept, answer


def test_tiny_clap_text_and_audio_towers(tiny_clap_dir):
    cfg = OmegaConf.load(CONF / "text_encoder" / "clap.yaml")
    cfg.model = tiny_clap_dir
    enc = instantiate(cfg)
    e = enc.encode(["a dog barks", "rain falls on the roof " * 10, "a dog barks"])  # 2nd exceeds 24 positions
    assert e.shape == (3, 16) and enc.dim == 16
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])

    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (8000, 40000, 16000)]
    a = enc.encode_audio(waves, sample_rate=16000)  # resampled to 48 kHz, the 2nd cut to 1 s
    assert a.shape == (3, 16) and enc.audio_sample_rate == 48000
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(a[0], a[1])
    torch.testing.assert_close(enc.encode_audio(waves, sample_rate=16000), a)  # deterministic crop
    enc.audio_batch_size = 2  # a generator read two clips at a time gives the same embeddings
    torch.testing.assert_close(enc.encode_audio((w for w in waves), sample_rate=16000), a)
    with pytest.raises(ValueError, match="mono 1-D"):
        enc.encode_audio([np.zeros((2, 100), dtype=np.float32)], sample_rate=16000)


def test_tiny_clip_text_encoder(tmp_path):
    tiny_clip(tmp_path, max_positions=12)
    clip_cfg = OmegaConf.load(CONF / "text_encoder" / "clip.yaml")
    clip_cfg.model = str(tmp_path)
    enc = instantiate(clip_cfg)
    e = enc.encode(["a dog barks", "rain falls on the roof " * 10])  # 2nd truncated to 12 tokens
    assert e.shape == (2, 8) and enc.max_length == 12
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))


def test_calibration_keeps_contrasts_and_removes_repeats(minilm):
    """Module B (issue 13): a high-activation sentence that says the opposite of a low-activation one is what the
    unit responds to, however close MiniLM puts the two; a true repeat is still removed, and `faithful` removes
    contrasts as the original did."""
    pairs = [("Most of them are loud and steady.", "Most of them are quiet and steady."),  # cosine 0.908
             ("Most of them are loud rising chirps.", "Most of them are loud falling chirps.")]  # cosine 0.915
    repeat = "All of them have a clean background."
    for high, low in pairs:
        assert float(minilm.encode([high])[0] @ minilm.encode([low])[0]) > DEFAULT_THRESHOLD  # the threshold alone removes
        out = calibrate(f"{high} {repeat}", f"{low} {repeat}", minilm)
        assert out.high == [high] and out.low == [low], out
        assert out.removed_high == [repeat] == out.removed_low
        assert calibrate(high, low, minilm, threshold=ORIGINAL_THRESHOLD, faithful=True).high == []
