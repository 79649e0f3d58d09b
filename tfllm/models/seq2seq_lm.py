"""The encoder-decoder task: source and target ids in, next-target-token logits out."""

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.models.causal_lm import LanguageModelTask, Perplexity
from tfllm.models.seq2seq_backbone import Seq2SeqBackbone
from tfllm.models.backbone import with_backbone


@keras.saving.register_keras_serializable(package="tfllm")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy from logits with label smoothing.

    Keras' sparse cross-entropy has no `label_smoothing`, and the one-hot form would
    materialize (batch, seq, vocab) labels. The same target as Keras' categorical
    smoothing: `(1 - s) * onehot + s / vocab`, so the loss is
    `(1 - s) * nll + s * mean_v(-log p_v)`.

    Args:
        label_smoothing: s in [0, 1).
        reduction: as `keras.losses.Loss` (default: mean over the sample weights, so
            padding with weight 0 does not count).
    """

    def __init__(self, label_smoothing=0.1, reduction="mean_with_sample_weight",
                 name="smoothed_sparse_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.take_along_axis(logp, ops.expand_dims(ops.cast(y_true, "int32"), -1),
                                   axis=-1)[..., 0]
        if not self.label_smoothing:
            return nll
        return (1.0 - self.label_smoothing) * nll - self.label_smoothing * ops.mean(logp, -1)

    def get_config(self):
        return {"label_smoothing": self.label_smoothing, "reduction": self.reduction,
                "name": self.name}


@keras.saving.register_keras_serializable(package="tfllm")
class Seq2SeqLM(LanguageModelTask, keras.Model):
    """Encoder-decoder LM: `model(inputs)` -> target logits (batch, tgt_len, vocab), float32.

    `inputs` is a dict: `encoder_token_ids` (batch, src_len), `decoder_token_ids`
    (batch, tgt_len) (BOS, then the target shifted right) and optionally
    `encoder_padding_mask` (default `encoder_token_ids != pad_id`). The labels are the
    target followed by EOS, weighted 0 on padding. `compile()` with no arguments is tfllm's
    recipe (AdamW, warmup + cosine) with label-smoothed cross-entropy and perplexity and
    token accuracy over the real target tokens. `generate` translates.

    Args:
        backbone: a `Seq2SeqBackbone`.
        label_smoothing: of the default loss (0.1, the original Transformer's).
        pad_id: the padding id of the tokenizer.
        protect_placeholders: the model was trained with placeholders replaced by
            `tfllm.tokenizers.placeholders.SENTINEL`; translating (`generate`, the exports) then
            protects the source's and restores them in the output.

    Example:
        >>> cfg = get_preset("transformer-mt-small").replace(vocab_size=100)
        >>> mt = Seq2SeqLM.from_model_config(cfg)
        >>> mt({"encoder_token_ids": ops.ones((2, 7), "int32"),
        ...     "decoder_token_ids": ops.ones((2, 5), "int32")}).shape
        (2, 5, 100)
    """

    def __init__(self, backbone, label_smoothing=0.1, pad_id=0, protect_placeholders=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.label_smoothing = label_smoothing
        self.pad_id = pad_id
        self.protect_placeholders = protect_placeholders
        self.tokenizer = None  # attached by tfllm.load(); not part of the saved model
        self.build((None, None))

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs):
        extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
        return cls(Seq2SeqBackbone.from_model_config(config, name="backbone", **extra),
                   **kwargs)

    def build(self, input_shape=None):
        if not self.backbone.built:
            self.backbone.build()
        self.built = True

    def source_mask(self, source_ids):
        return ops.not_equal(source_ids, self.pad_id)

    def call(self, inputs, training=None):
        source = inputs["encoder_token_ids"]
        mask = inputs.get("encoder_padding_mask")
        mask = self.source_mask(source) if mask is None else mask
        hidden = self.backbone(source, inputs["decoder_token_ids"], mask, training=training)
        return ops.cast(self.backbone.logits(hidden), "float32")

    def generate(self, texts, max_new_tokens=None, num_beams=1, length_penalty=1.0,
                 temperature=0.0, top_k=None, top_p=None, seed=None, truncate=False,
                 return_ids=False):
        """Translate strings (see `tfllm.models.translation.translate`).

        Example:
            >>> mt = tfllm.load("runs/en-fr")  # doctest: +SKIP
            >>> mt.generate("File not found", num_beams=4)  # doctest: +SKIP
        """
        from tfllm.models.translation import translate  # loads TensorFlow: when used

        return translate(self, texts, max_new_tokens, num_beams, length_penalty, temperature,
                         top_k, top_p, seed, truncate, return_ids)

    def translator(self):
        """This model's `Translator` (tfllm.models.translation), made on first use and
        kept: its compiled encoder and decoding loops are reused by every later call."""
        if getattr(self, "_translator", None) is None:
            from tfllm.models.translation import Translator

            tok = getattr(self, "tokenizer", None)
            self._translator = Translator(self, tok.bos_id if tok else 2,
                                          tok.eos_id if tok else 3)
        return self._translator

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "label_smoothing": self.label_smoothing, "pad_id": self.pad_id,
                "protect_placeholders": self.protect_placeholders, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone(config))

    def _default_loss(self):
        return SmoothedSparseCrossentropy(self.label_smoothing)

    def _default_metrics(self):
        return {"weighted_metrics": [Perplexity(),
                                     keras.metrics.SparseCategoricalAccuracy("accuracy")]}

    def with_max_len(self, max_len):
        from tfllm.config import ConfigError

        raise ConfigError("--max-len applies to causal LM runs; an encoder-decoder keeps its "
                          f"trained context of {self.backbone.max_len} tokens")
