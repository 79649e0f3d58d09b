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
from datetime import datetime

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
    """A conversation or template that cannot be rendered."""


def _environment():
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

    Example:
        >>> ChatTemplate().render([{"role": "user", "content": "Hi"}],
        ...                       add_generation_prompt=True)
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """

    def __init__(self, source: str | None = None, bos_token: str = "", eos_token: str = ""):
        import jinja2

        self.source = DEFAULT_TEMPLATE if source is None else source
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = _environment().from_string(self.source)
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"the chat template does not compile: {e}") from e

    def render(self, messages, add_generation_prompt: bool = False) -> str:
        """The text of a conversation; with `add_generation_prompt`, followed by the
        opening of the assistant's next turn."""
        import jinja2

        try:
            return self._template.render(
                messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"the chat template refused the conversation: {e}") from e

    def segments(self, messages) -> list[tuple[str, bool]]:
        """The rendered conversation cut into `(text, is_assistant)` pieces whose joined
        text is `render(messages)`: each assistant turn's reply (its content and the
        template's end of turn) is one piece, the rest (prompts, role headers) others.

        The cut comes from rendering growing prefixes: what `render(messages[:i + 1])`
        adds to `render(messages[:i], add_generation_prompt=True)` is turn i's reply.
        """
        messages = check_messages(messages)
        out, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            try:
                prompt = self.render(messages[:i], add_generation_prompt=True)
            except ChatTemplateError:
                if i:
                    raise
                prompt = ""  # a template that cannot render an empty conversation
            full = self.render(messages[:i + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ChatTemplateError(
                    f"turn {i + 1}: this template does not render a conversation as the "
                    "text of its prefix plus the new turn, so replies cannot be located")
            if prompt != done:
                out.append((prompt[len(done):], False))
            out.append((full[len(prompt):], True))
            done = full
        rest = self.render(messages)[len(done):]
        if rest:
            out.append((rest, False))
        return out


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
    return {"template": source, "bos_token": text(getattr(tokenizer, "bos_id", None)),
            "eos_token": text(eos_ids[0]), "end_of_turn": end_of_turn}


def template_of(chat: dict) -> ChatTemplate:
    """The `ChatTemplate` of a run's `"chat"` entry (see `chat_config_of`)."""
    return ChatTemplate(chat["template"], chat.get("bos_token", ""), chat.get("eos_token", ""))


def usable_chat_config(run_config: dict, tokenizer) -> dict | None:
    """The run's chat entry when it has a template that renders a one-turn conversation
    around the message (what `tfllm chat` and the exporters' chat paths need); None for
    a run without one, or whose template does not (a placeholder template)."""
    probe = "\ue000tfllm-probe\ue000"
    try:
        chat = chat_config_of(run_config, tokenizer)
        text = template_of(chat).render([{"role": "user", "content": probe}],
                                        add_generation_prompt=True)
    except ChatTemplateError:
        return None
    return chat if probe in text else None
