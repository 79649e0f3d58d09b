"""Chat text to token ids, with a conversation's messages kept as text: a message holding a
control token's text (`<|im_start|>`, `<start_of_turn>`) is tokenized as plain
characters, while the template's own markers stay control tokens (Hugging Face's
`split_special_tokens=True`, for messages only), so a user cannot forge turns. `tfllm chat`,
chat fine-tuning and the SavedModel's chat graph all encode so.
"""

from __future__ import annotations

import re

from tfllm.tokenizers.chat_template import BOS_MARK, ChatTemplateError, Conversation


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of rendered chat text: a BOS the tokenizer adds by itself is left out, as
    transformers' `apply_chat_template` adds no special tokens; the BOS the template writes
    (`BOS_MARK`) is the BOS id."""
    ids = []
    for k, part in enumerate(text.split(BOS_MARK)):
        if k:
            ids.append(tokenizer.bos_id)
        if part:
            ids += _without_auto_bos(tokenizer, part)
    return ids


def _without_auto_bos(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if getattr(tokenizer, "add_bos", False) and ids[:1] == [tokenizer.bos_id]:
        ids = ids[1:]
    return ids


def tokenize_text(tokenizer, texts):
    """`encode_text` in the graph: strings (batch,) -> ragged int32 ids (batch, None)."""
    import tensorflow as tf

    texts = tf.convert_to_tensor(texts, tf.string)
    segments = tf.strings.split(texts, BOS_MARK)  # (batch, segments)
    ids = tf.cast(tokenizer.tokenize(segments.flat_values), tf.int32)  # (S, tokens)
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    if getattr(tokenizer, "add_bos", False):
        ids = ids[:, 1:]
    # Every segment but a row's first follows a mark: it starts with the BOS id.
    follows = tf.cast(tf.ragged.range(segments.row_lengths()).flat_values > 0, tf.int64)
    bos = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(follows)], tf.constant(tokenizer.bos_id, tf.int32)),
        follows)  # (S, 0 or 1)
    ids = tf.concat([bos, ids], axis=1)
    return tf.RaggedTensor.from_row_splits(ids.values,
                                           tf.gather(ids.row_splits, segments.row_splits))


def encode_plain(tokenizer, text: str) -> list[int]:
    """Ids of a message's text with control tokens' text read as ordinary characters (a
    tokenizer that recognizes none in text encodes it as `encode_text` does)."""
    if hasattr(tokenizer, "encode_plain"):
        return tokenizer.encode_plain(text)
    return _without_auto_bos(tokenizer, text)  # a BOS_MARK in a message is a character


# Marks a message's place when a template is rendered around placeholders (Unicode private
# use: no tokenizer or template gives it a meaning).
_MARK = "\ue001"
_MARKED = re.compile(f"{_MARK}(\\d+){_MARK}")


def has_control_text(tokenizer, texts) -> bool:
    """True when one of `texts` holds the text of a control token of `tokenizer` (one
    that tokenizing a whole rendered conversation would read as that token)."""
    specials = [*getattr(tokenizer, "special_tokens", ()), BOS_MARK]
    return any(special in text for text in texts for special in specials)


def _marked(messages):
    marked = [{**m, "content": f"{_MARK}{i}{_MARK}"} for i, m in enumerate(messages)]
    # A Conversation's tools are rendered too: the placeholders' rendering must match.
    tools = getattr(messages, "tools", None)
    return marked if tools is None else Conversation(marked, tools)


def _split_marked(marked_text, real_text, contents):
    """`[(text, is_message)]` of a rendering around placeholders, the messages put back;
    ChatTemplateError unless their join is `real_text` (a template that changes a message
    cannot have its messages located)."""
    parts = _MARKED.split(marked_text)
    pieces = [(contents[int(part)], True) if k % 2 else (part, False)
              for k, part in enumerate(parts) if k % 2 or part]
    if "".join(text for text, _ in pieces) != real_text:
        raise ChatTemplateError("this chat template changes a message's text, so a message "
                                "holding a control token's text (e.g. <|im_start|>) cannot be "
                                "kept as plain text; remove it from the message")
    return pieces


def chat_pieces(template, messages, tokenizer, add_generation_prompt: bool = False,
                split_special_tokens: bool = True) -> list[tuple[str, bool]]:
    """A conversation's rendering as `[(text, is_message)]` pieces for `encode_pieces`.

    A message holding the text of a control token (`<|im_start|>`, `<start_of_turn>`) is
    one piece of its own, encoded as plain characters, while the template's own markers
    stay control tokens: a user cannot forge turns (Hugging Face's
    `split_special_tokens=True`, for messages only). Otherwise the whole text is one piece,
    tokenized in one pass as always. `split_special_tokens=False` (trusted callers) reads
    control tokens' text in messages as control tokens.
    """
    text = template.render(messages, add_generation_prompt)
    contents = [m["content"] for m in messages]
    if not split_special_tokens or not has_control_text(tokenizer, contents):
        return [(text, False)]
    return _split_marked(template.render(_marked(messages), add_generation_prompt), text,
                         contents)


def encode_pieces(tokenizer, pieces) -> list[int]:
    """Ids of `[(text, is_message)]` pieces: messages by `encode_plain`, the template's
    text by `encode_text`."""
    ids = []
    for text, plain in pieces:
        ids += encode_plain(tokenizer, text) if plain else encode_text(tokenizer, text)
    return ids


def segment_pieces(template, conversation, tokenizer, split_special_tokens: bool = True):
    """`template.segments(conversation)` as `[(text, is_reply, is_message)]`: as
    `chat_pieces`, a message holding a control token's text is a piece of its own."""
    segments = template.segments(conversation)
    contents = [m["content"] for m in conversation]
    if not split_special_tokens or not has_control_text(tokenizer, contents):
        return [(text, reply, False) for text, reply in segments]
    marked = template.segments(_marked(conversation))
    if [r for _, r in marked] != [r for _, r in segments]:
        raise ChatTemplateError("this chat template renders placeholders and messages into "
                                "different turns; a message holding a control token's text "
                                "cannot be kept as plain text")
    return [(text, reply, plain) for (marked_text, _), (real_text, reply) in zip(marked, segments)
            for text, plain in _split_marked(marked_text, real_text, contents)]
