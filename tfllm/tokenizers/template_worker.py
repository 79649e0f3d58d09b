"""The child process that renders chat templates, with limits no template can lift.

A checkpoint's chat template is code from a download. Jinja's sandbox stops it from reaching
files or attributes, but not from looping for hours or building a string of gigabytes
(`'x' * 10**9`), and a Python thread cannot be stopped from outside. So templates render
here, in a separate process started by `tfllm.tokenizers.chat_template` with its address space
capped (`MEMORY_BYTES`): the parent kills it when a request runs past its time limit, and a
huge allocation fails here as a MemoryError instead of exhausting the machine.

This file imports only the standard library and jinja2 (so the child starts quickly) and
runs as a script: one JSON request per line on stdin, one JSON answer per line on stdout.

    {"op": "compile", "source": ...}
    {"op": "render", "source": ..., "bos": ..., "eos": ..., "messages": [...],
     "add_generation_prompt": bool}
    {"op": "segments", "source": ..., "bos": ..., "eos": ..., "messages": [...]}
        -> {"ok": RESULT} or {"error": "one line", "kind": "template"|"limit"|"failure"}
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

# The child's address space, Python and jinja2 included (~40 MB of it): 512 MiB.
MEMORY_BYTES = 1 << 29
# The longest text one render may produce, in characters.
MAX_OUTPUT_CHARS = 1 << 22


class _Refused(Exception):
    """The template cannot render this conversation: a one-line reason for the user."""


class _Limit(Exception):
    """A limit was reached."""


def environment():
    """Jinja's immutable sandbox with what Hugging Face `transformers` gives chat templates
    (`trim_blocks`, `lstrip_blocks`, loop controls, `tojson`, `raise_exception`,
    `strftime_now`)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_compiled = {}


def _template(source):
    import jinja2

    if source not in _compiled:
        if len(_compiled) > 8:
            _compiled.clear()
        try:
            _compiled[source] = environment().from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise _Refused(f"the chat template does not compile: {_line(e)}") from None
    return _compiled[source]


def _line(error, limit=300):
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def render(request, messages, add_generation_prompt):
    import jinja2

    template = _template(request["source"])
    try:
        out, size = [], 0
        # `tools` only when given: a template that tests `tools is defined` renders as
        # it always did without them.
        extra = {"tools": request["tools"]} if request.get("tools") is not None else {}
        for piece in template.generate(messages=messages,
                                       add_generation_prompt=add_generation_prompt,
                                       bos_token=request.get("bos", ""),
                                       eos_token=request.get("eos", ""), **extra):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _Limit(f"the chat template's text grew past {MAX_OUTPUT_CHARS:,} "
                             "characters")
            out.append(piece)
        return "".join(out)
    except jinja2.exceptions.TemplateError as e:
        raise _Refused(f"the chat template refused the conversation: {_line(e)}") from None


def segments(request, messages):
    """`(text, is_assistant)` pieces whose joined text is the whole rendering: each
    assistant turn's reply is one piece (see `tfllm.tokenizers.chat_template.ChatTemplate.segments`)."""
    out, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prompt = render(request, messages[:i], True)
        except _Refused:
            if i:
                raise
            prompt = ""  # a template that cannot render an empty conversation
        full = render(request, messages[:i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise _Refused(f"turn {i + 1}: this template does not render a conversation as "
                           "the text of its prefix plus the new turn, so replies cannot be "
                           "located")
        if prompt != done:
            out.append((prompt[len(done):], False))
        out.append((full[len(prompt):], True))
        done = full
    rest = render(request, messages, False)[len(done):]
    if rest:
        out.append((rest, False))
    return out


def answer(request):
    op = request.get("op")
    if op == "compile":
        _template(request["source"])
        return True
    messages = request["messages"]
    if op == "render":
        return render(request, messages, bool(request.get("add_generation_prompt")))
    if op == "segments":
        return segments(request, messages)
    raise ValueError(f"unknown op {op!r}")


def main():
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # a system without address-space limits: the parent's time limit remains
    sys.setrecursionlimit(2000)
    for line in sys.stdin:
        try:
            reply = {"ok": answer(json.loads(line))}
        except _Refused as e:
            reply = {"error": str(e), "kind": "template"}
        except _Limit as e:
            reply = {"error": str(e), "kind": "limit"}
        except MemoryError:
            _compiled.clear()
            reply = {"error": f"the chat template needs more than {MEMORY_BYTES >> 20} MiB of "
                              "memory", "kind": "limit"}
        except RecursionError:
            reply = {"error": "the chat template recurses too deeply", "kind": "limit"}
        except Exception as e:  # the template's own code failed (a bad operation, a type)
            reply = {"error": f"the chat template failed: {type(e).__name__}: {_line(e)}",
                     "kind": "failure"}
        try:
            text = json.dumps(reply, ensure_ascii=False)
        except MemoryError:
            text = json.dumps({"error": "the chat template's answer is too large",
                               "kind": "limit"})
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
