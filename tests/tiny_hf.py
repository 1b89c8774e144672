"""Tiny transformers checkpoints built offline from config classes (FAKE: random weights, real model code):
a word-level tokenizer, a CLAP model (both towers) saved with that tokenizer and a ClapFeatureExtractor, which
`text_encoder=clap text_encoder.model=<dir>` loads like a hub checkpoint, and a CLIP model for `text_encoder=clip`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
# Words of the tests' sentences and of the synthetic set's concepts (each its own token, so concepts differ).
WORDS = sorted(set("a dog barks loudly rain falls on the roof this is an audio about".split())
               | set(yaml.safe_load((CONF / "concepts" / "synth.yaml").read_text())["concepts"]))


def tiny_tokenizer():
    """(RoBERTa-style word-level fast tokenizer over WORDS, its vocabulary size)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>"), len(vocab)


def tiny_clap(tmp_path_factory) -> str:
    """The directory of a tiny random CLAP checkpoint (16-d projections, 24 text positions, 1 s of audio),
    built once per test session and shared by every module that asks."""
    d = tmp_path_factory.getbasetemp() / "tiny_clap"
    if d.is_dir():
        return str(d)
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    tok, vocab_size = tiny_tokenizer()
    cfg = ClapConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=24, projection_dim=16),
        audio_config=dict(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=(4, 4),
                          depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                          projection_dim=16, num_classes=4),
        projection_dim=16,
    )
    tmp = Path(f"{d}.tmp{os.getpid()}")
    ClapModel(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    ClapFeatureExtractor(feature_size=16, max_length_s=1).save_pretrained(tmp)
    shutil.move(tmp, d)
    return str(d)


def tiny_clip(path: Path, max_positions: int = 24) -> str:
    """Save a tiny random CLIP checkpoint (8-d projections, `max_positions` text positions) with the tiny tokenizer
    into `path`; returns it as a string."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tok, vocab_size = tiny_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=max_positions, projection_dim=8,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=8, patch_size=4, projection_dim=8),
        projection_dim=8)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
