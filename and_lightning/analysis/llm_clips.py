"""LLM scoring of numbered clip captions given a unit's description, shared by the simulation (0-10 ratings) and
detection (yes/no) scorers: the messages, the parsing of a structured reply, and the chunked, batched requests
(sent together through the LLM client, which de-duplicates and caches them)."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def numbered_messages(system: str, label: str, description: str, captions: Sequence[str]) -> list[dict]:
    """Chat messages: the `system` instruction, then "<label>: <description>" and the captions numbered from 1."""
    listing = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(captions))
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"{label}: {description}\n\nClips:\n{listing}"}]


def parse_numbered(reply: Any, n: int, key: str, value: Callable[[Mapping[str, Any]], float]) -> np.ndarray:
    """[n] `value(item)` of each item {"clip": <1-based number>, ...} of the reply's list `key`; clips the reply
    leaves out (or numbers out of range) are NaN."""
    if isinstance(reply, str):
        reply = json.loads(reply)
    out = np.full(n, np.nan)
    for item in reply.get(key, []):
        i = int(item["clip"]) - 1
        if 0 <= i < n:
            out[i] = value(item)
    return out


def sized(schema: dict, n: int) -> dict:
    """`schema` whose array properties must hold exactly `n` items: under constrained decoding a small model's
    list then closes after the n-th clip instead of running on to the token cap (SmolLM2 did)."""
    return {**schema, "properties": {k: {**v, "minItems": n, "maxItems": n} if v.get("type") == "array" else v
                                     for k, v in schema["properties"].items()}}


def llm_per_clip(llm: Any, descriptions: Sequence[str], captions: Sequence[str], choices: Sequence[np.ndarray],
                 chunk: int, messages: Callable[[str, list[str]], list[dict]], schema: dict,
                 parse: Callable[[Any, int], np.ndarray]) -> list[np.ndarray]:
    """Per unit, the parsed LLM scores of the captions at its chosen indices: one request per `chunk` clips (its
    schema `sized` to them), all requests sent in one `complete_many`."""
    requests, where = [], []
    for m, (desc, idx) in enumerate(zip(descriptions, choices)):
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            requests.append((messages(desc, [captions[i] for i in part]), sized(schema, len(part))))
            where.append((m, start, len(part)))
    replies = llm.complete_many(requests) if requests else []
    out = [np.full(len(idx), np.nan) for idx in choices]
    for (m, start, n), reply in zip(where, replies):
        out[m][start:start + n] = parse(reply, n)
    return out
