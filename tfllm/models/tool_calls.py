"""Tool calling: an app's functions (OpenAI-style specs) offered to a chat model, the
model's call constrained to a valid one, and parsed back into OpenAI `tool_calls`.

A family's chat template teaches its model one way to write a call:

    hermes   <tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>
             (Qwen2.5, Qwen3, SmolLM2, Hermes: templates that write <tool_call>)
    llama3   {"name": NAME, "parameters": {...}}   (Llama 3.1-3.3: templates with ipython)
    gemma    <start_function_call>call:NAME{key:<escape>text<escape>,n:1}<end_function_call>
             (FunctionGemma: strings between <escape> tokens, keys bare)

The call is decoded under a constraint: a regex of the format around the JSON of a schema
that is `anyOf` the tools, each `{"name": const, "arguments": its parameters}`; so the
name is one of the tools' and the arguments are valid under that tool's schema
(FunctionGemma's non-JSON syntax: gemma_call_regex.py). A template
that does not render `tools` itself (SmolLM2-135M's) gets them as a system turn in the
hermes wording Qwen2.5's template uses.

Example:
    >>> tools = check_tools([{"type": "function", "function": {"name": "get_weather",
    ...     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
    ...                    "required": ["city"]}}}])
    >>> parse_tool_calls('<tool_call>\\n{"name": "get_weather", "arguments": '
    ...                  '{"city": "Paris"}}\\n</tool_call>', "hermes")[0]["function"]
    {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}
"""

from __future__ import annotations

import json
import re

from tfllm.models.token_automaton import ConstraintError, check_schema
from tfllm.untrusted import parse_json

FORMATS = ("hermes", "llama3", "gemma")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_GEMMA_CALL = re.compile(r"<start_function_call>call:([A-Za-z_][\w.-]*)(\{.*?\})"
                         r"<end_function_call>", re.S)
_ESCAPE = "<escape>"


class ToolError(ConstraintError):
    """Tools that are not a list of function specs, or a call that cannot be read."""


def check_tools(tools) -> list[dict]:
    """`tools` as OpenAI function specs `{"type": "function", "function": {"name",
    "description", "parameters"}}` (a bare `{"name", ...}` is wrapped); ToolError names
    the tool and what is wrong."""
    if not isinstance(tools, list) or not tools:
        raise ToolError('tools must be a non-empty list of function specs ({"type": '
                        '"function", "function": {"name": ..., "parameters": {...}}})')
    out, names = [], set()
    for n, tool in enumerate(tools):
        spec = tool.get("function") if isinstance(tool, dict) and "function" in tool \
            else tool
        if not isinstance(spec, dict) or (isinstance(tool, dict) and
                                          tool.get("type", "function") != "function"):
            raise ToolError(f"tool {n + 1} is not a function spec")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ToolError(f"tool {n + 1}: name {name!r} is not a function name (letters, "
                            "digits, _ . -, at most 64)")
        if name in names:
            raise ToolError(f"tool {name!r} is given twice")
        names.add(name)
        params = spec.get("parameters", {"type": "object", "properties": {}})
        try:
            check_schema(params)
        except ConstraintError as e:
            raise ToolError(f"tool {name!r}: its parameters: {e}") from None
        fn = {"name": name, "parameters": params}
        if isinstance(spec.get("description"), str):
            fn["description"] = spec["description"]
        out.append({"type": "function", "function": fn})
    return out


def read_tools_file(path: str, what: str | None = None) -> list[dict]:
    """The function specs in the file `path`, checked (`check_tools`); ToolError starts
    with `what` (default "--tools PATH") when they cannot be read or used."""
    from tfllm.models.token_automaton import read_checked_json

    return read_checked_json(path, what or f"--tools {path}", check_tools, ToolError)


def call_format(template_source: str) -> str:
    """The tool-call format a chat template teaches (`FORMATS`): llama3 for Llama 3.x's
    ipython turns, else hermes (what Qwen's and SmolLM2's models write)."""
    if "<start_function_call>" in template_source:
        return "gemma"
    if "<tool_call>" not in template_source and "ipython" in template_source:
        return "llama3"
    return "hermes"


