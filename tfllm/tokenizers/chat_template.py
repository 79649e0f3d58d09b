"""Chat templates: a conversation (`[{"role", "content"}]`) to the text a chat model reads,
rendered with Jinja exactly as Hugging Face `transformers` renders `chat_template`
(a sandboxed environment with `trim_blocks`, `lstrip_blocks`, loop controls, `tojson`,
`raise_exception` and `strftime_now`), so an imported model sees the prompts it was
tuned on.

Runs imported from a checkpoint keep their template (`tokenizer.chat_template` in the run
config); tfllm's own runs use `DEFAULT_TEMPLATE` (ChatML, as SmolLM2 and Qwen use).
"""

from __future__ import annotations

import json

from tfllm.errors import TfllmError

ROLES = ("system", "user", "assistant")

# ChatML: <|im_start|>ROLE\nCONTENT<|im_end|>\n per turn; the generation prompt opens an
# assistant turn, which the model closes with <|im_end|> (its end-of-turn token).
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DEFAULT_END_OF_TURN = "<|im_end|>"


class ChatTemplateError(TfllmError, ValueError):
    """A conversation or template that cannot be rendered.

    `kind`: "template" (the template refused or does not compile), "limit" (it ran past a
    time, size or memory limit) or "failure" (its code failed).
    """

    def __init__(self, message: str, kind: str = "template"):
        super().__init__(message)
        self.kind = kind


# A template's rendering may take this long (a request of several renders too) before its
# worker process is killed; its text and memory are capped in tfllm/template_worker.py.
TIME_LIMIT_S = 5.0
# The longest template source accepted (Hugging Face's longest, with tools, are ~10 kB).
MAX_TEMPLATE_CHARS = 1 << 20


