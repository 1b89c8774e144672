"""What a valid LLM reply is, checked by pydantic: a structured reply must match the request's JSON schema, a text
reply (summary, caption) must be readable text of sane length. Also the `response_format` of a JSON schema.

A request's JSON schema (the structured-outputs subset: object, array, string with enum, integer / number with
minimum / maximum, boolean, null) is turned into a strict pydantic model once; `valid_reply` checks both a fresh
reply (text) and a cached one (the parsed value), so a reply that fails is never cached nor served from a cache.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, create_model

MAX_TEXT_CHARS = 20_000  # a summary or caption longer than this is a runaway generation, not an answer
_UNREADABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")  # control characters, undecodable bytes


class InvalidReply(ValueError):
    """A reply that does not give the request what it needs; `reply` holds the reply as received."""

    def __init__(self, reason: str, reply: Any = None):
        super().__init__(reason)
        self.reason, self.reply = reason, reply


def _readable(text: str) -> str:
    if _UNREADABLE.search(text):
        raise ValueError("holds control characters or undecodable bytes")
    if not any(c.isalpha() for c in text):
        raise ValueError("holds no words")
    return text


TextReply = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_readable)
]
_TEXT = TypeAdapter(TextReply, config=ConfigDict(strict=True))


def response_format(schema: dict, strict: bool = True) -> dict:
    """The OpenAI chat-completions `response_format` asking for JSON that matches `schema`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title", "reply")))[:64] or "reply"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def _annotation(schema: dict, name: str) -> Any:
    """The pydantic type of one JSON-schema node."""
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        return Union[tuple(_annotation({**schema, "type": k}, name) for k in kind)]
    if kind == "object":
        required = set(schema.get("required", []))
        fields = {
            field: (_annotation(sub, f"{name}_{field}"), ...) if field in required
            else (Optional[_annotation(sub, f"{name}_{field}")], None)
            for field, sub in schema.get("properties", {}).items()
        }
        extra = "forbid" if schema.get("additionalProperties") is False else "allow"
        return create_model(name, __config__=ConfigDict(strict=True, extra=extra), **fields)
    if kind == "array":
        item = _annotation(schema.get("items", {}), f"{name}_item")
        return Annotated[list[item], Field(min_length=schema.get("minItems"), max_length=schema.get("maxItems"))]
    if kind in ("integer", "number"):
        return Annotated[int if kind == "integer" else float, Field(ge=schema.get("minimum"), le=schema.get("maximum"))]
    simple = {"string": str, "boolean": bool, "null": None, None: Any}
    if kind not in simple:
        raise ValueError(f"unsupported JSON-schema type {kind!r}; expected object, array, string, integer, number, "
                         "boolean or null")
    return simple[kind]


@functools.lru_cache(maxsize=64)
def _reply_adapter(schema_json: str) -> TypeAdapter:
    """The pydantic validator of replies to a request with this JSON schema (an object; strict types;
    `additionalProperties: false` forbids extra fields), built once per schema (its sorted JSON text)."""
    schema = json.loads(schema_json)
    if schema.get("type") != "object":
        raise ValueError(f"a structured request's JSON schema must describe an object, got type {schema.get('type')!r}")
    return TypeAdapter(_annotation(schema, str(schema.get("title", "reply"))))


def _one_line(error: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg'].removeprefix('Value error, ')}"
             for e in error.errors()[:3]]
    return "; ".join(parts) + (f" (+{error.error_count() - 3} more)" if error.error_count() > 3 else "")


def shown(reply: Any, limit: int = 200) -> str:
    """A reply as one line for an error message: repr of its first `limit` characters."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    return repr(text[:limit]) + (f" (+{len(text) - limit} more characters)" if len(text) > limit else "")


def _embedded_object(text: str) -> str | None:
    """The first complete JSON object inside `text` ("Sure! {"answer": "yes", ...} Hope this helps", or one in a
    ```json fence), or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return text[match.start():end]
    return None


def valid_reply(reply: Any, schema: dict | None, text_fallback: bool = False) -> Any:
    """The reply as the caller gets it: stripped text when `schema` is None, else the parsed JSON object (text
    around one complete object, e.g. a ``` fence, is tolerated). `reply` is the raw text, or an already
    parsed value read from a cache. `text_fallback`: a reply to a structured request that is not the JSON asked for
    but readable text is returned as that text (the caller parses it). Raises InvalidReply naming what is wrong."""
    try:
        if schema is None:
            return _TEXT.validate_python(reply)
        adapter = _reply_adapter(json.dumps(schema, sort_keys=True))
        try:
            value = adapter.validate_json(reply) if isinstance(reply, str) else adapter.validate_python(reply)
        except ValidationError:
            embedded = _embedded_object(reply) if isinstance(reply, str) else None
            if embedded is None:
                raise
            value = adapter.validate_json(embedded)
        return adapter.dump_python(value, exclude_unset=True)
    except ValidationError as e:
        if text_fallback and isinstance(reply, str):
            return valid_reply(reply, None)
        raise InvalidReply(_one_line(e), reply) from None
