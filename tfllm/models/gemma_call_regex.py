"""FunctionGemma's call syntax as a regular expression of the tools' JSON schemas, so a
Gemma reply can be constrained to a valid call as the JSON formats are (tool_calls.py).

FunctionGemma writes `<start_function_call>call:NAME{key:VALUE,...}<end_function_call>`:
keys bare, strings between `<escape>` markers, numbers, true, false and null as in JSON,
`{...}` objects and `[...]` arrays of such values. outlines-core builds regexes of JSON
text only, so this module writes the regex of that syntax itself, for the schema keywords
below; any other keyword is refused by name (the JSON formats take more).

Strings hold no `<` here (the regex engine has no look-ahead to exclude `<escape>` alone).

Example:
    >>> regex = gemma_call_regex([{"type": "function", "function": {"name": "add",
    ...     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
    ...                    "required": ["a"]}}}])
    >>> bool(re.fullmatch(regex, "<start_function_call>call:add{a:2}<end_function_call>"))
    True
"""

from __future__ import annotations

import json
import re

from tfllm.models.token_automaton import ConstraintError

ESCAPE = "<escape>"
INTEGER = r"-?(0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(\.[0-9]+)?([eE][-+]?[0-9]+)?"
# Keywords the regex holds; the annotations change nothing a regex must hold.
SUPPORTED = {"type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf",
             "minLength", "maxLength", "minItems", "maxItems", "additionalProperties",
             "description", "title", "default", "examples", "$schema", "$comment"}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Optional properties each double the object's regex (present or not): a bound on it.
MAX_OPTIONAL = 8


def gemma_call_regex(tools: list[dict]) -> str:
    """The regex of one FunctionGemma call to one of `tools` (checked function specs) with
    arguments valid under its parameters. ConstraintError names what it cannot hold."""
    calls = [re.escape(t["function"]["name"]) +
             value_regex(t["function"]["parameters"],
                         f"tool {t['function']['name']!r} parameters") for t in tools]
    return "<start_function_call>call:(" + "|".join(calls) + ")<end_function_call>"


def value_regex(schema: dict, where: str) -> str:
    """The regex of a value under `schema` in FunctionGemma's syntax."""
    if not isinstance(schema, dict):
        raise ConstraintError(f"{where}: a schema must be an object")
    for key in schema:
        if key not in SUPPORTED:
            raise ConstraintError(f"{where}: the JSON schema keyword {key!r} is not supported "
                                  "in FunctionGemma's call format")
    if "const" in schema:
        return re.escape(literal(schema["const"], where))
    if "enum" in schema:
        return "(" + "|".join(re.escape(literal(v, where)) for v in schema["enum"]) + ")"
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return "(" + "|".join(value_regex(o, f"{where}/{i}")
                              for i, o in enumerate(options)) + ")"
    kind = schema.get("type")
    if isinstance(kind, list):
        return "(" + "|".join(value_regex({**schema, "type": k}, where) for k in kind) + ")"
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        count = "*" if not low and high is None else \
            "{%d,%s}" % (low, "" if high is None else high)
        return re.escape(ESCAPE) + "[^<]" + count + re.escape(ESCAPE)
    if kind == "integer":
        return INTEGER
    if kind == "number":
        return NUMBER
    if kind == "boolean":
        return "(true|false)"
    if kind == "null":
        return "null"
    if kind == "array":
        return _array(schema, where)
    if kind == "object" or "properties" in schema:
        return _object(schema, where)
    raise ConstraintError(f"{where}: a schema without a type, enum or const cannot be "
                          "constrained in FunctionGemma's call format")


def literal(value, where: str) -> str:
    """`value` written as FunctionGemma writes it."""
    if isinstance(value, str):
        if "<" in value:
            raise ConstraintError(f"{where}: the value {value!r} holds '<', which "
                                  "FunctionGemma's constrained strings cannot")
        return ESCAPE + value + ESCAPE
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(k, where)}:{literal(v, where)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(literal(v, where) for v in value) + "]"
    return json.dumps(value)


def _key(name: str, where: str) -> str:
    if not _KEY.fullmatch(name):
        raise ConstraintError(f"{where}: the property name {name!r} cannot be written bare "
                              "in FunctionGemma's call format")
    return name


def _array(schema: dict, where: str) -> str:
    item = value_regex(schema.get("items", {"type": ["string", "number", "boolean", "null"]}),
                       f"{where}/items")
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    if high == 0:
        return r"\[\]"
    more = "{%d,%s}" % (max(low - 1, 0), "" if high is None else high - 1)
    items = f"({item})(,({item})){more}"
    return r"\[" + (items if low else f"({items})?") + r"\]"


def _object(schema: dict, where: str) -> str:
    """`{key:value,...}`: the declared properties in their order, each required one present,
    each optional one present or not, commas between those present."""
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    optional = [k for k in props if k not in required]
    if len(optional) > MAX_OPTIONAL:
        raise ConstraintError(f"{where}: {len(optional)} optional properties (at most "
                              f"{MAX_OPTIONAL} in FunctionGemma's call format; make some "
                              "required)")
    items = [(_key(k, where) + ":" + value_regex(v, f"{where}/{k}"), k in required)
             for k, v in props.items()]

    def rest(i: int, first: bool) -> str:
        # Properties i.. after `first` (nothing written yet) or after a written one.
        if i == len(items):
            return ""
        text, needed = items[i]
        this = ("" if first else ",") + text + rest(i + 1, False)
        if needed:
            return this
        skip = rest(i + 1, first)
        return f"({this}|{skip})" if skip else f"({this})?"

    return r"\{" + rest(0, True) + r"\}"
