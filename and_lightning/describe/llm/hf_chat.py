"""Chat LLM run locally with transformers: AutoModelForCausalLM + the tokenizer's chat template, batched generate.

`model` is a local directory or a hub id (the hub needs network; set HF_HUB_OFFLINE=1 on offline machines); with
`gguf_file` it is the directory or installed package holding that GGUF file, converted once per machine
(`gguf.converted_model`). Structured requests get the schema as an instruction and, with `constrained`, decoding
masked to it (`constrained.JSONSchemaLogitsProcessor`). Text requests are generated with repetition control
(`repetition_penalty`, `no_repeat_ngram_size`; never on structured requests, whose JSON repeats by design). Every
reply is validated (`schema.valid_reply`); with sampling an invalid reply is regenerated up to `reply_retries` times,
with greedy decoding (temperature 0) a retry would repeat it, so it fails at once (a request with `text_fallback`
keeps it as text instead).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch

from and_lightning.describe.llm.base import ChatLLM, ChatRequest, LLMError, LLMReplyError
from and_lightning.describe.llm.constrained import JSONSchemaLogitsProcessor, ll_tokenizer
from and_lightning.describe.llm.gguf import converted_model, locate_gguf
from and_lightning.describe.llm.schema import InvalidReply, shown, valid_reply


def load_pretrained(who: str, what: str, path: str, processor_cls: Any, model_cls: Any, dtype: str,
                    device: str) -> tuple[Any, Any]:
    """(tokenizer or processor, model in eval mode on `device`) from a local directory or hub id, padding on the left
    for batched generation; one error naming `who` and `path` when they do not load."""
    try:
        processor = processor_cls.from_pretrained(path)
        model = model_cls.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise LLMError(f"{who}: cannot load {what} from {path!r} (a local directory or hub id; offline machines need "
                       f"a local path): {e}", status="load_failed") from e
    getattr(processor, "tokenizer", processor).padding_side = "left"  # a decoder-only LM generates after the prompt
    return processor, model.to(device).eval()


def generate_text(model: Any, processor: Any, inputs: Any, seed: int, temperature: float, top_p: float,
                  **kwargs: Any) -> list[str]:
    """The decoded new tokens of `model.generate` on a batch: greedy at temperature 0, else sampled with `seed`
    (without touching the global RNG)."""
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0
                else {"do_sample": False})
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(**inputs, **sampling, **kwargs)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def with_schema_instruction(messages: list[dict], schema: dict) -> list[dict]:
    """`messages` with a system instruction to answer in JSON matching `schema` (models without constrained
    decoding need to be told)."""
    instruction = (
        "Answer with one JSON object and nothing else. It must match this JSON schema: "
        + json.dumps(schema, sort_keys=True)
    )
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + instruction}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


@dataclass
class HFChatLLM(ChatLLM):
    """`ChatLLM` over a local transformers causal LM; loads lazily on the first uncached request."""

    name: str = "hf"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 256
    batch_size: int = 8
    reply_retries: int = 2  # regenerations of invalid replies (as AsyncRetryingLLM.reply_retries)
    device: str = "cpu"
    dtype: str = "float32"
    gguf_file: str | None = None  # a GGUF file in `model` (a directory or an installed package)
    gguf_cache_dir: str | None = None  # where GGUF files are converted to; None: gguf.default_cache_dir()
    constrained: bool = True  # structured requests: decoding masked to the JSON schema (llguidance)
    repetition_penalty: float = 1.0  # text requests: > 1 discourages repeating tokens
    no_repeat_ngram_size: int = 0  # text requests: > 0 forbids repeating any n-gram of this many tokens

    semantic_fields = ("temperature", "top_p", "seed", "max_new_tokens", "dtype", "gguf_file", "constrained",
                       "repetition_penalty", "no_repeat_ngram_size")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._model: Any = None
        self._tokenizer: Any = None
        self._ll_tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.model
        if self.gguf_file:
            path = str(converted_model(locate_gguf(self.model, self.gguf_file), self.gguf_cache_dir))
        self._tokenizer, self._model = load_pretrained(self.describe(), "the model/tokenizer", path, AutoTokenizer,
                                                       AutoModelForCausalLM, self.dtype, self.device)
        if self._tokenizer.chat_template is None:
            raise LLMError(
                f"{self.describe()}: the tokenizer at {self.model!r} has no chat template; use an instruct/chat model",
                backend=self.name, model=self.model, status="no_chat_template",
            )
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token

    def generate(self, conversations: list[list[dict]], seed: int,
                 schemas: list[dict | None] | None = None) -> list[str]:
        """Greedy or sampled replies to a batch of conversations (one forward-generate call). `schemas`: the JSON
        schema of each structured request (None: text), which `constrained` decoding keeps to."""
        from transformers import LogitsProcessorList

        self._load()
        tok = self._tokenizer
        schemas = schemas or [None] * len(conversations)
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {}
        if all(s is None for s in schemas):
            kwargs.update(repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size)
        elif self.constrained:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = ll_tokenizer(tok)
            kwargs["logits_processor"] = LogitsProcessorList(
                [JSONSchemaLogitsProcessor(self._ll_tokenizer, schemas, enc["input_ids"].shape[1])])
        return generate_text(self._model, tok, enc, seed, self.temperature, self.top_p,
                             max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id, **kwargs)

    async def _complete_uncached(
        self, items: list[tuple[str, ChatRequest]], on_result: Callable[..., None]
    ) -> None:
        attempts = self.reply_retries + 1 if self.temperature > 0 else 1
        items = sorted(items, key=lambda kv: kv[1].schema is not None)  # text and structured in separate batches
        for start in range(0, len(items), self.batch_size):
            pending = items[start : start + self.batch_size]
            last_error: dict[str, InvalidReply] = {}
            for attempt in range(attempts):
                conversations = [
                    r.messages if r.schema is None else with_schema_instruction(r.messages, r.schema)
                    for _, r in pending
                ]
                self.stats.requests_sent += len(pending)
                self.stats.retries += len(pending) if attempt else 0
                texts = await asyncio.to_thread(self.generate, conversations, self.seed + attempt,
                                                [r.schema for _, r in pending])
                failed = []
                for (key, req), text in zip(pending, texts):
                    try:
                        value = valid_reply(text, req.schema, req.text_fallback and attempt == attempts - 1)
                    except InvalidReply as e:
                        failed.append((key, req))
                        last_error[key] = e
                        continue
                    on_result(key, value)
                pending = failed
                if not pending:
                    break
            if pending:
                why = (
                    f"after {attempts} attempts"
                    if self.temperature > 0
                    else "greedy decoding (temperature 0) would repeat the same reply, so it was not retried"
                )
                key, req = pending[0]
                error = last_error[key]
                raise LLMReplyError(
                    f"{self.describe()}: {len(pending)} request(s) got no valid reply ({why}); the first, a "
                    f"{req.label} request: {error.reason}; its reply: {shown(error.reply)}",
                    backend=self.name, model=self.model, status="invalid_reply",
                )