def renders_tools(template_source: str) -> bool:
    """Whether a template writes the `tools` it is given (else they go in a system turn)."""
    return re.search(r"\btools\b", template_source) is not None


def tools_system_prompt(tools: list[dict]) -> str:
    """The hermes tool instructions Qwen2.5's template writes, for templates that do not
    render tools themselves."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\nFor each function call, return a json object "
            "with function name and arguments within <tool_call></tool_call> XML tags:\n"
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
            "</tool_call>")


def call_text(name: str, arguments, fmt: str = "hermes") -> str:
    """One call as `fmt` writes it: the text a constrained reply holds and `parse_tool_calls`
    reads back (`arguments`: a dict, or its JSON text).

    Example:
        >>> call_text("add", {"a": 1}, "gemma")
        '<start_function_call>call:add{a:1}<end_function_call>'
    """
    if isinstance(arguments, str):
        try:
            arguments = parse_json(arguments)
        except json.JSONDecodeError as e:
            raise ToolError(f"the arguments of a call of {name!r} are not valid JSON: "
                            f"{e}") from None
    if fmt == "gemma":
        return f"<start_function_call>call:{name}{_gemma_text(arguments, name)}<end_function_call>"
    if fmt == "llama3":
        return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _gemma_text(value, name) -> str:
    """A JSON value in FunctionGemma's syntax (what `_gemma_value` reads)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_gemma_text(v, name)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_gemma_text(v, name) for v in value) + "]"
    if isinstance(value, str):
        if _ESCAPE in value:
            raise ToolError(f"a call of {name!r}: FunctionGemma's strings cannot hold "
                            f"{_ESCAPE!r}")
        return f"{_ESCAPE}{value}{_ESCAPE}"
    return json.dumps(value)


def plain_turns(messages, tools=None, fmt: str = "hermes", list_tools: bool = True) -> list:
    """OpenAI-style messages with tools as plain system/user/assistant turns, as
    `ChatSession(tools=)` reads and writes them: `tools` a system turn listing them in the
    hermes wording Qwen2.5's template uses (unless `list_tools` is False: a template that
    renders tools itself gets them as `tools`), an assistant turn's `tool_calls` its call
    text in `fmt` (`call_text`) after its content, and each run of `tool` results one user
    turn of `<tool_response>` blocks. Turns without tool fields pass as they are (for
    `check_messages` to judge); ToolError for a malformed call."""
    if not isinstance(messages, list):
        return messages
    out = []
    if tools is not None and list_tools:
        listed = tools_system_prompt(check_tools(tools))
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            first, messages = messages[0], messages[1:]
            listed = f"{first.get('content') or ''}\n\n{listed}"
        out.append({"role": "system", "content": listed})
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
        elif m.get("role") == "tool":
            block = f"<tool_response>\n{m.get('content', '')}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif m.get("role") == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise ToolError("an assistant turn's tool_calls must be a list")
            if fmt == "llama3" and len(calls) > 1:
                raise ToolError("Llama 3's format writes one call a turn; this turn has "
                                f"{len(calls)}")
            texts = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ToolError("a tool call must be {\"type\": \"function\", "
                                    "\"function\": {\"name\": ..., \"arguments\": ...}}")
                texts.append(call_text(fn["name"], fn.get("arguments", {}), fmt))
            content = m.get("content") or ""
            out.append({"role": "assistant",
                        "content": "\n".join(([content] if content else []) + texts)})
        else:
            out.append(m)
    return [{k: v for k, v in m.items() if k != "tool_results"} if isinstance(m, dict)
            else m for m in out]


