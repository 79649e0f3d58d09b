"""The SavedModel `chat` signatures of a causal LM run with a chat template (see
`tfllm.signatures.causal.signatures`).

    chat
        inputs  message (string [batch]), and generate's sampling inputs: max_new_tokens,
                temperature, top_k, top_p, seed (one value per row)
        outputs text (string [batch]): the reply, cut at the end of turn;
                num_generated (int32 [batch]); num_prompt_tokens (int32 [batch]: the
                rendered prompt's tokens); finished (bool [batch]: the reply ended at an
                end token or end of turn, not at max_new_tokens)
    chat_with_system
        the same with system (string [batch]) before message
    chat_<name>, chat_with_system_<name>   (one pair per --json-schema NAME=FILE)
        the same, every reply JSON valid under the schema (see generate_<name>)
    conversation, conversation_<name>   (where the template decomposes into turns; one
                per --json-schema NAME=FILE)
        inputs  roles, contents (string [batch, turns]: system (first only), user,
                assistant; a row's unused turns at its end have role ""), and the
                sampling inputs; outputs chat's. See `tfllm.signatures.conversation`.
    chat_<name>, chat_with_system_<name>   (one pair per --tools NAME=FILE)
        the same with the tools offered in the prompt and tool_choice (string [batch]:
        auto, required or none) among the inputs; outputs also tool_name and
        tool_arguments (string [batch]: a call's function and arguments' JSON, "" for text)

The template's single-turn form is applied in the graph: at export the template is
rendered once around sentinel strings, which cuts it into constant pieces, and a request's
prompt is `piece + system + piece + message + piece` (`tf.strings.join`). A template must
insert a turn's text as it is or trimmed (`| trim`, as Gemma's does: applied in the graph
with Python's whitespace set); one that otherwise changes or inspects it is refused at
export, checked on sample messages. A message or system text that
holds a control token's text (`<|im_start|>`) is tokenized as plain characters, as `tfllm
chat` does (see `prompt_ids`); both are bounded in bytes before anything is tokenized.
"""

from __future__ import annotations

import re
import sys

import tensorflow as tf

from tfllm.signatures.checks import ExportError, answer_budget, schema_budget
from tfllm.signatures.prompt_graph import TRIM_SAMPLE, piece_ids, prompt_ids, strip_text
from tfllm.tokenizers.chat_template import ChatTemplateError, template_of

_MESSAGE, _SYSTEM = "\ue000tfllm-message\ue000", "\ue000tfllm-system\ue000"
SAMPLE_MESSAGES = ["Translate to French: Open the file", "Hi", "  spaced  {x} %s\n"]


def prompt_pieces(chat: dict, tools=None) -> dict:
    """{"plain": [before, after], "system": [before, between, after]}: the constant text
    around the message (and the system text) in the template's one-turn prompt (rendering
    `tools`, a template that renders them given).

    Example:
        >>> prompt_pieces({"template": DEFAULT_TEMPLATE})["plain"]  # doctest: +SKIP
        ['<|im_start|>user\\n', '<|im_end|>\\n<|im_start|>assistant\\n']
    """
    template = template_of(chat, tools)
    plain = template.render([{"role": "user", "content": _MESSAGE}], add_generation_prompt=True)
    with_system = template.render([{"role": "system", "content": _SYSTEM},
                                   {"role": "user", "content": _MESSAGE}],
                                  add_generation_prompt=True)
    if plain.count(_MESSAGE) != 1 or with_system.count(_MESSAGE) != 1 or \
            with_system.count(_SYSTEM) != 1 or with_system.index(_SYSTEM) > \
            with_system.index(_MESSAGE):
        raise ChatTemplateError("this chat template does not write a system and a user turn "
                                "as their text in order; the SavedModel cannot apply it in "
                                "the graph")
    before, after = plain.split(_MESSAGE)
    head, rest = with_system.split(_SYSTEM)
    between, tail = rest.split(_MESSAGE)
    # The template must insert each text unchanged, or `| trim`med (Gemma trims messages):
    # the first reading that rebuilds every sample rendering is the one the graph applies.
    for trim in ({"message": False, "system": False}, {"message": True, "system": False},
                 {"message": False, "system": True}, {"message": True, "system": True}):
        pieces = {"plain": [before, after], "system": [head, between, tail], "trim": trim}
        if all(template.render(turns, add_generation_prompt=True) ==
               python_prompt(pieces, message, system)
               for message, system, turns in _samples()):
            return pieces
    raise ChatTemplateError("this chat template changes a turn's text (more than trimming "
                            "it, or only sometimes); the SavedModel cannot apply it in the "
                            "graph")


