"""The BERT-style masked language model task: predict the tokens hidden behind `<mask>`."""

import keras
from keras import ops

from tfllm.models.causal_lm import LanguageModelTask, Perplexity


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLM(LanguageModelTask, keras.Model):
    """Masked LM on a bidirectional backbone, with BERT's prediction head.

    Called on `{"token_ids", "padding_mask", "mask_positions"}` it returns logits
    (batch, num_masks, vocab) at the masked positions only, so the vocabulary projection
    costs ~15% of a full one; without `mask_positions` it returns logits at every position
    (batch, seq, vocab). The head is BERT's: dense + GELU + LayerNorm, then the tied token
    embedding and an output bias. `compile()` with no arguments is the same recipe as
    `CausalLM`'s; loss and metrics (perplexity, accuracy) count masked tokens only, weighted
    by the `mask_weights` the data pipeline passes as sample weights.

    Args:
        backbone: a bidirectional `TransformerBackbone` (causal=False).

    Example:
        >>> mlm = MaskedLM.from_model_config(get_preset("bert-mini").replace(vocab_size=100))
        >>> mlm({"token_ids": ops.zeros((2, 16), "int32"),
        ...      "mask_positions": ops.zeros((2, 3), "int32")}).shape
        (2, 3, 100)
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if backbone.causal:
            raise ValueError("MaskedLM needs a bidirectional backbone (causal=False)")
        self.backbone = backbone
        self.tokenizer = None  # attached by tfllm.load(); not part of the saved model
        policy = backbone.dtype_policy
        self.transform = keras.layers.Dense(
            backbone.d_model, activation="gelu", name="head_transform", dtype=policy,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.transform_norm = keras.layers.LayerNormalization(
            epsilon=backbone.layer_norm_epsilon, name="head_norm", dtype=policy)
        # Built eagerly, as CausalLM: compile() and BackupAndRestore need the variables.
        self.build((None, None))

    def build(self, input_shape=None):
        if not self.backbone.built:  # a deserialized backbone arrives built
            self.backbone.build((None, None))
        hidden_shape = (None, None, self.backbone.d_model)
        self.transform.build(hidden_shape)
        self.transform_norm.build(hidden_shape)
        self.output_bias = self.add_weight(name="output_bias", shape=(self.backbone.vocab_size,),
                                           initializer="zeros")
        self.built = True

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            token_ids = inputs["token_ids"]
            padding_mask = inputs.get("padding_mask")
            mask_positions = inputs.get("mask_positions")
        else:
            token_ids, padding_mask, mask_positions = inputs, None, None
        hidden = self.backbone(token_ids, padding_mask=padding_mask, training=training)
        if mask_positions is not None:
            # (batch, num_masks, d_model)
            hidden = ops.take_along_axis(
                hidden, ops.expand_dims(ops.cast(mask_positions, "int32"), -1), axis=1)
        hidden = self.transform_norm(self.transform(hidden))
        logits = self.backbone.embedding.logits(hidden)
        return ops.cast(logits, "float32") + ops.cast(self.output_bias, "float32")

    def _default_loss(self):
        # Averaged over the masked tokens (the sample weights), not over all slots.
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                          reduction="mean_with_sample_weight")

    def _default_metrics(self):
        return {"weighted_metrics": [Perplexity(),
                                     keras.metrics.SparseCategoricalAccuracy("accuracy")]}
