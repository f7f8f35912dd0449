"""JSON Schemas of the websocket protocol (magtkd_stream/wire/schemas/*.json) and validation against them.

The schema files are the contract client authors read; validating against the
same files in the server and in tests keeps the code and the documentation from
drifting apart. jsonschema is imported on first use so the library stays light.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

# Schema file per message; server messages are keyed by their "type".
CLIENT_SCHEMAS: dict[str, str] = {
    "hello_publisher": "hello_publisher.json",
    "hello_subscriber": "hello_subscriber.json",
    "end": "end.json",
    "ping": "ping.json",
}
SERVER_SCHEMAS: dict[str, str] = {
    name: f"{name}.json"
    for name in (
        "session_start",
        "transcript",
        "emotion",
        "emotion_interim",
        "session_end",
        "welcome",
        "error",
        "gap",
        "dropped",
        "ended",
        "pong",
    )
}


class SchemaViolation(ValueError):
    """A message does not match its schema; the text names the field and what is accepted."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def load_schema(file_name: str) -> dict[str, Any]:
    """Parsed contents of one schema file."""
    return json.loads((SCHEMA_DIR / file_name).read_text(encoding="utf-8"))


def _local_refs(node: Any) -> Any:
    """Point "defs.json#/$defs/x" refs at a copy of the definitions inside the schema itself."""
    if isinstance(node, dict):
        return {
            k: (v.replace("defs.json#/", "#/") if k == "$ref" and isinstance(v, str) else _local_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


@lru_cache(maxsize=None)
def validator(file_name: str):
    """A compiled Draft 2020-12 validator for one schema file, with defs.json bundled in."""
    from jsonschema import Draft202012Validator

    schema = _local_refs(load_schema(file_name))
    definitions = _local_refs(load_schema("defs.json"))["$defs"]
    return Draft202012Validator({**schema, "$defs": {**definitions, **schema.get("$defs", {})}})


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def short_json(value: Any, limit: int = 80) -> str:
    """A value as JSON, shortened: error texts go back to clients that may have sent megabytes."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_name(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else ""


def _describe(error: Any) -> tuple[str, str]:
    """(field, human text) for one jsonschema error."""
    field = _field_name(error.absolute_path)
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        name = f"{field}.{missing}" if field else missing
        return name, f"missing field '{name}'"
    if kind in ("additionalProperties", "unevaluatedProperties"):
        where = f" in '{field}'" if field else ""
        if kind == "unevaluatedProperties":  # properties come from a $ref: take the names from the message
            extra = sorted(re.findall(r"'([^']*)'", error.message.split("(", 1)[-1]))
            return field, f"unknown field(s) {extra}{where}"
        allowed = sorted(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        accepted = f"; accepted fields: {allowed}" if allowed else ""
        return field, f"unknown field(s) {extra}{where}{accepted}"
    if kind == "const":
        return field, f"field '{field}' must be {json.dumps(error.validator_value)}, got {short_json(error.instance)}"
    if kind == "enum":
        return field, f"field '{field}' must be one of {error.validator_value}, got {short_json(error.instance)}"
    if kind == "type":
        got = _JSON_TYPES.get(type(error.instance), type(error.instance).__name__)
        value = "" if error.instance is None else f" {short_json(error.instance)}"
        return field, f"field '{field}' must be of type {error.validator_value}, got {got}{value}"
    if kind == "pattern":
        return field, f"field '{field}' must match {error.validator_value}, got {short_json(error.instance)}"
    if kind in ("maxLength", "minLength"):
        size = len(error.instance) if isinstance(error.instance, str) else 0
        bound = "at most" if kind == "maxLength" else "at least"
        return field, f"field '{field}' is {size} characters long; {bound} {error.validator_value} accepted"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return field, f"field '{field}' must be {op} {error.validator_value}, got {short_json(error.instance)}"
    if kind in ("maxProperties", "minProperties", "maxItems", "minItems"):
        bound = "at most" if kind.startswith("max") else "at least"
        what = "entries" if "Properties" in kind else "items"
        size = len(error.instance) if isinstance(error.instance, (dict, list)) else 0
        return field, f"field '{field}' has {size} {what}; {bound} {error.validator_value} accepted"
    if kind == "not" and isinstance(error.instance, dict) and {"resume", "last_seq"} <= set(error.instance):
        return "resume", "give either 'resume' or 'last_seq', not both"
    # Never quote the instance first: it may be megabytes, and the rule must survive any shortening.
    return field, (
        f"field '{field or '<message>'}' breaks the schema rule {kind!r} ({short_json(error.validator_value)}), "
        f"got {short_json(error.instance)}"
    )


def check(message: Mapping[str, Any], file_name: str) -> None:
    """Validate a message against one schema file; raise SchemaViolation naming the field."""
    from jsonschema.exceptions import best_match

    errors = list(validator(file_name).iter_errors(message))
    if not errors:
        return
    error = best_match(errors)
    # A oneOf/anyOf failure is clearer through its most specific sub-error.
    while error.context:
        error = best_match(error.context)
    field, text = _describe(error)
    raise SchemaViolation(text, field)


def check_server_message(message: Mapping[str, Any]) -> None:
    """Validate any server -> client message (event or control) against the schema of its type."""
    kind = message.get("type") if isinstance(message, Mapping) else None
    if kind not in SERVER_SCHEMAS:
        raise SchemaViolation(f"field 'type' must be one of {sorted(SERVER_SCHEMAS)}, got {kind!r}", "type")
    check(message, SERVER_SCHEMAS[kind])
