"""Structured LLM replies: the `response_format` for a JSON schema, and parsing + validation of the reply.

The validator covers the JSON-schema subset that structured outputs use (type, properties, required,
additionalProperties, items, enum, minItems/maxItems, minimum/maximum) so no extra dependency is needed.
"""
from __future__ import annotations

import json
import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class InvalidReply(ValueError):
    """A reply that is not valid JSON or does not match the requested schema."""


def response_format(schema: dict, strict: bool = True) -> dict:
    """The OpenAI chat-completions `response_format` asking for JSON that matches `schema`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title", "reply")))[:64] or "reply"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def _type_ok(value: Any, type_name: str) -> bool:
    if type_name not in _TYPES:
        raise ValueError(f"unsupported JSON-schema type {type_name!r}; expected one of {sorted(_TYPES)}")
    if isinstance(value, bool) and type_name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[type_name])


def schema_errors(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Every way `value` fails `schema`, as readable strings naming the JSON path; [] if it conforms."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, t) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__} {json.dumps(value)[:60]}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for field in schema.get("required", []):
            if field not in value:
                errors.append(f"{path}: missing required field {field!r}")
        if schema.get("additionalProperties") is False:
            for field in value:
                if field not in props:
                    errors.append(f"{path}: unexpected field {field!r}")
        for field, sub in props.items():
            if field in value:
                errors.extend(schema_errors(value[field], sub, f"{path}.{field}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: {len(value)} items, expected at least {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: {len(value)} items, expected at most {schema['maxItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(schema_errors(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    return errors


def parse_reply(content: str, schema: dict) -> Any:
    """Parse `content` as JSON (a surrounding ``` fence is tolerated) and check it against `schema`."""
    match = _FENCE.match(content)
    text = match.group(1) if match else content
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidReply(f"reply is not valid JSON ({e.msg} at char {e.pos}): {content[:120]!r}") from e
    errors = schema_errors(value, schema)
    if errors:
        raise InvalidReply(f"reply does not match the schema: {'; '.join(errors[:5])}")
    return value
