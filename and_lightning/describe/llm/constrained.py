"""Constrained decoding for the `hf` backend: llguidance masks, at every step, the tokens that would leave the JSON
schema of a structured request, so even a 135 M model writes a parseable object.

llguidance (a Rust library with Python bindings, no further dependencies) was chosen over lm-format-enforcer (its
transformers integration does not import under transformers 5), outlines (pulls jsonschema, diskcache, ...) and
xgrammar (pulls apache-tvm-ffi); transformers 5 itself has no grammar-constrained generation.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from transformers import LogitsProcessor

# A structured reply's free-text fields ("reason") get at most this many characters, so a model that loops inside
# a string still closes the object within the token cap.
MAX_STRING_CHARS = 60


def _bounded(schema: Any) -> Any:
    """`schema` with a maxLength on every string field without one."""
    if isinstance(schema, dict):
        out = {k: _bounded(v) for k, v in schema.items()}
        if out.get("type") == "string" and "enum" not in out:
            out.setdefault("maxLength", MAX_STRING_CHARS)
        return out
    if isinstance(schema, list):
        return [_bounded(v) for v in schema]
    return schema


class JSONSchemaLogitsProcessor(LogitsProcessor):
    """Masks the logits of each batch row whose request has a JSON schema; rows with None generate freely."""

    def __init__(self, ll_tokenizer: Any, schemas: Sequence[dict | None], prompt_length: int):
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        self.prompt_length = prompt_length
        grammar = llguidance.LLMatcher.grammar_from_json_schema
        self.matchers = [None if s is None else llguidance.LLMatcher(ll_tokenizer, grammar(json.dumps(_bounded(s))))
                         for s in schemas]
        self.bitmask = llt.allocate_token_bitmask(len(schemas), ll_tokenizer.vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not m.is_error()]
        if input_ids.shape[1] > self.prompt_length:
            for i in rows:
                if not self.matchers[i].is_stopped():
                    self.matchers[i].consume_token(int(input_ids[i, -1]))
        self.bitmask.fill_(-1)  # every token allowed
        for i in rows:
            if not self.matchers[i].is_error():
                self._llt.fill_next_token_bitmask(self.matchers[i], self.bitmask, i)
        # Unpack the 32-token words to a [batch, vocab] mask (llguidance's own apply runs torch.compile, which
        # needs a C compiler and half a minute on CPU).
        bits = (self.bitmask.unsqueeze(-1) >> self._shifts) & 1
        allowed = bits.flatten(1)[:, : scores.shape[1]].bool().to(scores.device)
        return scores.masked_fill(~allowed, -float("inf"))


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a transformers (fast) tokenizer, built once per loaded model."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)