def _samples():
    for message in SAMPLE_MESSAGES + [TRIM_SAMPLE]:
        for system in (None, "Be brief.", TRIM_SAMPLE):
            turns = ([] if system is None else [{"role": "system", "content": system}]) + \
                [{"role": "user", "content": message}]
            yield message, system, turns


def python_prompt(pieces, message, system=None):
    trim = pieces.get("trim", {})
    message = message.strip() if trim.get("message") else message
    if system is None:
        return pieces["plain"][0] + message + pieces["plain"][1]
    system = system.strip() if trim.get("system") else system
    head, between, tail = pieces["system"]
    return head + system + between + message + tail


class ChatPrompts:
    """The prompts of a set of chat signatures, built in the graph as `tfllm chat` builds
    them: the template's constant pieces around the message (and the system text), with
    `tools` rendered by the template or, where it renders none, listed in a system turn
    after the system text (`ChatSession(tools=)`'s prompt).

    Args:
        tokenizer: the run's tokenizer (in-graph `tokenize`, `tokenize_plain`).
        chat: the run's chat entry.
        tools: checked function specs (`check_tools`), or None.
    """

    def __init__(self, tokenizer, chat: dict, tools=None):
        from tfllm.models.tool_calls import renders_tools, tools_system_prompt

        self.tokenizer, self.listed = tokenizer, None
        if tools is not None and not renders_tools(chat["template"]):
            self.listed, tools = tools_system_prompt(tools), None
        pieces = prompt_pieces(chat, tools)
        self.trim = pieces.pop("trim")
        self.pieces = pieces
        self.ids_of = {form: piece_ids(tokenizer, parts) for form, parts in pieces.items()}

    def _trimmed(self, text, field):
        return strip_text(text) if self.trim[field] else text

    def ids(self, message, system=None):
        """Ragged prompt ids (batch, None) of messages (and system texts), strings
        (batch,)."""
        if self.listed is not None:
            system = tf.fill(tf.shape(message), self.listed) if system is None else \
                tf.strings.join([system, "\n\n" + self.listed])
        if system is None:
            return prompt_ids(self.tokenizer, self.pieces["plain"],
                              [self._trimmed(message, "message")], self.ids_of["plain"])
        return prompt_ids(self.tokenizer, self.pieces["system"],
                          [self._trimmed(system, "system"), self._trimmed(message, "message")],
                          self.ids_of["system"])


# A reply that is one call, as the call constraint writes it: the name, then the arguments
# (an object). The same pattern reads it in Python (`call_parts`) and in the graph (RE2).
# `~` stands for JSON's whitespace.
_CALL_PARTS = {fmt: "(?s)" + pattern.replace("~", r"[ \t\n\r]*") for fmt, pattern in {
    "hermes": r'~<tool_call>~\{~"name"~:~"([^"]*)"~,~"arguments"~:~(\{.*\})~\}~</tool_call>~',
    "llama3": r'~(?:<\|python_tag\|>)?~\{~"name"~:~"([^"]*)"~,~"parameters"~:~(\{.*\})~\}~',
}.items()}


# The call formats whose arguments the graph reads as JSON text (FunctionGemma's are not JSON).
GRAPH_CALL_FORMATS = tuple(_CALL_PARTS)


