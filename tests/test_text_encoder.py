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

from and_lightning.describe.calibration import calibrate
from and_lightning.describe.closed_set import map_to_concept

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONF = Path(__file__).resolve().parents[1] / "conf"
WORDS = "a dog barks loudly rain falls on the roof this is an audio about".split()


@pytest.fixture(scope="module")
def minilm():
    return instantiate(OmegaConf.load(CONF / "text_encoder" / "minilm.yaml"))


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>"), len(vocab)


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    tok, vocab_size = _tiny_tokenizer()
    cfg = ClapConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=24, projection_dim=16),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=(4, 4),
                          depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                          projection_dim=16, num_classes=4),
        projection_dim=16,
    )
    d = tmp_path_factory.mktemp("tiny_clap")
    ClapModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    ClapFeatureExtractor(feature_size=16, max_length_s=1).save_pretrained(d)
    return str(d)


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


def test_tiny_clap_text_and_audio_encoders(tiny_clap_dir):
    text_cfg = OmegaConf.load(CONF / "text_encoder" / "clap.yaml")
    text_cfg.model = tiny_clap_dir
    enc = instantiate(text_cfg)
    e = enc.encode(["a dog barks", "rain falls on the roof " * 10, "a dog barks"])  # 2nd exceeds 24 positions
    assert e.shape == (3, 16) and enc.dim == 16
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])

    audio_cfg = OmegaConf.load(CONF / "describe" / "default.yaml").closed_set.audio_encoder
    audio_cfg.model = tiny_clap_dir
    audio = instantiate(audio_cfg)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(8000).astype(np.float32), 0.1 * rng.standard_normal(40000).astype(np.float32)]
    a = audio.encode(waves, sample_rate=16000)  # resampled to 48 kHz, the 2nd cut to 1 s
    assert a.shape == (2, 16)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(audio.encode(waves, sample_rate=16000), a)  # deterministic crop
    with pytest.raises(ValueError, match="mono 1-D"):
        audio.encode([np.zeros((2, 100), dtype=np.float32)], sample_rate=16000)


def test_tiny_clip_text_encoder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tok, vocab_size = _tiny_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=12, projection_dim=8, bos_token_id=0,
                         eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=8, patch_size=4, projection_dim=8),
        projection_dim=8,
    )
    CLIPModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clip_cfg = OmegaConf.load(CONF / "text_encoder" / "clip.yaml")
    clip_cfg.model = str(tmp_path)
    enc = instantiate(clip_cfg)
    e = enc.encode(["a dog barks", "rain falls on the roof " * 10])  # 2nd truncated to 12 tokens
    assert e.shape == (2, 8) and enc.max_length == 12
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
