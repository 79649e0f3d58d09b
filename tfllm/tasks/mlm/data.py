"""The masked-LM task's batches: BERT-masked token windows."""

from __future__ import annotations

import math

import tensorflow as tf

from tfllm.data.windows import SHUFFLE_BUFFER, lm_windows, shifted_passes, training_options
from tfllm.errors import DataError

MLM_SELECTION_RATE = 0.15
_VALIDATION_MASK_SEED = 0


def make_mlm_dataset(texts: tf.data.Dataset, tokenizer, max_len: int, batch_size: int,
                     training: bool, seed: int = 0) -> tf.data.Dataset:
    """Masked-LM batches: `({token_ids, padding_mask, mask_positions}, mask_ids, mask_weights)`.

    Documents are packed (EOS between them, as RoBERTa does) into windows of max_len - 1
    tokens behind a `[CLS]`-style BOS. BERT's masking: 15% of the tokens are selected
    (never BOS or padding), 80% of those become `<mask>`, 10% a random token, 10% stay.
    Masks are drawn from (seed, window number) alone; validation masks from a fixed seed.

    Args:
        texts: dataset of scalar strings.
        tokenizer: a `SentencePieceTokenizer` trained with `mask_token=True`.
        max_len: model context length.
        batch_size: global batch size.
        training: repeat, offset and shuffle when True.
        seed: seed for offsets, shuffling and training masks.
    """
    if tokenizer.mask_id is None:
        raise DataError("masked-LM data needs a tokenizer with a <mask> token "
                        "(SentencePieceTokenizer.train(..., mask_token=True))")
    if max_len < 4:
        raise DataError(f"masked-LM windows need a context of at least 4 tokens, got {max_len}")
    bos = tf.constant([tokenizer.bos_id], tf.int32)

    def add_cls(window):
        return tf.concat([bos, window[:-1]], axis=0)  # (max_len,)

    # Every window's masks are a function of (seed, window number) alone, so validation
    # scores the same task in every process and at every batch size (its seed is fixed:
    # runs trained with different seeds are evaluated alike), and a seeded run is
    # reproducible.
    mask = _bert_masking(tokenizer.vocab_size, tokenizer.mask_id,
                         [tokenizer.pad_id, tokenizer.bos_id], max_len,
                         seed if training else _VALIDATION_MASK_SEED)
    # lm_windows yields max_len - 1 + 1 tokens; the spare last one is dropped in add_cls.
    if training:
        ds = shifted_passes(texts, tokenizer, max_len - 1, max_len, seed).map(add_cls)
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed).enumerate().map(
            mask, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True)
    else:
        ds = lm_windows(texts, tokenizer, max_len - 1).map(add_cls).enumerate().map(
            mask, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if not training:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE).with_options(training_options())


def _bert_masking(vocab_size, mask_id, unselectable_ids, max_len, seed):
    """BERT's masking of one window as a pure function of (seed, window number).

    The selection rule is tf-text's `RandomItemSelector` (ceil(15% of the selectable
    tokens) per row, at most `max_selections`) and the values rule its `MaskValuesChooser`
    (80% `<mask>`, 10% a uniform random token, 10% unchanged), but drawn with stateless
    ops: tf-text's draw from TensorFlow's stateful generator, whose numbers depend on
    which ops the process happened to create before.
    """
    # A window has at most max_len - 1 selectable tokens (BOS is not), so no row ever needs
    # more slots than this; the min() below only absorbs float rounding at exact multiples.
    max_selections = max(1, math.ceil(MLM_SELECTION_RATE * (max_len - 1)))

    def mask(window_number, window):
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.cast(seed, tf.int64), window_number]), 3)
        length = tf.shape(window)[0]
        selectable = tf.reduce_all(window[:, None] != tf.constant(unselectable_ids, window.dtype),
                                   axis=-1)  # (seq,)
        count = tf.math.ceil(tf.reduce_sum(tf.cast(selectable, tf.float32)) * MLM_SELECTION_RATE)
        count = tf.minimum(tf.cast(count, tf.int32), max_selections)
        # A uniformly random subset: the `count` selectable positions with the lowest scores.
        scores = tf.where(selectable, tf.random.stateless_uniform([length], seeds[0]), 2.0)
        order = tf.math.top_k(-scores, k=max_selections).indices  # (max_selections,)
        weights = tf.range(max_selections) < count  # used slots first, as tf-text pads
        positions = tf.where(weights, tf.sort(tf.where(weights, order, length)), 0)
        originals = tf.gather(window, positions)
        draw = tf.random.stateless_uniform([max_selections], seeds[1])
        random_ids = tf.random.stateless_uniform([max_selections], seeds[2], maxval=vocab_size,
                                                 dtype=window.dtype)
        values = tf.where(draw < 0.8, tf.cast(mask_id, window.dtype),
                          tf.where(draw < 0.9, random_ids, originals))
        used = tf.where(weights)  # (count, 1): only real slots write into the window
        masked = tf.tensor_scatter_nd_update(window, tf.gather_nd(positions, used)[:, None],
                                             tf.gather_nd(values, used))
        x = {"token_ids": masked, "padding_mask": tf.ones_like(window, tf.bool),
             "mask_positions": positions}
        return x, tf.where(weights, originals, 0), tf.cast(weights, tf.float32)

    return mask