def call_parts(text: str, fmt: str) -> tuple[str, str]:
    """`(name, arguments JSON text)` of a reply that is one call in `fmt`, else ("", "")
    (what the tools signatures' tool_name and tool_arguments outputs hold)."""
    found = re.fullmatch(_CALL_PARTS[fmt], text)
    return (found.group(1), found.group(2)) if found else ("", "")


def graph_call_parts(text, fmt: str):
    """`call_parts` of strings (batch,) in the graph."""
    pattern = _CALL_PARTS[fmt]
    is_call = tf.strings.regex_full_match(text, pattern)
    return tuple(tf.where(is_call, tf.strings.regex_replace(text, f"^{pattern}$", group), "")
                 for group in (r"\1", r"\2"))


def chat_signatures(decoder, chat: dict, constraints=None, tool_sets=None) -> dict:
    """{name: (fn, input_signature)} of `chat` and `chat_with_system`, over a
    `CausalDecoder` (export.saved_model) of the run.

    Args:
        constraints: {name: `StoredConstraint`}, each adding `chat_<name>` and
            `chat_with_system_<name>`, whose replies match it.
        tool_sets: {name: (tools, call format, `StoredConstraint` with the choices of
            `TOOL_CHOICES`)}, each adding `chat_<name>` and `chat_with_system_<name>`
            whose prompts offer the tools; a `tool_choice` input per row, and outputs
            `tool_name` and `tool_arguments` (`call_parts`).
    """
    end_of_turn = [t for t in chat.get("end_of_turn", []) if t]
    tokenizer = decoder.tokenizer

    def reply(ids, max_new_tokens, sampling, constraint, choice=None, fmt=None):
        out = decoder.decode(ids, max_new_tokens, *sampling, constraint, choice)
        text = out["text"]
        for marker in end_of_turn:  # the text before the first end-of-turn marker
            text = tf.strings.split(text, sep=marker).to_tensor("")[:, 0]
        cut = tf.strings.length(text) < tf.strings.length(out["text"])
        result = {"text": text, "num_generated": out["num_generated"],
                  "num_prompt_tokens": out["num_prompt_tokens"],
                  "finished": tf.logical_or(out["finished"], cut)}
        if fmt is not None:
            result["tool_name"], result["tool_arguments"] = graph_call_parts(text, fmt)
        return result

    def functions(prompts, constraint):
        def chat_plain(message, max_new_tokens, temperature, top_k, top_p, seed):
            sampling = (temperature, top_k, top_p, seed)
            checks = decoder.checks({"message": message}, max_new_tokens, *sampling)
            message, max_new_tokens = decoder.after(checks, message, max_new_tokens)
            return reply(prompts.ids(message), max_new_tokens, sampling, constraint)

        def chat_with_system(message, system, max_new_tokens, temperature, top_k, top_p,
                             seed):
            sampling = (temperature, top_k, top_p, seed)
            checks = decoder.checks({"message": message, "system": system}, max_new_tokens,
                                    *sampling)
            message, system, max_new_tokens = decoder.after(checks, message, system,
                                                            max_new_tokens)
            return reply(prompts.ids(message, system), max_new_tokens, sampling, constraint)

        return chat_plain, chat_with_system

    def tool_functions(prompts, constraint, fmt):
        def chosen(texts, tool_choice, max_new_tokens, sampling):
            checks = decoder.checks({**texts, "tool_choice": tool_choice}, max_new_tokens,
                                    *sampling)
            valid, rows = constraint.select(tool_choice)
            return decoder.after(checks + [valid], *texts.values(), max_new_tokens, rows)

        def chat_tools(message, tool_choice, max_new_tokens, temperature, top_k, top_p,
                       seed):
            sampling = (temperature, top_k, top_p, seed)
            message, max_new_tokens, rows = chosen({"message": message}, tool_choice,
                                                   max_new_tokens, sampling)
            return reply(prompts.ids(message), max_new_tokens, sampling, constraint, rows,
                         fmt)

        def chat_tools_with_system(message, system, tool_choice, max_new_tokens,
                                   temperature, top_k, top_p, seed):
            sampling = (temperature, top_k, top_p, seed)
            message, system, max_new_tokens, rows = chosen(
                {"message": message, "system": system}, tool_choice, max_new_tokens,
                sampling)
            return reply(prompts.ids(message, system), max_new_tokens, sampling, constraint,
                         rows, fmt)

        return chat_tools, chat_tools_with_system

    def conversation_function(prompts, constraint):
        def conversation(roles, contents, max_new_tokens, temperature, top_k, top_p, seed):
            sampling = (temperature, top_k, top_p, seed)
            checks = decoder.checks({"contents": contents}, max_new_tokens, *sampling)
            checks += prompts.checks(roles, contents, decoder.text_bytes)
            roles, contents, max_new_tokens = decoder.after(checks, roles, contents,
                                                            max_new_tokens)
            return reply(prompts.prompt_ids(roles, contents), max_new_tokens, sampling,
                         constraint)

        return conversation

    batch = [None]
    sampling = [tf.TensorSpec(batch, tf.int32, name="max_new_tokens"),
                tf.TensorSpec(batch, tf.float32, name="temperature"),
                tf.TensorSpec(batch, tf.int32, name="top_k"),
                tf.TensorSpec(batch, tf.float32, name="top_p"),
                tf.TensorSpec(batch, tf.int32, name="seed")]
    message = tf.TensorSpec(batch, tf.string, name="message")
    system = tf.TensorSpec(batch, tf.string, name="system")
    choice = tf.TensorSpec(batch, tf.string, name="tool_choice")
    prompts = ChatPrompts(tokenizer, chat)
    sigs = {}
    for name, constraint in [("", None), *((f"_{k}", v) for k, v in
                                           (constraints or {}).items())]:
        chat_plain, chat_with_system = functions(prompts, constraint)
        sigs[f"chat{name}"] = (chat_plain, [message, *sampling])
        sigs[f"chat_with_system{name}"] = (chat_with_system, [message, system, *sampling])
    conversations = conversation_prompts(tokenizer, chat)
    if conversations is not None:
        turns = [tf.TensorSpec([None, None], tf.string, name="roles"),
                 tf.TensorSpec([None, None], tf.string, name="contents")]
        for name, constraint in [("", None), *((f"_{k}", v) for k, v in
                                               (constraints or {}).items())]:
            sigs[f"conversation{name}"] = (conversation_function(conversations, constraint),
                                           [*turns, *sampling])
    for name, (tools, fmt, constraint) in (tool_sets or {}).items():
        chat_tools, with_system = tool_functions(ChatPrompts(tokenizer, chat, tools),
                                                 constraint, fmt)
        sigs[f"chat_{name}"] = (chat_tools, [message, choice, *sampling])
        sigs[f"chat_with_system_{name}"] = (with_system, [message, system, choice, *sampling])
    return sigs


