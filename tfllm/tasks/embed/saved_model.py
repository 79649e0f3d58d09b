"""The embed task's SavedModel signatures and their fresh-process check.

    serving_default, embed
        inputs  text (string [batch])
        outputs embedding (float32 [batch, d_model]): unit length, as `tfllm embed`;
                num_tokens (int32 [batch]): the tokens embedded, special ones included
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.signatures.checks import (DEFAULT_MAX_BATCH, ExportError, after, batch_checks,
                                     cut_text, fresh_process_outputs)
from tfllm.tokenizers import max_text_bytes

SAMPLE_TEXTS = ["a gripping , funny and moving film", "dull and lifeless", "x",
                "it is what it is"]


def signatures(model, config, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """`(signatures, check)`: the task's SavedModel hook (see `tfllm.tasks.base.Task`)."""
    sigs = encoder_signatures(model, model.tokenizer, jit_compile, max_batch)

    def check(path, run_dir):
        verify_embeddings(path, model)
        return "embeddings as tfllm embed"

    return sigs, check


def encoder_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """Endpoint functions of an encoder run (an imported sentence-transformers BERT): text
    -> unit-length embedding, as `tfllm embed` computes it.

    `jit_compile` is accepted for the builders' common signature and not used.
    """
    from tfllm.tokenizers.packing import encode_to_longest

    max_len = model.backbone.max_len
    text_bytes = max_text_bytes(tokenizer, max_len)

    def embed(text):
        text = cut_text(after(batch_checks(max_batch, text), text), text_bytes)
        inputs = encode_to_longest(tokenizer, text, max_len, add_bos=True)
        return {"embedding": model(inputs),
                "num_tokens": tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32), 1)}

    spec = [tf.TensorSpec([None], tf.string, name="text")]
    return {"serving_default": (embed, spec), "embed": (embed, spec)}


def verify_embeddings(path, model, texts=SAMPLE_TEXTS):
    """Embeddings of a fresh-process reload must equal `tfllm embed`'s (within 1e-4)."""
    import numpy as np

    from tfllm.tasks.embed.embeddings import embed_texts

    expected = embed_texts(model, texts)
    got, = fresh_process_outputs(path, [("embed", "embedding", {"text": texts})])
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
        raise ExportError(f"SavedModel embed output {got.shape} differs from tfllm embed's "
                          f"{expected.shape} (or by more than 1e-4)")
    return got
