"""The classify task's SavedModel signatures and their fresh-process check.

    serving_default, classify
        inputs  text (string [batch]); sentence-pair classifiers also text_pair
                (string [batch]), the second text of each row
        outputs probabilities (float32 [batch, classes]), label (int32 [batch]),
                label_name (string [batch])

An imported Hugging Face classifier, which may have been fine-tuned on either, gets the
single-text `classify` and the pair form as `classify_pair`.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm import runs
from tfllm.signatures.checks import (DEFAULT_MAX_BATCH, ExportError, after, batch_checks,
                                     cut_text, fresh_process_outputs)
from tfllm.tokenizers import max_text_bytes


def signatures(model, config, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """`(signatures, check)`: the task's SavedModel hook (see `tfllm.tasks.base.Task`)."""
    model.task_info = config["task"]
    sigs = classifier_signatures(model, model.tokenizer, jit_compile, max_batch)

    def check(path, run_dir):
        verify_classifier(run_dir, path, model=model)
        return "probabilities as the Keras classifier"

    return sigs, check


def classifier_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """Endpoint functions of a classifier run: text (and text_pair, for sentence-pair
    classifiers) -> probabilities, label, label_name.

    A run fine-tuned on pairs answers `classify(text, text_pair)`; one fine-tuned on single
    texts `classify(text)`; an imported checkpoint (which does not say) both, the pair form
    as `classify_pair`. `jit_compile` is accepted for the builders' common signature and
    not used: the one forward pass runs as TensorFlow ops, so TF Serving needs no XLA.
    """
    from tfllm.tasks.classify.predict import pair_mode
    from tfllm.tokenizers.packing import encode_to_longest

    task = model.task_info
    names = tf.constant(model.class_names)
    max_len = model.backbone.max_len
    text_bytes = max_text_bytes(tokenizer, max_len)

    def run(text, text_pair=None):
        pair = text_pair is not None
        others = [("text_pair", text_pair)] if pair else []
        checked = after(batch_checks(max_batch, text, *others), text, *(
            [text_pair] if pair else []))
        text, text_pair = checked if pair else (checked, None)
        text = cut_text(text, text_bytes)
        text_pair = None if text_pair is None else cut_text(text_pair, text_bytes)
        # Padded to the longest row of the request (masked: the padding length does not
        # change the result), at most the model's context. The run's tokenizer object adds
        # the checkpoint's own BOS where it has one.
        inputs = encode_to_longest(tokenizer, text, max_len, task["add_bos"], pairs=text_pair)
        probabilities = tf.nn.softmax(model(inputs), axis=-1)
        label = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "label": label,
                "label_name": tf.gather(names, label)}

    def classify(text):
        return run(text)

    def classify_pair(text, text_pair):
        return run(text, text_pair)

    single = (classify, [tf.TensorSpec([None], tf.string, name="text")])
    pair = (classify_pair, [tf.TensorSpec([None], tf.string, name="text"),
                            tf.TensorSpec([None], tf.string, name="text_pair")])
    mode = pair_mode(task)
    if mode is True:
        return {"serving_default": pair, "classify": pair}
    if mode is False:
        return {"serving_default": single, "classify": single}
    return {"serving_default": single, "classify": single, "classify_pair": pair}


SAMPLE_TEXTS = ["a gripping , funny and moving film", "dull and lifeless", "x",
                "it is what it is"]


SAMPLE_PAIRS = ["a film", "it is not", "x", "what it is and what it is not"]


def verify_classifier(run_dir, path, texts=SAMPLE_TEXTS, model=None):
    """Labels and probabilities of a fresh-process reload must match the Keras classifier
    (on sample pairs too, for pair classifiers and imported ones)."""
    import numpy as np

    from tfllm.tasks.classify.predict import load_classifier, pair_mode, predict_proba

    if model is None:
        model, _ = load_classifier(run_dir)
    task = runs.read_run_config(run_dir)["task"]
    mode = pair_mode(task)
    checks = []  # (signature, pairs or None)
    if mode is not True:
        checks.append(("classify", None))
    if mode is not False:
        checks.append(("classify" if mode else "classify_pair", SAMPLE_PAIRS[:len(texts)]))
    calls = [(signature, "probabilities",
              {"text": texts, **({"text_pair": pairs} if pairs is not None else {})})
             for signature, pairs in checks]
    for (signature, pairs), got in zip(checks, fresh_process_outputs(path, calls)):
        expected = predict_proba(model, task, texts, pairs=pairs)
        if not np.array_equal(got.argmax(1), expected.argmax(1)) or \
                not np.allclose(got, expected, atol=1e-4):
            raise ExportError(f"SavedModel {signature} output differs from the Keras "
                              f"classifier: {got.tolist()} != {expected.tolist()}")
    return got