def call_schema(tools: list[dict], fmt: str = "hermes") -> dict:
    """The JSON schema of one call: the name one of the tools', the arguments valid under
    that tool's parameters (`parameters` is the key in Llama 3's format)."""
    key = "parameters" if fmt == "llama3" else "arguments"
    options = [{"type": "object",
                "properties": {"name": {"const": t["function"]["name"]},
                               key: t["function"]["parameters"]},
                "required": ["name", key]} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_regex(tools: list[dict], fmt: str = "hermes") -> str:
    """The regular expression of one call in `fmt` (what the reply is constrained to)."""
    from tfllm.models.token_automaton import regex_of_schema

    if fmt == "gemma":
        from tfllm.models.gemma_call_regex import gemma_call_regex

        try:
            return gemma_call_regex(tools)
        except ConstraintError as e:
            raise ToolError(str(e)) from None
    try:
        body = regex_of_schema(call_schema(tools, fmt))
    except ConstraintError as e:
        raise ToolError(f"the tools' parameters cannot be used: {e}") from None
    if fmt == "llama3":
        return body
    return "<tool_call>\n" + body + "\n</tool_call>"


TOOL_CHOICES = ("auto", "required", "none")


def choice_regex(tools: list[dict], fmt: str = "hermes", tool_choice: str = "auto") -> str:
    """What a reply is constrained to: one call (`required`), text that does not start as
    a call does (`none`; hermes' calls open with `<`, Llama 3's with `{`), or either
    (`auto`), OpenAI's tool_choice values."""
    if tool_choice not in TOOL_CHOICES:
        raise ToolError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)}, got "
                        f"{tool_choice!r}")
    opener = "{" if fmt == "llama3" else "<"
    text = f"[^{re.escape(opener)}](?s:.)*"
    if tool_choice == "none":
        return text
    call = call_regex(tools, fmt)
    if tool_choice == "required":
        return call
    return f"({call})|({text})"


def parse_tool_calls(text: str, fmt: str = "hermes") -> list[dict]:
    """OpenAI `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments":
    JSON text}}`) of a reply in `fmt`; [] when it holds none. ToolError for a call whose
    JSON does not parse."""
    if fmt == "gemma":
        return [_openai_call(n, name, _gemma_value(body, 0, n)[0])
                for n, (name, body) in enumerate(_GEMMA_CALL.findall(text))]
    if fmt == "llama3":
        body = text.strip().removeprefix("<|python_tag|>").strip()
        found = [body] if body.startswith("{") else []
    else:
        found = _HERMES_CALL.findall(text)
    key = "parameters" if fmt == "llama3" else "arguments"
    calls = []
    for n, body in enumerate(found):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            raise ToolError(f"tool call {n + 1} is not valid JSON: {e}") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ToolError(f"tool call {n + 1} names no function")
        calls.append(_openai_call(n, call["name"], call.get(key, {})))
    return calls


def _openai_call(n, name, arguments) -> dict:
    return {"id": f"call_{n}", "type": "function",
            "function": {"name": name,
                         "arguments": json.dumps(arguments, ensure_ascii=False)}}


_GEMMA_ATOM = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null")


def _gemma_value(text, at, n):
    """(value, next index) of a FunctionGemma value at `text[at:]`: `{key:value,...}`,
    `[value,...]`, `<escape>text<escape>`, a number, true, false or null."""
    def fail():
        raise ToolError(f"tool call {n + 1}: cannot read FunctionGemma's arguments at "
                        f"{text[at:at + 30]!r}")
    if text.startswith(_ESCAPE, at):
        end = text.find(_ESCAPE, at + len(_ESCAPE))
        if end < 0:
            fail()
        return text[at + len(_ESCAPE):end], end + len(_ESCAPE)
    if text.startswith(("{", "["), at):
        is_obj, close = text[at] == "{", "}" if text[at] == "{" else "]"
        out, at = ({} if is_obj else []), at + 1
        while not text.startswith(close, at):
            if is_obj:
                colon = text.find(":", at)
                key = text[at:colon].strip()
                if colon < 0 or not key:
                    fail()
                out[key], at = _gemma_value(text, colon + 1, n)
            else:
                value, at = _gemma_value(text, at, n)
                out.append(value)
            if text.startswith(",", at):
                at += 1
            elif not text.startswith(close, at):
                fail()
        return out, at + 1
    atom = _GEMMA_ATOM.match(text, at)
    if not atom:
        fail()
    return json.loads(atom.group(0)), atom.end()
