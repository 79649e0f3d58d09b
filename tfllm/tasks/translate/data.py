"""Encoder-decoder pipelines for `fit`: (source, target) pairs to length-bucketed batches.

Each pair becomes `encoder_token_ids` = source + EOS, `decoder_token_ids` = BOS + target
and labels = target + EOS (weighted 1, padding 0). Pairs are grouped by length. With
`static_shapes` (XLA, TPUs) a batch is padded to one of a few fixed widths, so one step is
compiled per width; without, pairs are grouped two lengths to a bucket and a batch is
padded to its own longest pair, as PyTorch translation recipes do.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.data.windows import training_options
from tfllm.errors import DataError
from tfllm.models.translation import MIN_WIDTH, bucket_widths
from tfllm.tokenizers import placeholders

_SHUFFLE_BUFFER = 20_000


def encode_pairs(pairs, tokenizer, max_len: int, truncate: bool = False,
                 protect: bool = False):
    """`(encoded, cut)`: ids of each pair as (source + EOS, target) lists, and how many
    pairs were cut to fit.

    A side longer than `max_len` tokens (source with its EOS; target with its BOS) is an
    error naming the row, or with `truncate` is cut to fit (its end token kept).

    Args:
        pairs: (source, target) strings.
        tokenizer: a `SentencePieceTokenizer`.
        max_len: the model's context.
        truncate: cut long sides instead of raising.
        protect: replace placeholders by `tfllm.tokenizers.placeholders.SENTINEL` on both sides
            (the tokenizer must hold it as one piece).
    """
    eos = tokenizer.eos_id
    encoded, cut = [], 0
    for n, (source, target) in enumerate(pairs):
        if protect:
            source, target = placeholders.protect(source), placeholders.protect(target)
        src, tgt = tokenizer.encode(source), tokenizer.encode(target)
        if len(src) + 1 > max_len or len(tgt) + 1 > max_len:
            if not truncate:
                side, length = (("source", len(src) + 1) if len(src) + 1 > max_len
                                else ("target", len(tgt) + 1))
                raise DataError(
                    f"row {n + 1}: the {side} is {length} tokens, more than the model's "
                    f"context of {max_len}; pass --truncate to cut long rows, or use a model "
                    "with a longer max_len")
            cut += 1
            src, tgt = src[: max_len - 1], tgt[: max_len - 1]
        encoded.append((src + [eos], tgt))
    return encoded, cut


def _to_model_inputs(source, target_in, labels):
    inputs = {"encoder_token_ids": source, "decoder_token_ids": target_in}
    return inputs, labels, tf.cast(tf.not_equal(target_in, 0), tf.float32)


def make_seq2seq_dataset(encoded, tokenizer, max_len: int, batch_size: int, training: bool,
                         seed: int = 0, static_shapes: bool = True) -> tf.data.Dataset:
    """Batches of `(inputs, labels, weights)` for `Seq2SeqLM.fit`, bucketed by length.

    Training data is shuffled and repeats forever (the last partial batch of each bucket
    waits for the next pass). Evaluation data is one pass, partial batches padded with
    zero-weight rows to `batch_size` so that every batch of a bucket has one shape.

    Args:
        encoded: `(source ids + EOS, target ids)` lists from `encode_pairs`.
        tokenizer: supplies BOS/EOS/pad (pad must be 0).
        max_len: the model's context (the widest bucket).
        batch_size: pairs per batch (global).
        training: shuffle and repeat.
        seed: the shuffle seed.
        static_shapes: pad to `bucket_widths` (few shapes); else to each batch's longest
            pair (least padding, every width a new shape).
    """
    if not encoded:
        raise DataError("no pairs to train or evaluate on")
    if tokenizer.pad_id != 0:
        raise DataError(f"encoder-decoder batches pad with id 0; this tokenizer pads with "
                        f"{tokenizer.pad_id}")
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    sources = tf.ragged.constant([s for s, _ in encoded], dtype=tf.int32)
    targets = tf.ragged.constant([t for _, t in encoded], dtype=tf.int32, ragged_rank=1)
    ds = tf.data.Dataset.from_tensor_slices((sources, targets))

    def shift(source, target):
        return (source, tf.concat([[bos], target], 0), tf.concat([target, [eos]], 0))

    ds = ds.map(shift, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.repeat().shuffle(_SHUFFLE_BUFFER, seed=seed)
    # A bucket holds lengths below its boundary; the last boundary is one past max_len.
    boundaries = ([w + 1 for w in bucket_widths(max_len)] if static_shapes
                  else list(range(MIN_WIDTH + 1, max_len + 1, 2)) + [max_len + 1])
    ds = ds.bucket_by_sequence_length(
        lambda s, t, y: tf.maximum(tf.shape(s)[0], tf.shape(t)[0]),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        pad_to_bucket_boundary=static_shapes, drop_remainder=training)
    if not training:
        def fill(source, target_in, labels):
            missing = batch_size - tf.shape(source)[0]
            return tuple(tf.pad(x, [[0, missing], [0, 0]]) for x in (source, target_in, labels))
        ds = ds.map(fill)
    ds = ds.map(_to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(training_options())
