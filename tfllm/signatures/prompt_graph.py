"""Chat prompts built in the graph from a template's constant pieces and a request's texts:
the token ids `tfllm chat` would feed the model (`tfllm.tokenizers.chat_encoding`), shared
by the `chat` and `conversation` signatures."""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from tfllm.tokenizers.chat_encoding import encode_text, tokenize_text
from tfllm.tokenizers.chat_template import BOS_MARK

# Every character Python's str.strip() (Jinja's `trim`) removes; RE2's \s lacks most.
_PY_SPACE = (r"[\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
             r"\x{202f}\x{205f}\x{3000}]")
TRIM_SAMPLE = "\u3000\u00a0\v trimmed?\t\u2028\x1c"


def strip_text(text):
    """Jinja's `| trim` (Python's `str.strip()`) of strings (batch,) in the graph."""
    return tf.strings.regex_replace(text, f"^{_PY_SPACE}+|{_PY_SPACE}+$", "")


def piece_ids(tokenizer, parts) -> list[list[int]]:
    """Token ids of a template's constant pieces, for `prompt_ids` (computed eagerly, once),
    as `tfllm chat` encodes them (`encode_text`: the BOS where the template writes one)."""
    return [encode_text(tokenizer, part) for part in parts]


def prompt_ids(tokenizer, parts, texts, parts_ids=None):
    """Ragged token ids (batch, None) of the prompts `parts[0] + texts[0] + parts[1] + ...`
    in the graph, as `tfllm chat` encodes them (`tfllm.tokenizers.chat_encoding.chat_pieces`):
    one pass over the whole prompt, except for rows where a text (from the request) holds a control
    token's text; there each text is tokenized as plain characters between the template's
    own pieces, so a request cannot forge turns.

    Args:
        parts: the template's constant pieces (one more than `texts`).
        texts: string tensors (batch,), the system text and the message.
        parts_ids: `piece_ids(tokenizer, parts)`, computed outside the graph.
    """
    joined = tf.strings.join([tf.convert_to_tensor(x, tf.string) for pair in zip(parts, texts)
                              for x in pair] + [tf.constant(parts[-1])])
    whole = tokenize_text(tokenizer, joined)
    if not hasattr(tokenizer, "tokenize_plain"):
        return whole
    batch = tf.shape(texts[0])[0]
    pieces = []
    for k, const in enumerate(parts_ids):
        row = tf.constant(np.asarray(const, np.int32).reshape(1, len(const)))
        pieces.append(tf.RaggedTensor.from_tensor(tf.tile(row, [batch, 1])))
        if k < len(texts):
            pieces.append(tf.cast(tokenizer.tokenize_plain(texts[k]), tf.int32))
    plain = tf.concat(pieces, axis=1)
    has = tf.reduce_any(tf.stack([control_rows(tokenizer, t) for t in texts]), axis=0)
    rows = tf.range(batch)
    return tf.gather(tf.concat([whole, plain], axis=0), tf.where(has, rows + batch, rows))


def control_rows(tokenizer, texts):
    """bool (batch,): which of the strings `texts` hold a control token's text
    (`has_control_text` in the graph)."""
    specials = [*getattr(tokenizer, "special_tokens", ()), BOS_MARK]
    pattern = "(?s).*(?:" + "|".join(re.escape(t) for t in specials) + ").*"
    return tf.strings.regex_full_match(texts, pattern)
