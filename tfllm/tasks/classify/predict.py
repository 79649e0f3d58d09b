"""Using a classifier run: loading it, encoding its inputs, class probabilities."""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from tfllm import runs
from tfllm.errors import DataError, RunDirError
from tfllm.tokenizers.packing import encode_texts, round_seq_len, split_pairs, token_counts


def load_classifier(run_dir: str, weights: str = "final"):
    """`(model, task_info)` of a classifier run (RunDirError for other runs)."""
    stored = runs.read_run_config(run_dir)
    if stored.get("objective") != "classify":
        raise RunDirError(f"{run_dir} is not a classifier run (objective "
                          f"{stored.get('objective', 'clm')!r}); fine-tune one with "
                          "tfllm finetune --task classify")
    return runs.load(run_dir, weights=weights), stored["task"]


def pair_mode(task_info):
    """True: the classifier reads sentence pairs; False: single texts; None: either (an
    imported checkpoint, which does not say what it was fine-tuned on)."""
    if "pair" not in task_info:
        return False  # runs from before sentence pairs
    return None if task_info["pair"] is None else bool(task_info["pair"])


def check_pairs(task_info, given: bool, run_dir="the run"):
    """DataError when sentence pairs go to a single-text classifier, or the reverse."""
    mode = pair_mode(task_info)
    if mode is True and not given:
        raise DataError(f"{run_dir} classifies sentence pairs: give each text its pair "
                        "(--text-pair, --pair-column, or text<TAB>pair lines)")
    if given and mode is False:
        raise DataError(f"{run_dir} classifies single texts, not pairs; drop --text-pair / "
                        "--pair-column, or fine-tune a pair classifier with --pair-column")


def uses_token_types(model, task_info) -> bool:
    """Whether a fixed-input export (TFLite, ONNX) of the classifier takes `token_type_ids`:
    a backbone with token types (BERT) serving sentence pairs (runs fine-tuned on pairs,
    imported checkpoints)."""
    return bool(model.backbone.type_vocab_size) and pair_mode(task_info) is not False


def encode_rows(tokenizer, task_info, texts, token_types=False) -> dict:
    """{"token_ids"[, "token_type_ids"]}: int32 numpy (n, seq_len) of texts (strings or
    `(text, pair)` tuples) padded to the run's length, as the exporters feed them."""
    first, pairs = split_pairs(texts)
    inputs = encode_texts(tokenizer, tf.constant(first), task_info["seq_len"],
                          task_info["add_bos"], None if pairs is None else tf.constant(pairs))
    out = {"token_ids": inputs["token_ids"].numpy()}
    if token_types:
        types = inputs.get("token_type_ids")
        out["token_type_ids"] = (np.zeros_like(out["token_ids"]) if types is None
                                 else types.numpy().astype(np.int32))
    return out


def predict_proba(model, task_info, texts, batch_size=64, pairs=None) -> np.ndarray:
    """Class probabilities (n, num_classes) for a list of strings (and, for a sentence-pair
    classifier, the list of their second texts).

    Rows are sorted by length and each batch padded to its longest row (rounded up to 8
    tokens): padding is masked, so results do not depend on it, and short texts cost a
    fraction of the run's full length.
    """
    check_pairs(task_info, pairs is not None)
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(pairs)} pairs; give one pair per text")
    if not texts:
        return np.zeros((0, model.num_classes), np.float32)
    tokenizer, add_bos, max_len = model.tokenizer, task_info["add_bos"], model.backbone.max_len
    counts = token_counts(tokenizer, list(texts), add_bos, pairs)
    order = np.argsort(counts, kind="stable")
    forward = _forward_fn(model)
    out = np.zeros((len(texts), model.num_classes), np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        seq_len = round_seq_len(max(counts[i] for i in rows), max_len)
        inputs = encode_texts(tokenizer, tf.constant([texts[i] for i in rows]), seq_len,
                              add_bos, None if pairs is None else
                              tf.constant([pairs[i] for i in rows]))
        out[rows] = forward(inputs).numpy()
    return out


def _forward_fn(model):
    """The classifier's softmax as one graph for every batch shape (traced per shape once,
    then for any shape)."""
    fn = _FORWARD.get(model)
    if fn is None:
        fn = tf.function(lambda inputs: tf.nn.softmax(model(inputs, training=False), axis=-1),
                         reduce_retracing=True)
        _FORWARD[model] = fn
    return fn


# Kept beside the model, not on it: Keras would track a tf.function attribute as state.
_FORWARD = weakref.WeakKeyDictionary()
