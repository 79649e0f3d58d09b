"""Sequence classification: a pooled token of a backbone, dropout, a dense head."""

import keras
from keras import ops

from tfllm.models.backbone import TransformerBackbone, split_inputs, with_backbone

POOLINGS = ("first", "last", "mean")


@keras.saving.register_keras_serializable(package="tfllm")
class SequenceClassifier(keras.Model):
    """Token ids (batch, seq) -> class logits (batch, classes), float32.

    `pooling="first"` reads the first token (the `[CLS]`-style BOS of an encoder), through
    the backbone's pooler where it has one (BERT); `"last"` reads the last non-padding
    token, the only one a causal LM lets see the whole text; `"mean"` averages the real
    tokens, as sentence-transformers encoders were trained to pool. Inputs are right-padded: a dict
    with `token_ids`, `padding_mask` and (sentence pairs) `token_type_ids`, or bare
    `token_ids`, whose mask is then `token_ids != pad_id` (the TFLite export feeds bare
    ids). The class names are part of the model, so a `.keras` file knows its labels.

    Args:
        backbone: a `TransformerBackbone` (pretrained or fresh).
        class_names: label names, index i is class i (at least two).
        pooling: "first", "last" or "mean".
        dropout: dropout on the pooled vector before the head.
        pad_id: the padding token id.

    Example:
        >>> bb = TransformerBackbone.from_model_config(get_preset("bert-mini").replace(vocab_size=100))
        >>> clf = SequenceClassifier(bb, ["neg", "pos"])
        >>> clf(ops.ones((2, 16), "int32")).shape
        (2, 2)
    """

    def __init__(self, backbone, class_names, pooling="first", dropout=0.1, pad_id=0,
                 **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        class_names = [str(c) for c in class_names]
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be at least two distinct names, got {class_names}")
        self.backbone = backbone
        self.class_names = class_names
        self.pooling = pooling
        self.dropout = dropout
        self.pad_id = pad_id
        self.tokenizer = None  # attached by tfllm.load(); not part of the saved model
        self.head_dropout = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(
            len(class_names), name="head", dtype=backbone.dtype_policy,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.build((None, None))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self, input_shape=None):
        if not self.backbone.built:
            self.backbone.build((None, None))
        self.head.build((None, self.backbone.d_model))
        self.built = True

    def call(self, inputs, training=None):
        token_ids, padding_mask, token_type_ids = split_inputs(inputs, self.pad_id)
        hidden = self.backbone(token_ids, padding_mask=padding_mask,
                               token_type_ids=token_type_ids, training=training)
        if self.pooling == "first":
            pooled = self.backbone.pool(hidden)  # (batch, d_model)
        elif self.pooling == "mean":
            mask = ops.cast(padding_mask, hidden.dtype)[:, :, None]  # (batch, seq, 1)
            pooled = ops.sum(hidden * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)
        else:
            lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=1)
            # A one-hot contraction instead of a batched gather: it converts to every
            # export target (TFLite int8 included) as a plain matmul.
            pick = ops.one_hot(ops.maximum(lengths - 1, 0), ops.shape(token_ids)[1],
                               dtype=hidden.dtype)  # (batch, seq)
            pooled = ops.einsum("bs,bsd->bd", pick, hidden)  # (batch, d_model)
        pooled = self.head_dropout(pooled, training=training)
        return ops.cast(self.head(pooled), "float32")

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "class_names": list(self.class_names), "pooling": self.pooling,
                "dropout": self.dropout, "pad_id": self.pad_id, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone(config))


def copy_backbone(backbone, dropout=None, name="backbone"):
    """A new backbone with `backbone`'s architecture and weights, optionally other dropout.

    Fine-tuning builds its classifier around a copy so the pretrained task model (and its
    head) can be dropped, and so the classifier's dropout can differ from pretraining's.

    Args:
        backbone: the pretrained `TransformerBackbone`.
        dropout: dropout rate of the copy (None: keep the original's).
        name: layer name of the copy.
    """
    if not backbone.built:
        backbone.build((None, None))
    config = backbone.get_config()
    config["name"] = name
    if dropout is not None:
        config["dropout"] = dropout
    copy = TransformerBackbone.from_config(config)
    copy.build((None, None))
    copy.set_weights(backbone.get_weights())
    return copy
