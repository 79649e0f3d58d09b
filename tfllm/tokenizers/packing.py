"""Encoder inputs: texts (or sentence pairs) to the token ids a classifier or an encoder
reads.

One encoding, in-graph, shared by the classify and embed tasks' fine-tuning, evaluation,
inference and exports:

    single text   [bos] a [sep]               token types 0 ... 0
    pair          [bos] a SEP b [sep]         token types 0 ... 0 1 ... 1

`[bos]` is the `[CLS]`-style first token of encoders (`add_bos`); `[sep]` is BERT's
`[SEP]` where the tokenizer has one (`sep_id`); SEP between the texts of a pair is
`sep_id`, else the tokenizer's end-of-text id. A pair longer than the sequence is cut as
Hugging Face's `longest_first` cuts it, so imported BERT classifiers see what they were
trained on.

`seq_len` here is a padded input width (a batch's, or the one a classifier run was
fine-tuned and is exported at, config.json's "task" "seq_len"), at most the model's
context `max_len` and often much shorter: a different value, hence its own name.
"""

from __future__ import annotations

import tensorflow as tf

SEQ_MULTIPLE = 8


def added_tokens(tokenizer, add_bos: bool, pair: bool = False) -> int:
    """How many special tokens the classification encoding adds to a text (or a pair)."""
    has_sep = getattr(tokenizer, "sep_id", None) is not None
    return int(add_bos) + int(has_sep) + int(pair)


def _separator(tokenizer) -> int:
    sep = getattr(tokenizer, "sep_id", None)
    return int(tokenizer.eos_id if sep is None else sep)


def _ragged_ids(tokenizer, texts) -> tf.RaggedTensor:
    ids = tokenizer.tokenize(texts)
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    return tf.cast(ids, tf.int32)


def longest_first(len_a, len_b, budget):
    """Lengths (keep_a, keep_b) that fit `budget` tokens, as Hugging Face `tokenizers`'
    `longest_first` truncation chooses them: nothing is cut when both fit; when the shorter
    text fits in half the budget it is kept whole and the longer cut; otherwise both get
    half, the longer text the odd token (the second text when they are equally long).

    tf-text's `RoundRobinTrimmer` gives the first text the odd token always, which differs
    from what BERT checkpoints were fine-tuned on for half of the odd budgets.

    Example:
        >>> [int(x) for x in longest_first(tf.constant(9), tf.constant(4), 7)]
        [3, 4]
    """
    budget = tf.cast(budget, tf.int32)
    shorter = tf.minimum(len_a, len_b)
    half, rest = budget // 2, budget - budget // 2
    a_longer = len_a > len_b
    fits = len_a + len_b <= budget
    shorter_whole = 2 * shorter <= budget
    keep_a = tf.where(fits, len_a, tf.where(
        shorter_whole, tf.where(a_longer, budget - shorter, len_a),
        tf.where(a_longer, rest, half)))
    keep_b = tf.where(fits, len_b, tf.where(
        shorter_whole, tf.where(a_longer, len_b, budget - shorter),
        tf.where(a_longer, half, rest)))
    return keep_a, keep_b


def pack(tokenizer, texts, seq_len, add_bos: bool, pairs=None):
    """Ragged `(token_ids, token_type_ids)` (batch, <= seq_len) of the classification
    encoding of `texts` (string (batch,)) and, for sentence pairs, `pairs` (string (batch,)).

    Texts longer than the sequence are cut at their end; pairs by `longest_first`.
    """
    ids_a = _ragged_ids(tokenizer, texts)
    n = ids_a.nrows(out_type=tf.int32)
    sep_id = getattr(tokenizer, "sep_id", None)

    def column(token):  # (batch, 1)
        return tf.fill(tf.stack([n, 1]), tf.constant(token, tf.int32))

    head = [column(tokenizer.bos_id)] if add_bos else []
    tail = [column(sep_id)] if sep_id is not None else []
    if pairs is None:
        room = seq_len - added_tokens(tokenizer, add_bos)
        ids = tf.concat([*head, ids_a[:, :room], *tail], axis=1)
        return ids, tf.zeros_like(ids)
    ids_b = _ragged_ids(tokenizer, pairs)
    room = seq_len - added_tokens(tokenizer, add_bos, pair=True)
    keep_a, keep_b = longest_first(tf.cast(ids_a.row_lengths(), tf.int32),
                                   tf.cast(ids_b.row_lengths(), tf.int32), room)
    a = tf.ragged.boolean_mask(ids_a, tf.ragged.range(ids_a.row_lengths()) <
                               tf.cast(keep_a, ids_a.row_splits.dtype)[:, None])
    b = tf.ragged.boolean_mask(ids_b, tf.ragged.range(ids_b.row_lengths()) <
                               tf.cast(keep_b, ids_b.row_splits.dtype)[:, None])
    first = tf.concat([*head, a, column(_separator(tokenizer))], axis=1)
    second = tf.concat([b, *tail], axis=1)
    ids = tf.concat([first, second], axis=1)
    types = tf.concat([tf.zeros_like(first), tf.ones_like(second)], axis=1)
    return ids, types


