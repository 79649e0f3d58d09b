"""Sentence embeddings from any encoder run: imported sentence-transformers models (their
`TextEncoder`), masked-LM runs and encoder classifiers (their backbone, pooled)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfllm.errors import TfllmError



def text_encoder(model, pooling: str | None = None):
    """The `TextEncoder` of a loaded run: the run's own (with `pooling`, if given, in place
    of its pooling), or one around the bidirectional backbone of an MLM or classifier run.

    Args:
        model: a model from `tfllm.load`.
        pooling: "mean" or "cls"; None: the run's own, else mean.
    """
    from tfllm.models import TextEncoder

    backbone = getattr(model, "backbone", None)
    if backbone is None or backbone.causal:
        raise TfllmError("embeddings come from encoder runs (BERT-style, bidirectional); "
                         "this run is a causal language model")
    if isinstance(model, TextEncoder) and pooling in (None, model.pooling):
        return model
    # A classifier's "first" pooling reads the [CLS] position, the encoder's "cls".
    own = {"first": "cls"}.get(getattr(model, "pooling", None), getattr(model, "pooling", None))
    pooling = pooling or (own if own in ("mean", "cls") else "mean")
    if pooling not in ("mean", "cls"):
        raise TfllmError(f"--pooling must be mean or cls, got {pooling!r}")
    encoder = TextEncoder(backbone, pooling=pooling,
                          pad_id=getattr(model.tokenizer, "pad_id", 0))
    encoder.tokenizer = model.tokenizer
    return encoder


def embed_texts(encoder, texts, batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings (n, d_model) of `texts`, each encoded as the model was
    trained (`[CLS] text [SEP]`), padded to the longest text of its batch.

    Example:
        >>> enc = text_encoder(tfllm.load("runs/minilm"))  # doctest: +SKIP
        >>> embed_texts(enc, ["A man is eating food."]).shape  # doctest: +SKIP
        (1, 384)
    """
    from tfllm.tokenizers.packing import choose_seq_len, encode_texts

    texts = list(texts)
    if not texts:
        return np.zeros((0, encoder.backbone.d_model), np.float32)
    tok = encoder.tokenizer
    max_len = encoder.backbone.max_len
    out = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        seq_len = choose_seq_len(tok, batch, max_len, add_bos=True)
        inputs = encode_texts(tok, tf.constant(batch), seq_len, add_bos=True)
        out.append(np.asarray(encoder(inputs), np.float32))
    return np.concatenate(out)