def conversation_prompts(tokenizer, chat):
    """The `ConversationPrompts` of the run's template, or None (noted on stderr) where it
    does not decompose into joints between roles (`conversation_form`)."""
    from tfllm.signatures.conversation import ConversationPrompts

    try:
        return ConversationPrompts(tokenizer, chat)
    except ChatTemplateError as e:
        if e.kind != "template":
            raise
        print(f"note: no conversation signatures: {e}", file=sys.stderr)
        return None


def expected_replies(model, chat, messages, max_new_tokens, system=None, **session):
    """`tfllm chat`'s greedy first reply to each message (what the signature must give);
    `session`: more `ChatSession` arguments (json_schema, tools, tool_choice)."""
    from tfllm.models.chat_session import ChatSession

    return [ChatSession(model, chat, system, max_new_tokens, **session).reply(m)
            for m in messages]


# What the exporter checks: a message as typed, a short one, and one wrapped in whitespace
# (which a trimming template, Gemma's, must trim in the graph as Jinja does).
VERIFY_MESSAGES = SAMPLE_MESSAGES[:2] + ["\u3000 Hi \n\t"]
CHECK_SYSTEM = "Be brief."


def _fitting(model, chat, messages, what, tools=None):
    """`(messages, room)`: the messages whose prompts (with and without the system text)
    leave room for a reply, and the new tokens the longest of them leaves."""
    from tfllm.errors import TfllmError
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.generation import fits, new_token_room

    max_len = model.backbone.max_len
    lengths = {}
    for message in messages:
        for sys_text in (None, CHECK_SYSTEM):
            # (Tools' replies are at least 2 tokens: a character and the end.)
            session = ChatSession(model, chat, sys_text, max_new_tokens=2 if tools else 1,
                                  tools=tools)
            turns = session.history + [{"role": "user", "content": message}]
            try:
                size = len(session.prompt_ids(turns)[0])
            except TfllmError:  # longer than the context
                size = max_len
            lengths[message] = max(lengths.get(message, 0), size)
    messages = [m for m in messages if fits(lengths[m], 1, max_len)]
    if not messages:
        raise ExportError(f"the chat check's sample messages{what} do not fit the context of "
                          f"{max_len} tokens with the template; export with a longer "
                          "--max-len")
    return messages, new_token_room(max_len, max(lengths[m] for m in messages))


