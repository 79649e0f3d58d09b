"""OpenAI API requests: their fields read and checked, and the errors OpenAI clients expect.

Shared by the in-process server (`serving.openai_api`) and the TF Serving gateway
(`serving.gateway`); nothing here imports TensorFlow.
"""

from __future__ import annotations

import math

from tfllm.untrusted import excerpt

# Largest `n` (choices per request) and `stop` list accepted: OpenAI's own limits (stop) and
# a bound on the work one request may ask for (n).
MAX_CHOICES = 8
MAX_STOPS = 4
# Parameters OpenAI defines that change the answer in ways this server does not do: a request
# giving one of them a non-default value is refused rather than answered differently.
_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
                "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
                "audio": (None,), "prediction": (None,), "suffix": (None, ""),
                "best_of": (None, 1), "modalities": (None, ["text"])}
_ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """A request answered with an OpenAI error object: HTTP `status`, and `type`, `param`,
    `code` as OpenAI's API sets them."""

    def __init__(self, message, param=None, status=400, type_="invalid_request_error",
                 code=None):
        super().__init__(message)
        self.status, self.param, self.type, self.code = status, param, type_, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}


def check_model(body, name, served_by):
    """ApiError unless `body` is a JSON object whose `model` is `name`: OpenAI's 400 for a
    missing model (not a 404 naming `None`), its 404 `model_not_found` for another one.
    `served_by` names the answering process in the message ("server", "gateway")."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise ApiError(f"you must provide a model parameter (this {served_by} serves "
                       f"`{name}`)", "model")
    if model != name:
        raise ApiError(f"The model `{str(model)[:100]}` does not exist; this {served_by} "
                       f"serves `{name}`", "model", 404, code="model_not_found")


def usage(prompt, completion):
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def read_number(body, key, low, high, default, integer=False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or \
            (not integer and not math.isfinite(value)) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ApiError(f"{key} must be {what} in [{low}, {high}], got {str(value)[:40]}", key)
    return value


def read_sampling(body, default_max=None) -> dict:
    """The sampling fields shared by chat and text completions, checked."""
    for key, allowed in _UNSUPPORTED.items():
        if body.get(key) not in allowed:
            raise ApiError(f"{key} is not supported by this server", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("stream_options must be an object", "stream_options")
    max_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_new = read_number(body, max_param, 1, 1 << 30, default_max, integer=True)
    temperature = read_number(body, "temperature", 0, 2, 1.0)
    top_p = read_number(body, "top_p", 0, 1, 1.0)
    if top_p == 0:
        raise ApiError("top_p must be > 0", "top_p")
    n = read_number(body, "n", 1, MAX_CHOICES, 1, integer=True)
    seed = read_number(body, "seed", -(1 << 63), (1 << 63) - 1, None, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or \
            not all(isinstance(s, str) and s for s in stop):
        raise ApiError(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of "
                       "them", "stop")
    # Choice i samples with seed + i (reproducible, and n choices differ).
    seeds = [None if seed is None else (seed + i) % (1 << 31) for i in range(n)]
    return {"stream": stream, "include_usage": bool(options.get("include_usage")),
            "max_new": max_new, "max_param": max_param, "temperature": float(temperature),
            "top_p": None if top_p == 1 else float(top_p), "seeds": seeds, "stop": stop}


def read_text(content, where):
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                raise ApiError(f"{where}: only text content parts are accepted "
                               "({\"type\": \"text\", \"text\": ...})", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(f"{where}: content must be a string or a list of text parts", "messages")


def read_conversation(messages):
    """(turns after the system turn, system text or None) of OpenAI `messages`: each turn
    `{"role", "content"}` (`developer` read as `system`), an assistant turn's `tool_calls`
    kept."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(f"{where} must be an object", "messages")
        role = m.get("role")
        if role not in _ROLES:
            raise ApiError(f"{where}: role must be one of {', '.join(_ROLES)}, got "
                           f"{str(role)[:40]!r}", "messages")
        turn = {"role": "system" if role == "developer" else role}
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            turn["tool_calls"] = m["tool_calls"]
            turn["content"] = "" if content is None else read_text(content, where)
        else:
            turn["content"] = read_text(content, where)
        if turn["role"] == "system" and i > 0:
            raise ApiError(f"{where}: a system message may only come first", "messages")
        turns.append(turn)
    if turns[-1]["role"] not in ("user", "tool"):
        raise ApiError("the last message must be a user message or tool results",
                       "messages")
    system = turns.pop(0)["content"] if turns[0]["role"] == "system" else None
    if not turns:
        raise ApiError("messages need a user message after the system message", "messages")
    return turns, system


def read_response_format(fmt):
    """The JSON schema a response_format asks for, or None."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError("response_format json_schema needs {\"name\": ..., \"schema\": "
                           "{...}}", "response_format")
        return spec["schema"]
    raise ApiError("response_format type must be text, json_object or json_schema",
                   "response_format")


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def read_prompts(body, choices_each, vocab_size=None) -> tuple:
    """(prompts, echo) of a text completion request; `choices_each`: its `n`.

    A prompt is a string, or (as in OpenAI's API) a list of token ids: `prompt` may be a
    string, a list of strings, a list of ids or a list of such lists. Token ids are taken
    only where `vocab_size` is given (the model is at hand to check them against)."""
    value = body.get("prompt")
    if _is_ids(value) or (isinstance(value, list) and value and all(map(_is_ids, value))):
        prompts = [value] if _is_ids(value) else value
        if vocab_size is None:
            raise ApiError("token-id prompts are not taken here: the SavedModel's signatures "
                           "take text; send the prompt as a string", "prompt")
        for ids in prompts:
            bad = next((i for i in ids if not 0 <= i < vocab_size), None)
            if bad is not None:
                raise ApiError(f"prompt token id {excerpt(bad)} is outside the vocabulary "
                               f"(0 to {vocab_size - 1})", "prompt")
    else:
        prompts = read_texts(value, "prompt", "a list of token ids or a list of such lists")
    if len(prompts) * choices_each > MAX_CHOICES:
        raise ApiError(f"at most {MAX_CHOICES} completions per request (prompts x n)", "n")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError("echo must be true or false", "echo")
    return prompts, echo


def read_texts(value, param, other_forms=None) -> list:
    """A string or a non-empty list of strings (`prompt`, `input`) as a list; the error
    names `other_forms` too where the field has more."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        forms = f", a non-empty list of strings, {other_forms}" if other_forms else \
            " or a non-empty list of strings"
        raise ApiError(f"{param} must be a string{forms}", param)
    return texts