def encode_texts(tokenizer, texts, seq_len, add_bos: bool, pairs=None):
    """Strings (batch,) -> `{token_ids, padding_mask}` (batch, seq_len), in-graph; with
    `pairs` (batch,) also `token_type_ids`.

    Evaluation, `classify` and the SavedModel all encode through here.

    Example:
        >>> encode_texts(tok, tf.constant(["a fine film"]), 16, True)  # doctest: +SKIP
    """
    ids, types = pack(tokenizer, texts, seq_len, add_bos, pairs)
    n = tf.shape(texts)[0]
    shape = tf.stack([n, seq_len])
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    # (batch, seq_len)
    inputs = {"token_ids": ids.to_tensor(tokenizer.pad_id, shape=shape),
              "padding_mask": tf.sequence_mask(lengths, seq_len)}
    if pairs is not None:
        inputs["token_type_ids"] = types.to_tensor(0, shape=shape)
    return inputs


def encode_to_longest(tokenizer, texts, max_len, add_bos: bool, pairs=None):
    """As `encode_texts`, padded to the longest row of the batch (at most max_len): one
    tokenization serves both the length and the ids (serving's hot path)."""
    ids, types = pack(tokenizer, texts, max_len, add_bos, pairs)
    n = tf.shape(texts)[0]
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    seq_len = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], axis=0)), 1)
    shape = tf.stack([n, seq_len])
    # (batch, longest)
    inputs = {"token_ids": ids.to_tensor(tokenizer.pad_id, shape=shape),
              "padding_mask": tf.sequence_mask(lengths, seq_len)}
    if pairs is not None:
        inputs["token_type_ids"] = types.to_tensor(0, shape=shape)
    return inputs


def split_pairs(texts):
    """(first texts, second texts or None) of rows whose texts are strings or
    `(text, pair)` tuples (`tfllm.data.LabeledData` with a pair column)."""
    texts = list(texts)
    if texts and isinstance(texts[0], tuple):
        return [a for a, _ in texts], [b for _, b in texts]
    return texts, None


def token_counts(tokenizer, texts, add_bos: bool, pairs=None, batch_size=4096):
    """Encoded length of each row (special tokens included, nothing cut), as a list."""
    counts = []
    for start in range(0, len(texts), batch_size):
        n = _ragged_ids(tokenizer, tf.constant(texts[start:start + batch_size])).row_lengths()
        if pairs is not None:
            n += _ragged_ids(tokenizer, tf.constant(pairs[start:start + batch_size])
                             ).row_lengths()
        counts += [int(c) for c in n.numpy()]
    extra = added_tokens(tokenizer, add_bos, pairs is not None)
    return [c + extra for c in counts]


def round_seq_len(longest: int, max_len: int) -> int:
    """`longest` rounded up to a multiple of 8, at most max_len."""
    return min(max_len, -(-longest // SEQ_MULTIPLE) * SEQ_MULTIPLE)


def choose_seq_len(tokenizer, texts, max_len: int, add_bos: bool, pairs=None) -> int:
    """The longest row (+ its special tokens) rounded up to a multiple of 8, at most
    max_len."""
    return round_seq_len(max(token_counts(tokenizer, list(texts), add_bos, pairs)), max_len)
