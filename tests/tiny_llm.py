"""Tiny random chat models built offline (no hub): a byte-level BPE tokenizer (printable ASCII) trained on a few
sentences with a ChatML template, and a 2-layer Llama. For the tests of the `hf` backends (FAKE: random weights); their
output is noise.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "a dog barks loudly in the distance while rain falls on a metal roof",
    "high pitched whistling tone with a steady rhythm and bright timbre",
    "summarize the captions of these audio clips and find what they share",
    "reply with json: {\"summary\": \"...\", \"concepts\": [\"water\", \"engine\"]}",
    "low rumbling engine noise, muffled and distorted, poor recording quality",
]


def build_tiny_tokenizer(extra_special_tokens: list[str] = (), vocab_size: int = 400):
    """A byte-level BPE `PreTrainedTokenizerFast` with ChatML special tokens, trained offline in ~0.1 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = CHAT_SPECIAL_TOKENS + [t for t in extra_special_tokens if t not in CHAT_SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Printable ASCII only (as byte-level symbols): random weights then emit readable noise, which passes reply
    # validation, instead of stray UTF-8 continuation bytes and control characters.
    printable = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(string.printable.strip() + " \n")]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=sorted(set("".join(printable)))
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        extra_special_tokens=specials[len(CHAT_SPECIAL_TOKENS):],
    )


def save_tiny_chat_model(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random 2-layer Llama (hidden 32) and the tiny tokenizer to `path`, loadable by `HFChatLLM`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
