"""The hf_audio_lm captioner on a tiny random Qwen2-Audio built offline (tiny BPE tokenizer, 1-layer encoder,
2-layer Qwen2 LM), saved to disk and loaded back through AutoProcessor + Qwen2AudioForConditionalGeneration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from and_lightning.describe.captioners.base import Clip
from and_lightning.describe.captioners.hf_audio_lm import HFAudioLMCaptioner
from tiny_llm import build_tiny_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def tiny_qwen2_audio_dir(tmp_path_factory) -> str:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = build_tiny_tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder", d_model=16, encoder_layers=1, encoder_attention_heads=2,
            encoder_ffn_dim=32, num_mel_bins=128, max_source_positions=1500,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_qwen2_audio")
    Qwen2AudioForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_captions_a_batch_like_one_by_one_and_deterministically(tiny_qwen2_audio_dir):
    cfg = OmegaConf.load(CONF / "captioner" / "hf_audio_lm.yaml")
    cfg.model, cfg.max_new_tokens, cfg.batch_size = tiny_qwen2_audio_dir, 5, 3
    captioner = instantiate(cfg)
    assert isinstance(captioner, HFAudioLMCaptioner) and captioner.name == "hf_audio_lm"
    rng = np.random.default_rng(0)
    clips = [Clip(f"c{i}", (0.1 * rng.standard_normal(4000 * (i + 1))).astype(np.float32), 8000) for i in range(4)]
    batched = captioner.caption(clips)
    assert len(batched) == 4 and all(isinstance(c, str) for c in batched)
    assert [captioner.caption([c])[0] for c in clips] == batched  # left padding keeps batches exact
    assert captioner.caption(clips) == batched


def test_prompt_holds_one_audio_placeholder_expanded_by_the_processor(tiny_qwen2_audio_dir):
    captioner = HFAudioLMCaptioner(tiny_qwen2_audio_dir, prompt="What is this sound?")
    captioner._load()
    text = captioner._prompt_text()
    assert text.count("<|AUDIO|>") == 1 and "What is this sound?" in text and text.endswith("assistant\n")
    inputs = captioner._processor(text=[text], audio=[np.zeros(16000, np.float32)], sampling_rate=16000,
                                  return_tensors="pt")
    audio_id = captioner._processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    # 1 s = 100 mel frames (hop 160); conv stride 2 -> 50, pooling 2 -> 25 audio tokens
    assert int((inputs["input_ids"] == audio_id).sum()) == 25
    assert tuple(inputs["input_features"].shape) == (1, 128, 3000)  # features are padded to 30 s


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"hf_audio_lm: cannot load a Qwen2-Audio.*nowhere"):
        HFAudioLMCaptioner(str(tmp_path / "nowhere")).caption([Clip("a", np.zeros(10, np.float32), 16000)])
