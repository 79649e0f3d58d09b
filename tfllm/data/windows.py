"""Token windows of text for `fit`: documents tokenized in-graph, joined with EOS between
them and cut into windows of a model's context (+1 for shifted targets); the causal-LM
batches of those windows (`make_lm_dataset`, what the lm task trains on and any causal LM
is scored on); the tf.data options every training pipeline uses. The masked-LM task
builds its batches on the same windows (tfllm/tasks/mlm/data.py).
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.errors import DataError

SHUFFLE_BUFFER = 10_000


def training_options() -> tf.data.Options:
    """tf.data options for the pipelines that feed `fit`: autotuner off, shard by batch.

    tf.data's autotuner left Keras `fit` partly idle on 2-vCPU machines, at one fixed step
    time whatever the model; with it off that never happened (benchmarks/README.md, "The
    idle spells"). These pipelines' batches are cheap to make, so there is little for it to
    tune.

    Elements keep their order (deterministic), so a seeded run sees the same batches.

    Example:
        >>> ds = tf.data.Dataset.range(4).with_options(training_options())
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    # Generated windows have no files to shard: multi-worker runs shard by batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return options


def lm_windows(texts: tf.data.Dataset, tokenizer, max_len: int, offset=0,
               start_id: int | None = None) -> tf.data.Dataset:
    """Tokenize documents in-graph, join them (EOS between), cut into (max_len + 1,) windows.

    Args:
        texts: dataset of scalar strings.
        tokenizer: a `SentencePieceTokenizer`.
        max_len: model context; windows hold one extra token for the shifted targets.
        offset: tokens to drop from the start (varies the window phase between passes).
        start_id: when set, every window is this id then `max_len` tokens of text (still
            max_len + 1 in all), and documents lose the BOS their tokenizer adds. For a
            model that only ever sees prompts starting with BOS (`bos_start`): Gemma 3
            270M's loss on tiny Shakespeare is 6.76 on windows cut mid-text, 4.35 on the
            same text after a BOS.
    """
    eos = tf.constant([tokenizer.eos_id], tf.int32)
    own_bos = start_id is not None and getattr(tokenizer, "add_bos", False)

    def tokenize(text):
        ids = tokenizer.tokenize(text)
        return tf.concat([ids[1:] if own_bos else ids, eos], axis=0)

    tokens = texts.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    tokens = tokens.skip(tf.cast(offset, tf.int64))
    if start_id is None:
        return tokens.batch(max_len + 1, drop_remainder=True)
    start = tf.constant([start_id], tf.int32)
    return tokens.batch(max_len, drop_remainder=True).map(
        lambda window: tf.concat([start, window], axis=0))


def bos_start(tokenizer) -> int | None:
    """The `start_id` for a tokenizer's windows: its BOS where it adds one, else None."""
    return tokenizer.bos_id if getattr(tokenizer, "add_bos", False) else None


def check_nonempty(texts: tf.data.Dataset, tokenizer, max_len: int, what: str) -> None:
    """Raise DataError if `texts` yields no full window of max_len + 1 tokens."""
    for _ in lm_windows(texts, tokenizer, max_len).take(1):
        return
    raise DataError(f"the {what} text is shorter than one window of {max_len + 1} tokens; "
                    "use more text or a model with a shorter context")


def shifted_passes(texts: tf.data.Dataset, tokenizer, window: int, max_len: int,
                   seed: int, start_id: int | None = None) -> tf.data.Dataset:
    """Windows of `window` (+1) tokens of endless passes over `texts`, each pass starting
    at a seeded random offset below `max_len`, so windows differ between passes
    (`start_id`: as `lm_windows` takes it)."""
    def one_pass(epoch):
        offset = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), epoch]),
                                             maxval=max_len, dtype=tf.int64)
        return lm_windows(texts, tokenizer, window, offset, start_id)

    return tf.data.Dataset.range(1 << 62).flat_map(one_pass)


def _split_xy(window):
    return window[..., :-1], window[..., 1:]


def make_lm_dataset(texts: tf.data.Dataset, tokenizer, max_len: int, batch_size: int,
                    training: bool, seed: int = 0) -> tf.data.Dataset:
    """Batches of `(inputs, targets)`, each (batch_size, max_len) int32, targets shifted by one.

    Training data repeats forever; each pass starts at a seeded random offset below
    `max_len` and is shuffled, so windows differ between passes. Evaluation data is one
    ordered pass (the last partial batch kept). Where the tokenizer adds BOS (imported
    Llama, Mistral, Gemma), every window starts with it, as every prompt the model sees
    does (`lm_windows`'s `start_id`).

    Args:
        texts: dataset of scalar strings (see `Corpus`).
        tokenizer: a `SentencePieceTokenizer`.
        max_len: model context length.
        batch_size: global batch size.
        training: repeat, offset and shuffle when True.
        seed: seed for offsets and shuffling.
    """
    start = bos_start(tokenizer)
    if training:
        ds = shifted_passes(texts, tokenizer, max_len, max_len, seed, start)
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed).batch(batch_size, drop_remainder=True)
    else:
        ds = lm_windows(texts, tokenizer, max_len, start_id=start).batch(batch_size)
    ds = ds.map(_split_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(training_options())
