"""Sentence embeddings: a bidirectional backbone, pooled over the text, L2-normalized."""

import keras
from keras import ops

from tfllm.models.backbone import split_inputs, with_backbone

POOLINGS = ("mean", "cls")


@keras.saving.register_keras_serializable(package="tfllm")
class TextEncoder(keras.Model):
    """Token ids (batch, seq) -> unit-length embeddings (batch, d_model), float32.

    `pooling="mean"` averages the hidden states of the real tokens (padding excluded), as
    sentence-transformers models such as all-MiniLM-L6-v2 do; `"cls"` takes the first
    token's (`[CLS]`). Inputs are right-padded: a dict with `token_ids`, `padding_mask` and
    optionally `token_type_ids`, or bare `token_ids` (mask `token_ids != pad_id`).

    Args:
        backbone: a bidirectional `TransformerBackbone`.
        pooling: "mean" or "cls".
        normalize: divide each embedding by its L2 norm (cosine similarity is then a dot
            product).
        pad_id: the padding token id.

    Example:
        >>> bb = TransformerBackbone.from_model_config(get_preset("bert-mini").replace(vocab_size=100))
        >>> TextEncoder(bb)(ops.ones((2, 16), "int32")).shape
        (2, 256)
    """

    def __init__(self, backbone, pooling="mean", normalize=True, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.pad_id = pad_id
        self.tokenizer = None  # attached by tfllm.load(); not part of the saved model
        self.build((None, None))

    def build(self, input_shape=None):
        if not self.backbone.built:
            self.backbone.build((None, None))
        self.built = True

    def call(self, inputs, training=None):
        token_ids, padding_mask, token_type_ids = split_inputs(inputs, self.pad_id)
        hidden = ops.cast(self.backbone(token_ids, padding_mask=padding_mask,
                                        token_type_ids=token_type_ids, training=training),
                          "float32")
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]  # (batch, d_model)
        else:
            weights = ops.cast(padding_mask, "float32")[:, :, None]  # (batch, seq, 1)
            pooled = ops.sum(hidden * weights, axis=1) / ops.maximum(
                ops.sum(weights, axis=1), 1e-9)  # (batch, d_model)
        if self.normalize:
            pooled = pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "pooling": self.pooling, "normalize": self.normalize, "pad_id": self.pad_id,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone(config))