def chat_checks(model, chat, messages=VERIFY_MESSAGES, max_new_tokens=16, json_schemas=None,
                tool_sets=None):
    """The checks (`verify_outputs`) of the chat signatures: greedy `chat` and
    `chat_with_system` replies equal `tfllm chat`'s first replies, and `chat_<name>`'s the
    replies under each of `json_schemas` ({name: JSON schema}; `chat_with_system_<name>`
    shares its decoding with the one and its prompt with the other); with `tool_sets`
    (`chat_signatures`), both tools signatures' replies and calls those of `tfllm chat
    --tools`, one row per tool choice. The reply length is cut to what the context
    leaves after the longest sample prompt (a short-context run is checked on fewer
    tokens)."""
    from tfllm.models.tool_calls import TOOL_CHOICES

    fitting, room = _fitting(model, chat, messages, "")
    n = len(fitting)
    greedy = {"temperature": [0.0] * n, "top_k": [0] * n, "top_p": [1.0] * n, "seed": [0] * n}
    new = min(max_new_tokens, room)
    checks = [(sig, {**greedy, **extra, "message": fitting, "max_new_tokens": [new] * n},
               expected_replies(model, chat, fitting, new, sys_text), "tfllm chat")
              for sig, sys_text, extra in (("chat", None, {}),
                                           ("chat_with_system", CHECK_SYSTEM,
                                            {"system": [CHECK_SYSTEM] * n}))]
    for name, schema in (json_schemas or {}).items():
        new = schema_budget(model, name, schema, room, max_new_tokens)
        checks.append((f"chat_{name}", {**greedy, "message": fitting,
                                        "max_new_tokens": [new] * n},
                       expected_replies(model, chat, fitting, new, json_schema=schema),
                       "tfllm chat --json-schema"))
    checks += conversation_checks(model, chat, max_new_tokens, json_schemas)
    for name, (tools, fmt, stored) in (tool_sets or {}).items():
        rows = (list(messages) * len(TOOL_CHOICES))[:max(len(messages), len(TOOL_CHOICES))]
        rows, tool_room = _fitting(model, chat, rows, f" with tools {name!r}", tools)
        choices = [TOOL_CHOICES[k % len(TOOL_CHOICES)] for k in range(len(rows))]
        new = answer_budget(stored.shortest, f"tools {name!r}", tool_room, max_new_tokens)
        k = len(rows)
        inputs = {**{key: v[:1] * k for key, v in greedy.items()}, "message": rows,
                  "tool_choice": choices, "max_new_tokens": [new] * k}
        for sig, sys_text, extra in ((f"chat_{name}", None, {}),
                                     (f"chat_with_system_{name}", CHECK_SYSTEM,
                                      {"system": [CHECK_SYSTEM] * k})):
            texts = [expected_replies(model, chat, [m], new, sys_text, tools=tools,
                                      tool_choice=c)[0] for m, c in zip(rows, choices)]
            parts = [call_parts(t, fmt) for t in texts]
            checks.append((sig, {**inputs, **extra},
                           {"text": texts, "tool_name": [p[0] for p in parts],
                            "tool_arguments": [p[1] for p in parts]},
                           "tfllm chat --tools"))
    return checks


