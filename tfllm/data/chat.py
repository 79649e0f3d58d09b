"""Chat fine-tuning data: conversations from files, and their token ids with a loss mask
that covers exactly the assistant replies.

Two layouts are read: JSONL rows with `messages` (`[{"role": "system"|"user"|"assistant",
"content": ...}]`, what users already have), or prompt/response columns of a tsv, csv or
jsonl file, the prompt optionally formatted by a template such as
`"Translate to French: {en}"` (any column of the row may be named).
"""

from __future__ import annotations

import os

from tfllm.chat_template import ChatTemplateError, check_messages
from tfllm.data.tables import cell, read_rows, split_rows
from tfllm.errors import DataError


class ChatData:
    """Conversations of a data spec, split into train and val.

    Args:
        spec: `jsonl:PATH` (rows with `messages`) or `tsv:|csv:|jsonl:PATH` with
            `prompt_column` and `response_column`.
        prompt_column, response_column: the columns of a prompt/response table.
        prompt_template: formats the prompt from the row (`"Translate to French: {en}"`);
            default the prompt column as it is.
        system: a system turn put first in every conversation that has none.
        seed: seed of the held-out split.

    Attributes:
        train, val: lists of conversations (lists of {"role", "content"}).
        skipped: {"bad_role", "no_assistant", "empty"} counts of rows left out.

    Example:
        >>> data = ChatData("tsv:train.tsv", "en", "fr",  # doctest: +SKIP
        ...                 prompt_template="Translate to French: {en}")
    """

    def __init__(self, spec, prompt_column=None, response_column=None, prompt_template=None,
                 system=None, seed=0):
        self.spec = spec
        kind, _, rest = spec.partition(":")
        if kind not in ("tsv", "csv", "jsonl") or not rest:
            raise DataError(f"bad chat data spec {spec!r}: use jsonl:PATH (rows with "
                            "messages) or tsv:|csv:|jsonl:PATH with --prompt-column and "
                            "--response-column")
        if bool(prompt_column) != bool(response_column):
            raise DataError("give both --prompt-column and --response-column, or neither "
                            "(JSONL rows with messages)")
        self.path = os.path.expanduser(rest)
        columns, rows = read_rows(kind, self.path)
        self.skipped = {"bad_role": 0, "no_assistant": 0, "empty": 0}
        if prompt_column:
            for name, option in ((prompt_column, "--prompt-column"),
                                 (response_column, "--response-column")):
                if name not in columns:
                    raise DataError(f"{self.path} has no column {name!r} ({option}); "
                                    f"columns: {columns}")
            chats = [self._from_columns(r, prompt_column, response_column, prompt_template)
                     for r in rows]
        else:
            if "messages" not in columns:
                raise DataError(f"{self.path} has no 'messages' field; give JSONL rows with "
                                "messages, or --prompt-column and --response-column")
            chats = [self._from_messages(r.get("messages")) for r in rows]
        chats = [c for c in chats if c is not None]
        if system is not None:
            chats = [c if c[0]["role"] == "system"
                     else [{"role": "system", "content": system}] + c for c in chats]
        if not chats:
            raise DataError(f"{self.path}: no usable conversation (skipped: {self.skipped})")
        self.all = chats
        self.train, self.val, _ = split_rows(chats, "random", seed)

    def _from_columns(self, row, prompt_column, response_column, prompt_template):
        prompt, response = cell(row.get(prompt_column)).strip(), \
            cell(row.get(response_column)).strip()
        if not prompt or not response:
            self.skipped["empty"] += 1
            return None
        if prompt_template:
            try:
                prompt = prompt_template.format(**{k: cell(v) for k, v in row.items()})
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(f"--prompt-template {prompt_template!r} cannot be filled "
                                f"from a row of {self.path} ({e!r}); name its columns in "
                                "braces, e.g. {en}") from e
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": response}]

    def _from_messages(self, messages):
        try:
            messages = check_messages(messages)
        except ChatTemplateError:
            self.skipped["bad_role"] += 1
            return None
        if not any(m["role"] == "assistant" for m in messages):
            self.skipped["no_assistant"] += 1
            return None
        return messages

    def describe(self) -> dict:
        return {"spec": self.spec, "conversations": len(self.all), "skipped": self.skipped}


def encode_chat(conversation, template, tokenizer):
    """`(ids, mask)` of one conversation: its rendered text's token ids, and 1 on exactly
    the tokens of the assistant replies (their content and end of turn), 0 elsewhere.

    Each piece of `template.segments` is tokenized on its own, so no token straddles a
    reply's edge; templates cut at special tokens or newlines, where whole-text
    tokenization cuts too.

    Args:
        conversation: a list of {"role", "content"}.
        template: a `tfllm.chat_template.ChatTemplate`.
        tokenizer: the run's tokenizer; a BOS it adds by itself is left out (the
            template writes the BOS it wants).
    """
    auto_bos = getattr(tokenizer, "add_bos", False)
    ids, mask = [], []
    for text, reply in template.segments(conversation):
        piece = tokenizer.encode(text)
        if auto_bos and piece[:1] == [tokenizer.bos_id]:
            piece = piece[1:]  # as transformers' apply_chat_template: no special tokens added
        ids += piece
        mask += [int(reply)] * len(piece)
    return ids, mask
