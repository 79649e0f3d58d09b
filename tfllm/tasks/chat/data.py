"""Chat fine-tuning data: conversations from files, and their token ids with a loss mask
that covers exactly the assistant replies.

Two layouts are read: JSONL rows with `messages` (`[{"role": "system"|"user"|"assistant",
"content": ...}]`, what users already have; OpenAI's tool fields too: a row's `tools`, an
assistant turn's `tool_calls`, `tool` results, written as `tfllm.models.tool_calls.plain_turns`
does for the run's template, so the model is tuned on the text `ChatSession(tools=)` gives it
and reads back), or prompt/response columns of a tsv, csv or jsonl file, the prompt
optionally formatted by a template such as `"Translate to French: {en}"` (any column of the
row may be named).
"""

from __future__ import annotations

import os

from tfllm.tokenizers.chat_encoding import (encode_plain, encode_text, segment_pieces,
                                            tokenize_text)
from tfllm.tokenizers.chat_template import ChatTemplateError, Conversation, check_messages
from tfllm.data.spec import FILE_KINDS, spec_hint
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
        template: the source of the chat template the conversations will be rendered by.
            It decides how a row's tools and calls are written, as `ChatSession(tools=)`
            writes them: the tools given to a template that renders tools (a
            `Conversation`'s tools), else listed in a system turn; calls in the format the
            template teaches (`tool_calls.call_format`). None: listed, hermes calls.

    Attributes:
        train, val: lists of conversations (lists of {"role", "content"}).
        skipped: {"bad_role", "bad_tool", "no_assistant", "empty"} counts of rows left out.

    Example:
        >>> data = ChatData("tsv:train.tsv", "en", "fr",  # doctest: +SKIP
        ...                 prompt_template="Translate to French: {en}")
    """

    def __init__(self, spec, prompt_column=None, response_column=None, prompt_template=None,
                 system=None, seed=0, template=None):
        from tfllm.models.tool_calls import call_format, renders_tools

        self.spec = spec
        self.call_format = call_format(template) if template else "hermes"
        self.renders_tools = bool(template) and renders_tools(template)
        kind, _, rest = spec.partition(":")
        if kind not in ("tsv", "csv", "jsonl") or not rest:
            raise DataError(f"bad chat data spec {spec!r}: use jsonl:PATH (rows with "
                            "messages) or tsv:|csv:|jsonl:PATH with --prompt-column and "
                            f"--response-column{spec_hint(spec, FILE_KINDS)}")
        if bool(prompt_column) != bool(response_column):
            raise DataError("give both --prompt-column and --response-column, or neither "
                            "(JSONL rows with messages)")
        self.path = os.path.expanduser(rest)
        columns, rows = read_rows(kind, self.path)
        self.skipped = {"bad_role": 0, "bad_tool": 0, "no_assistant": 0, "empty": 0}
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
            chats = [self._from_messages(r.get("messages"), r.get("tools")) for r in rows]
        chats = [c for c in chats if c is not None]
        if system is not None:
            chats = [c if c[0]["role"] == "system"
                     else Conversation([{"role": "system", "content": system}] + c,
                                       getattr(c, "tools", None)) for c in chats]
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

    def _from_messages(self, messages, tools=None):
        from tfllm.models.tool_calls import ToolError, check_tools, plain_turns

        try:
            if tools is not None and self.renders_tools:  # (plain_turns checks listed ones)
                tools = check_tools(tools)
            messages = check_messages(plain_turns(messages, tools, self.call_format,
                                                  list_tools=not self.renders_tools))
        except ToolError:
            self.skipped["bad_tool"] += 1
            return None
        except ChatTemplateError:
            self.skipped["bad_role"] += 1
            return None
        if not any(m["role"] == "assistant" for m in messages):
            self.skipped["no_assistant"] += 1
            return None
        if tools is not None and self.renders_tools:
            return Conversation(messages, tools)
        return messages

    def describe(self) -> dict:
        return {"spec": self.spec, "conversations": len(self.all), "skipped": self.skipped}


def encode_chat(conversation, template, tokenizer, split_special_tokens: bool = True):
    """`(ids, mask)` of one conversation: its rendered text's token ids, and 1 on exactly
    the tokens of the assistant replies (their content and end of turn), 0 elsewhere.

    Each piece of `template.segments` is tokenized on its own, so no token straddles a
    reply's edge; templates cut at special tokens or newlines, where whole-text
    tokenization cuts too. A message holding a control token's text is encoded as plain
    characters (see `chat_pieces`).

    Args:
        conversation: a list of {"role", "content"}.
        template: a `tfllm.tokenizers.chat_template.ChatTemplate`.
        tokenizer: the run's tokenizer; a BOS it adds by itself is left out (the
            template writes the BOS it wants).
    """
    ids, mask = [], []
    for text, reply, plain in segment_pieces(template, conversation, tokenizer,
                                             split_special_tokens):
        piece = encode_plain(tokenizer, text) if plain else encode_text(tokenizer, text)
        ids += piece
        mask += [int(reply)] * len(piece)
    return ids, mask


def encode_conversations(conversations, template, tokenizer, max_len: int):
    """`(encoded, too_long)`: `(ids, mask)` of each conversation that fits `max_len`
    tokens, and how many did not (they are left out; DataError when none fits).

    The same ids as `encode_chat`, with every piece of every conversation tokenized in a
    few batched calls (one call per piece costs about a millisecond in eager TensorFlow,
    minutes for a 50k-row file).

    Example:
        >>> encoded, too_long = encode_conversations(data.train, template, tok, 2048)  # doctest: +SKIP
    """
    pieces, owners = [], []
    for n, conversation in enumerate(conversations):
        for piece in segment_pieces(template, conversation, tokenizer):
            pieces.append(piece)
            owners.append(n)
    piece_ids = [None] * len(pieces)
    for plain in (False, True):
        which = [k for k, p in enumerate(pieces) if p[2] == plain]
        for k, ids in zip(which, _tokenize_many(tokenizer, [pieces[k][0] for k in which],
                                                plain=plain)):
            piece_ids[k] = ids
    rows = [([], []) for _ in conversations]
    for (text, reply, _), n, ids in zip(pieces, owners, piece_ids):
        rows[n][0].extend(ids)
        rows[n][1].extend([int(reply)] * len(ids))
    encoded, too_long = [], 0
    for ids, mask in rows:
        if len(ids) > max_len:
            too_long += 1
        elif sum(mask):
            encoded.append((ids, mask))
    if not encoded:
        raise DataError(f"no conversation fits the model's context of {max_len} tokens "
                        f"({too_long} are longer); shorten the turns or use a model with a "
                        "longer context")
    return encoded, too_long


def _tokenize_many(tokenizer, texts, chunk=4096, plain=False):
    """Ids of each text as `encode_chat` takes them (no auto-added BOS, the template's BOS
    mark as the BOS id; with `plain`, control tokens' text as plain characters)."""
    import tensorflow as tf

    if plain:  # tokenize_plain adds no BOS; a tokenizer without it may
        tokenize = getattr(tokenizer, "tokenize_plain", tokenizer.tokenize)
        auto_bos = getattr(tokenizer, "add_bos", False) and tokenize == tokenizer.tokenize
    else:  # the template's text: its BOS mark is the BOS id, no BOS of the tokenizer's own
        def tokenize(batch):
            return tokenize_text(tokenizer, batch)
        auto_bos = False
    out = []
    for start in range(0, len(texts), chunk):
        batch = tokenize(tf.constant(texts[start:start + chunk]))
        # tf-text gives a RaggedTensor; keras-hub's tokenizers, eagerly, Python lists.
        rows = batch.to_list() if hasattr(batch, "to_list") else batch
        for ids in rows:
            ids = [int(i) for i in ids]
            if auto_bos and ids[:1] == [tokenizer.bos_id]:
                ids = ids[1:]
            out.append(ids)
    return out


def make_chat_dataset(encoded, batch_size: int, training: bool, seed: int = 0,
                      pad_id: int = 0):
    """Batches of `({"token_ids", "padding_mask"}, labels, weights)` for `CausalLM.fit`.

    Inputs are a conversation's ids but the last, labels the ids but the first, weights
    the loss mask of the labels (1 on assistant tokens). Conversations are grouped by
    length (buckets 8 tokens wide) and each batch is padded to its longest row, so a
    plain graph (no XLA) trains on few padded tokens. Training repeats and shuffles.

    Args:
        encoded: `(ids, mask)` pairs from `encode_chat`.
        batch_size: conversations per batch.
        training: shuffle and repeat.
        seed: the shuffle seed.
        pad_id: the id padded slots hold (masked out by `padding_mask`).
    """
    import tensorflow as tf

    from tfllm.data.windows import training_options

    if not encoded:
        raise DataError("no conversations to train or evaluate on")
    ids = tf.ragged.constant([e[0] for e in encoded], dtype=tf.int32)
    masks = tf.ragged.constant([e[1] for e in encoded], dtype=tf.float32)
    ds = tf.data.Dataset.from_tensor_slices((ids, masks))

    def shift(row, mask):
        return row[:-1], tf.ones_like(row[:-1], tf.bool), row[1:], mask[1:]

    ds = ds.map(shift, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.repeat().shuffle(min(len(encoded), 20_000), seed=seed)
    longest = max(len(e[0]) for e in encoded)
    boundaries = list(range(9, longest + 8, 8))
    ds = ds.bucket_by_sequence_length(
        lambda x, m, y, w: tf.shape(x)[0], bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=(pad_id, False, pad_id, 0.0), drop_remainder=training)
    ds = ds.map(lambda x, m, y, w: ({"token_ids": x, "padding_mask": m}, y, w))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(training_options())