# What the exporter checks the conversation signatures on: a system turn and an exchange
# before the message, an exchange with a whitespace-wrapped reply, and one message (rows of
# different lengths: the shorter padded with role "").
CHECK_CONVERSATIONS = [
    [{"role": "system", "content": CHECK_SYSTEM}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": SAMPLE_MESSAGES[0]}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SAMPLE_MESSAGES[2]},
     {"role": "user", "content": VERIFY_MESSAGES[2]}],
    [{"role": "user", "content": "Hi"}],
]


def conversation_replies(model, chat, conversations, max_new_tokens, json_schema=None):
    """`tfllm chat`'s greedy reply to the last turn of each conversation, the turns before
    it as the session's history (what the `conversation` signature must give)."""
    from tfllm.models.chat_session import ChatSession

    replies = []
    for turns in conversations:
        session = ChatSession(model, chat, None, max_new_tokens, json_schema=json_schema)
        session.history = list(turns[:-1])
        replies.append(session.reply(turns[-1]["content"]))
    return replies


def conversation_checks(model, chat, max_new_tokens=16, json_schemas=None):
    """The checks of the `conversation` signatures (none where the template does not
    decompose): greedy replies to `CHECK_CONVERSATIONS` (those the template accepts and
    the context holds with a few tokens to spare) equal `tfllm chat`'s after the same
    history, and under each of `json_schemas` for `conversation_<name>`."""
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.generation import fits, new_token_room
    from tfllm.signatures.conversation import conversation_form

    try:
        form = conversation_form(chat)
    except ChatTemplateError as e:
        if e.kind != "template":
            raise
        return []
    max_len = model.backbone.max_len
    session = ChatSession(model, chat, max_new_tokens=1)
    sized = [(turns, len(session.encode(turns))) for turns in CHECK_CONVERSATIONS
             if form.accepts([t["role"] for t in turns])]
    sized = [(turns, size) for turns, size in sized
             if fits(size, min(4, max_new_tokens), max_len)]
    if not sized:
        raise ExportError("the conversation check's sample conversations do not fit the "
                          f"context of {max_len} tokens with the template; export with a "
                          "longer --max-len")
    conversations = [turns for turns, _ in sized]
    room = new_token_room(max_len, max(size for _, size in sized))
    width, n = max(map(len, conversations)), len(conversations)
    inputs = {"roles": [[t["role"] for t in c] + [""] * (width - len(c))
                        for c in conversations],
              "contents": [[t["content"] for t in c] + [""] * (width - len(c))
                           for c in conversations],
              "temperature": [0.0] * n, "top_k": [0] * n, "top_p": [1.0] * n,
              "seed": [0] * n}
    new = min(max_new_tokens, room)
    checks = [("conversation", {**inputs, "max_new_tokens": [new] * n},
               conversation_replies(model, chat, conversations, new), "tfllm chat")]
    for name, schema in (json_schemas or {}).items():
        new = schema_budget(model, name, schema, room, max_new_tokens)
        checks.append((f"conversation_{name}", {**inputs, "max_new_tokens": [new] * n},
                       conversation_replies(model, chat, conversations, new, schema),
                       "tfllm chat --json-schema"))
    return checks