class _Sandbox:
    """One worker process (tfllm/template_worker.py) that renders templates for this
    process, started on first use and again after it is killed."""

    def __init__(self):
        import threading

        self._proc, self._pid = None, None
        self._lock = threading.Lock()

    def _start(self):
        import atexit
        import os
        import subprocess
        import sys

        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_worker.py")
        self._proc = subprocess.Popen([sys.executable, "-I", worker], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._pid = os.getpid()
        atexit.register(self._stop)

    def _stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def call(self, request: dict, timeout: float = TIME_LIMIT_S):
        """The worker's answer to `request`; ChatTemplateError for a template that fails,
        or runs past `timeout` seconds (the worker is then killed)."""
        import os
        import select
        import time

        line = (json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or \
                    self._pid != os.getpid():
                self._start()
            deadline = time.monotonic() + timeout
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
                fd, chunks = self._proc.stdout.fileno(), []
                while not chunks or not chunks[-1].endswith(b"\n"):
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([fd], [], [], left)[0]:
                        self._stop()
                        raise ChatTemplateError(
                            f"the chat template took longer than {timeout:g} s to render "
                            "(a loop without end?); it was stopped", "limit")
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise BrokenPipeError
                    chunks.append(chunk)
            except (BrokenPipeError, OSError):
                self._stop()
                raise ChatTemplateError("the chat template's worker process died while "
                                        "rendering (out of memory?)", "limit") from None
        reply = json.loads(b"".join(chunks))
        if "error" in reply:
            raise ChatTemplateError(reply["error"], reply.get("kind", "template"))
        return reply["ok"]


_SANDBOX = _Sandbox()


class Conversation(list):
    """A conversation's turns and the tools offered in it: a `ChatTemplate` renders these
    tools in place of its own (a fine-tuning row's tools, for a template that renders tools
    itself, as `ChatSession(tools=)` has it render them).

    Example:
        >>> turns = Conversation([{"role": "user", "content": "Hi"}], tools=[])
    """

    def __init__(self, turns=(), tools=None):
        super().__init__(turns)
        self.tools = tools


def check_messages(messages) -> list[dict]:
    """`messages` as a list of {"role", "content"} dicts; a ChatTemplateError naming the
    turn when a role is unknown or content is not text."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("a conversation is a non-empty list of "
                                '{"role": ..., "content": ...} turns')
    out = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise ChatTemplateError(f"turn {n + 1}: unknown role {role!r}; use one of "
                                    f"{', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ChatTemplateError(f"turn {n + 1}: content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatTemplate:
    """A Jinja chat template and the special tokens it may refer to.

    Args:
        source: the Jinja text (`DEFAULT_TEMPLATE` when None).
        bos_token, eos_token: the strings the template's `bos_token` / `eos_token` name.
        tools: function specs every rendering passes as `tools`, as Hugging Face's
            `apply_chat_template(..., tools=)` does (`tfllm.models.tool_calls`).

    Example:
        >>> ChatTemplate().render([{"role": "user", "content": "Hi"}],
        ...                       add_generation_prompt=True)
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """

    def __init__(self, source: str | None = None, bos_token: str = "", eos_token: str = "",
                 tools: list | None = None):
        self.source = DEFAULT_TEMPLATE if source is None else source
        if not isinstance(self.source, str) or len(self.source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"a chat template is text of at most {MAX_TEMPLATE_CHARS:,} "
                                    "characters")
        self.bos_token, self.eos_token = bos_token or "", eos_token or ""
        self.tools = tools
        _SANDBOX.call({"op": "compile", "source": self.source})

    def _ask(self, op: str, messages, check: bool = True, **extra):
        tools = getattr(messages, "tools", None)
        return _SANDBOX.call({"op": op, "source": self.source, "bos": self.bos_token,
                              "eos": self.eos_token,
                              "tools": self.tools if tools is None else tools,
                              "messages": check_messages(messages) if check else messages,
                              **extra})

    def render(self, messages, add_generation_prompt: bool = False, check: bool = True) -> str:
        """The text of a conversation; with `add_generation_prompt`, followed by the
        opening of the assistant's next turn. Rendered in a worker process within
        `TIME_LIMIT_S` seconds, 4 MiB of text and 512 MiB of memory (the template is code
        from a checkpoint).

        `check=False` passes the turns as given (JSON values), e.g. content as a list of
        text parts, as the LiteRT-LM runtime passes it."""
        return self._ask("render", messages, check,
                         add_generation_prompt=bool(add_generation_prompt))

    def segments(self, messages) -> list[tuple[str, bool]]:
        """The rendered conversation cut into `(text, is_assistant)` pieces whose joined
        text is `render(messages)`: each assistant turn's reply (its content and the
        template's end of turn) is one piece, the rest (prompts, role headers) others.

        The cut comes from rendering growing prefixes: what `render(messages[:i + 1])`
        adds to `render(messages[:i], add_generation_prompt=True)` is turn i's reply.
        """
        return [(text, bool(reply)) for text, reply in self._ask("segments", messages)]


def read_template_arg(value: str) -> str:
    """The Jinja text a `--template` names: "chatml" (`DEFAULT_TEMPLATE`) or a file."""
    import os

    if value == "chatml":
        return DEFAULT_TEMPLATE
    if not os.path.isfile(value):
        raise ChatTemplateError(f"--template {value!r} is neither 'chatml' nor a file holding "
                                "a Jinja chat template")
    with open(value, encoding="utf-8") as f:
        return f.read()


# What a template's `bos_token` renders as: read back as the BOS id by every chat encoder
# (tfllm.tokenizers.chat_encoding). Hugging Face reads the BOS text the template writes
# (`<bos>`, `<s>`) as the BOS token; SentencePiece reads no control piece in text, so the
# text would become characters, and the decoded text of a control piece is empty, so
# before this mark Gemma's and Llama 2's templates wrote no BOS at all (Gemma answers
# poorly without one). Unicode private use: no tokenizer or template gives it a meaning;
# a message holding it is encoded as plain characters. Chat runs written before keep the
# "" they stored (their fine-tuning saw no BOS).
BOS_MARK = "\ue002"


def chat_config_of(run_config: dict, tokenizer, template: str | None = None,
                   allow_default: bool = False) -> dict:
    """The `"chat"` entry of a run: its template, the special-token strings the template
    may name, and the end-of-turn strings that stop a reply.

    The template is `template` when given, else the run's (a chat run's own, or the
    `chat_template` an imported checkpoint brought), else with `allow_default`
    `DEFAULT_TEMPLATE`; else a ChatTemplateError naming `--template`.

    Args:
        run_config: the run's parsed config.json.
        tokenizer: the run's tokenizer (for the BOS/EOS strings).
        template: Jinja text overriding the run's.
        allow_default: fall back to ChatML (tfllm's own runs, when fine-tuned for chat).
    """
    if template is None and isinstance(run_config.get("chat"), dict):
        return dict(run_config["chat"])
    spec = run_config.get("tokenizer")
    source = template if template is not None else (
        spec.get("chat_template") if isinstance(spec, dict) else None)
    if source is None:
        if not allow_default:
            raise ChatTemplateError("this run has no chat template; pass --template chatml "
                                    "(tfllm's default) or --template FILE (a Jinja chat "
                                    "template)")
        source = DEFAULT_TEMPLATE

    def text(i):
        return tokenizer.decode([i]) if i is not None else ""

    eos_ids = list(getattr(tokenizer, "eos_ids", [tokenizer.eos_id]))
    end_of_turn = [DEFAULT_END_OF_TURN] if DEFAULT_END_OF_TURN in source else []
    end_of_turn += [t for t in (text(i) for i in eos_ids) if t and t not in end_of_turn]
    bos = getattr(tokenizer, "bos_id", None)
    return {"template": source, "bos_token": BOS_MARK if bos is not None else "",
            "eos_token": text(eos_ids[0]), "end_of_turn": end_of_turn}


def template_of(chat: dict, tools: list | None = None) -> ChatTemplate:
    """The `ChatTemplate` of a run's `"chat"` entry (see `chat_config_of`), rendering
    `tools` when given."""
    return ChatTemplate(chat["template"], chat.get("bos_token", ""), chat.get("eos_token", ""),
                        tools)


def usable_chat_config(run_config: dict, tokenizer) -> dict | None:
    """The run's chat entry when it has a template that renders a one-turn conversation
    around the message (what `tfllm chat` and the exporters' chat paths need); None for
    a run without one, or whose template does not (a placeholder template, or one that
    refuses such a conversation). A template that fails otherwise (runs past its limits,
    its code breaks) raises ChatTemplateError: it is not silently left out."""
    probe = "\ue000tfllm-probe\ue000"
    try:
        chat = chat_config_of(run_config, tokenizer)
        text = template_of(chat).render([{"role": "user", "content": probe}],
                                        add_generation_prompt=True)
    except ChatTemplateError as e:
        if e.kind != "template":
            raise
        return None
    return chat if probe in text else None
