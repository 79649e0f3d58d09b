"""Multi-turn chat with a causal LM run: the run's template, a history kept within the
context, replies streamed and stopped at the end of the turn.

Example:
    >>> session = ChatSession(tfllm.load("runs/mt-chat"), chat_config)  # doctest: +SKIP
    >>> "".join(session.send("Translate to French: Open file"))  # doctest: +SKIP
    'Ouvrir le fichier'
"""

from __future__ import annotations

from typing import Iterator

from tfllm.tokenizers.chat_template import template_of
from tfllm.tokenizers.chat_encoding import chat_pieces, encode_pieces
from tfllm.errors import TfllmError



def end_of_turn_at(text: str, markers) -> int:
    """Where the first end-of-turn marker (of `markers`) begins in `text`; -1 where none
    does. A reply ends there, whatever a marker of several tokens was decoded from.

    Example:
        >>> end_of_turn_at("oui<|im_end|>", ["<|im_end|>"])
        3
    """
    return min((text.find(t) for t in markers if t in text), default=-1)

class ChatSession:
    """A conversation with a model: `send(message)` yields the reply's text as it comes.

    Args:
        model: a `CausalLM` with its tokenizer (`tfllm.load`).
        chat: the run's chat entry (`tfllm.tokenizers.chat_template.chat_config_of`).
        system: a system turn put first (None: the template's own default, if any).
        max_new_tokens: the longest reply.
        temperature, top_k, top_p, seed: sampling, as `tfllm generate` (0: greedy).
        split_special_tokens: a message holding a control token's text (`<|im_start|>`)
            is encoded as plain characters, so it cannot forge turns; False (trusted
            callers) reads it as control tokens.
        json_schema: every reply is JSON valid under this schema (a dict or JSON text).
        regex: every reply matches this regular expression (not with json_schema).
        tools: function specs (OpenAI's form) the model is offered: the template renders
            them (or, where it does not, a system turn lists them), and a reply that calls
            one is one call in the family's format, its arguments valid under the tool's
            parameters (`tfllm.models.tool_calls`; not with json_schema or regex).
        tool_choice: "auto" (a reply is a call or text), "required" (always a call) or
            "none" (never one).

    Attributes:
        history: the turns so far ({"role", "content"}).
        dropped: how many old turns were dropped to fit the context, in all.
        last_tool_calls: with tools, the last reply's calls as OpenAI `tool_calls`.
    """

    def __init__(self, model, chat: dict, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_k=None, top_p=None,
                 seed=None, split_special_tokens: bool = True, json_schema=None, regex=None,
                 tools=None, tool_choice: str = "auto"):
        from tfllm.models import tool_calls
        from tfllm.models.generation import (GenerationParams, check_constraint, check_fits,
                                             constraint_of, get_generator)

        self.model, self.tokenizer = model, model.tokenizer
        self.tools, self.tool_format, self.last_tool_calls = None, None, []
        rendered_tools = None  # what the template itself renders as `tools`
        if tools is not None:
            if json_schema is not None or regex is not None:
                raise TfllmError("give tools, or a JSON schema or regex, not both")
            self.tools = tool_calls.check_tools(tools)
            self.tool_format = tool_calls.call_format(chat["template"])
            regex = tool_calls.choice_regex(self.tools, self.tool_format, tool_choice)
            if tool_calls.renders_tools(chat["template"]):
                rendered_tools = self.tools
            else:
                listed = tool_calls.tools_system_prompt(self.tools)
                system = listed if system is None else system + "\n\n" + listed
        self.template = template_of(chat, rendered_tools)
        self.end_of_turn = [t for t in chat.get("end_of_turn", []) if t]
        self.generator = get_generator(model)
        self.max_len = self.generator.max_len
        check_fits(1, max_new_tokens, self.max_len, "--max-new-tokens")
        self.params = GenerationParams(max_new_tokens, temperature, top_k, top_p, seed)
        self.constraint = constraint_of(model, json_schema, regex)
        if self.constraint is not None:  # refused here, before the first message
            check_constraint(self.constraint, self.params)
        self.history = [] if system is None else [{"role": "system", "content": system}]
        self.dropped = 0
        self.last_dropped = 0
        self.split_special_tokens = split_special_tokens

    def encode(self, turns) -> list[int]:
        """Ids of `turns` (`{"role", "content"}`) rendered by the session's template,
        with the generation prompt; nothing dropped."""
        return encode_pieces(self.tokenizer, chat_pieces(
            self.template, turns, self.tokenizer, True, self.split_special_tokens))

    def prompt_ids(self, turns) -> tuple[list[int], int]:
        """Ids of `turns` with the generation prompt, oldest non-system turns dropped
        until the prompt and a full reply fit; `(ids, turns dropped)`."""
        from tfllm.models.generation import fits

        turns, dropped = list(turns), 0
        while True:
            ids = self.encode(turns)
            if fits(len(ids), self.params.max_new_tokens, self.max_len):
                return ids, dropped
            first = 1 if turns and turns[0]["role"] == "system" else 0
            if len(turns) - first <= 1:
                raise TfllmError(f"the message is {len(ids)} tokens with the template; with "
                                 f"a {self.params.max_new_tokens}-token reply it does not fit "
                                 f"the context of {self.max_len}: shorten it or lower "
                                 "--max-new-tokens")
            # Drop the oldest exchange (a user turn and the replies after it).
            cut = first + 1
            while cut < len(turns) and turns[cut]["role"] != "user":
                cut += 1
            dropped += cut - first
            turns = turns[:first] + turns[cut:]

    def send(self, message: str) -> Iterator[str]:
        """Add a user turn and yield the reply's text in pieces; the reply (up to its end
        of turn) joins the history when the generator is exhausted."""
        return self._send({"role": "user", "content": message})

    def send_tool_results(self, results: list[str]) -> Iterator[str]:
        """Give the model the results of its last reply's calls (texts, in the calls'
        order; a user turn of `<tool_response>` blocks, as `plain_turns` writes them) and
        yield its reply, as `send` does."""
        from tfllm.models.tool_calls import plain_turns

        if not self.tools:
            raise TfllmError("tool results need a session with tools")
        if not isinstance(results, list) or not results or \
                not all(isinstance(r, str) for r in results):
            raise TfllmError("tool results are a non-empty list of texts")
        return self._send(plain_turns([{"role": "tool", "content": r} for r in results])[0])

    def _send(self, turn: dict) -> Iterator[str]:
        turns = self.history + [turn]
        ids, dropped = self.prompt_ids(turns)
        if dropped:
            first = 1 if turns[0]["role"] == "system" else 0
            turns = turns[:first] + turns[first + dropped:]
            self.dropped += dropped
        self.last_dropped = dropped
        hold = max((len(t) for t in self.end_of_turn), default=1) - 1
        reply_ids, shown, reply = [], 0, ""
        for chunk in self.generator.stream_ids(ids, self.params, constraint=self.constraint):
            reply_ids += chunk
            reply = self.tokenizer.decode(reply_ids)
            cut = end_of_turn_at(reply, self.end_of_turn)
            if cut >= 0:
                reply = reply[:cut]
                break
            # Text that may be the start of an end-of-turn marker waits for the next chunk.
            safe = max(shown, len(reply) - hold)
            if safe > shown:
                yield reply[shown:safe]
                shown = safe
        if len(reply) > shown:
            yield reply[shown:]
        if self.tools:
            from tfllm.models.tool_calls import parse_tool_calls

            self.last_tool_calls = parse_tool_calls(reply, self.tool_format)
        self.history = turns + [{"role": "assistant", "content": reply}]

    def reply(self, message: str) -> str:
        """The whole reply to `message` (see `send`)."""
        return "".join(self.send(message))
