"""The GPT-style causal language model task: token ids in, next-token logits out."""

import keras
import numpy as np
from keras import ops

from tfllm.config import ModelConfig
from tfllm.models.backbone import TransformerBackbone, with_backbone


@keras.saving.register_keras_serializable(package="tfllm")
class Perplexity(keras.metrics.Metric):
    """exp(mean token cross-entropy) over everything seen since the last reset.

    Unlike keras-hub's Perplexity, which averages per-batch perplexities when batches
    are evaluated separately, this accumulates total loss and token count.
    """

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total",
                                       dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count",
                                       dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True)
        if sample_weight is not None:
            weights = ops.cast(sample_weight, "float32")
            losses = losses * weights
            n = ops.sum(weights)
        else:
            n = ops.cast(ops.size(losses), "float32")
        self.total.assign_add(ops.sum(losses))
        self.count.assign_add(n)

    def result(self):
        return ops.exp(self.total / ops.maximum(self.count, 1.0))


class LanguageModelTask:
    """What CausalLM and MaskedLM share: one backbone, built from a `ModelConfig`,
    serialized through it, and `compile()` with tfllm's pretraining recipe.

    A task model mixes this in before `keras.Model` and may override `_default_loss`
    and `_default_metrics` (a dict of `compile()` metric arguments).
    """

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs):
        # A dtype (e.g. "bfloat16" for imported weights) applies to the backbone's weights.
        extra = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
        return cls(TransformerBackbone.from_model_config(config, name="backbone", **extra),
                   **kwargs)

    @property
    def config(self) -> ModelConfig:
        return self.backbone.to_model_config()

    def with_max_len(self, max_len: int) -> "CausalLM":
        """The same model with another context (KV cache) length, weights shared by value.

        Rotary models take any length (positions are computed, not learned); a learned
        position table can only be cut. Exporters use this for `--max-len`.
        """
        import dataclasses

        from tfllm.config import ConfigError

        cfg = self.config
        if not isinstance(max_len, int) or max_len < 2:
            raise ConfigError(f"--max-len must be an integer >= 2, got {max_len!r}")
        if cfg.position_embedding == "learned" and max_len > cfg.max_len:
            raise ConfigError(f"--max-len {max_len} is above this model's {cfg.max_len} "
                              "learned positions; choose at most that")
        # A window as long as the context is full attention, so clamping it is exact.
        window = None if cfg.sliding_window is None else min(cfg.sliding_window, max_len)
        new = CausalLM.from_model_config(dataclasses.replace(cfg, max_len=max_len,
                                                             sliding_window=window),
                                         name=self.name, dtype=self.dtype_policy.name)
        new(np.zeros((1, 1), np.int32))
        for old, w in zip(self.weights, new.weights):
            value = old.numpy()
            if tuple(w.shape) != value.shape:  # the learned position table
                value = value[: w.shape[0]]
            w.assign(value)
        new.tokenizer = self.tokenizer
        return new

    def get_config(self):
        return {"backbone": keras.saving.serialize_keras_object(self.backbone),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone(config))

    def _default_loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def _default_metrics(self):
        return {"metrics": [Perplexity()]}

    def compile(self, optimizer="default", loss="default", metrics="default",
                learning_rate=1e-3, warmup_steps=100, total_steps=2000, min_lr_ratio=0.1,
                weight_decay=0.1, beta_2=0.99, clipnorm=1.0, **kwargs):
        """Compile with tfllm's defaults; any argument given explicitly wins.

        Args:
            optimizer: "default" for AdamW + warmup/cosine schedule, or any Keras optimizer.
            loss: "default" for sparse cross-entropy from logits.
            metrics: "default" for the task's metrics (`[Perplexity()]` for a causal LM).
            learning_rate: peak learning rate after warmup.
            warmup_steps: linear warmup steps from 0.
            total_steps: steps at which the cosine decay reaches `min_lr_ratio * learning_rate`.
            min_lr_ratio: final learning rate as a fraction of the peak.
            weight_decay: decoupled weight decay on 2-D+ weights only.
            beta_2: Adam's second-moment decay (0.99 suits small batches).
            clipnorm: clip the global gradient norm (all weights together) to this; None disables.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`, `steps_per_execution`).
        """
        recipe = dict(learning_rate=learning_rate, warmup_steps=warmup_steps,
                      total_steps=total_steps, min_lr_ratio=min_lr_ratio,
                      weight_decay=weight_decay, beta_2=beta_2, clipnorm=clipnorm)
        # Only the all-defaults recipe can be rebuilt from these numbers on load.
        self._recipe = recipe if optimizer == loss == metrics == "default" else None
        if optimizer == "default":
            optimizer = make_optimizer(self, learning_rate, warmup_steps, total_steps,
                                       min_lr_ratio, weight_decay, beta_2, clipnorm)
        if loss == "default":
            loss = self._default_loss()
        metric_args = self._default_metrics() if metrics == "default" else {"metrics": metrics}
        super().compile(optimizer=optimizer, loss=loss, **metric_args, **kwargs)

    def get_compile_config(self):
        if getattr(self, "_recipe", None) is not None:
            return {"tfllm_recipe": self._recipe}
        return super().get_compile_config()

    def compile_from_config(self, config):
        if "tfllm_recipe" not in config:
            return super().compile_from_config(config)
        self.compile(**config["tfllm_recipe"])
        # Built now so the saved optimizer state (moments, iterations) loads into it.
        self.optimizer.build(self.trainable_variables)


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLM(LanguageModelTask, keras.Model):
    """Causal LM: `model(token_ids)` (batch, seq) -> logits (batch, seq, vocab), float32.

    The output projection is the transposed token embedding (tied weights).
    `compile()` with no arguments gives the training recipe tfllm uses: AdamW with
    linear warmup and cosine decay, weight decay only on 2-D+ weights, gradient clipping,
    sparse cross-entropy from logits and a perplexity metric.

    Args:
        backbone: a causal `TransformerBackbone`.

    Example:
        >>> lm = CausalLM.from_model_config(get_preset("shakespeare-char").replace(vocab_size=65))
        >>> lm(ops.zeros((1, 8), "int32")).shape
        (1, 8, 65)
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if not backbone.causal:
            raise ValueError("CausalLM needs a causal backbone (causal=True)")
        self.backbone = backbone
        self.tokenizer = None  # attached by tfllm.load(); not part of the saved model
        # Built eagerly so variables exist for compile() (weight-decay exclusion) and
        # BackupAndRestore, which refuses unbuilt models.
        self.build((None, None))

    def build(self, input_shape=None):
        if not self.backbone.built:  # a deserialized backbone arrives built
            self.backbone.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            token_ids, padding_mask = inputs["token_ids"], inputs.get("padding_mask")
        else:
            token_ids, padding_mask = inputs, None
        hidden = self.backbone(token_ids, padding_mask=padding_mask, training=training)
        return ops.cast(self.backbone.embedding.logits(hidden), "float32")

    def call_with_cache(self, token_ids, caches, cache_index, padding_mask=None, positions=None,
                        last_only=False):
        """One cached step: logits for `token_ids` written at `cache_index`, and new caches.

        Args:
            token_ids: int (batch, seq), the new tokens.
            caches: per-layer (k, v) from `backbone.empty_caches` or a previous call.
            cache_index: absolute slot of the first new token.
            padding_mask: optional bool (batch, max_len) marking slots that hold real tokens.
            positions: optional position ids (seq,) or (batch, seq).
            last_only: the last token's logits only, (batch, 1, vocab): all a prefill
                needs (the vocabulary projection is ~1/6 of a 135M model's prompt compute).

        Returns:
            (logits (batch, seq, vocab) float32, new caches).
        """
        hidden, caches = self.backbone(token_ids, padding_mask=padding_mask, positions=positions,
                                       caches=caches, cache_index=cache_index)
        if last_only:
            hidden = hidden[:, -1:, :]
        return ops.cast(self.backbone.embedding.logits(hidden), "float32"), caches

    def generate(self, prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None,
                 seed=None, stop_at_end=True, return_ids=False, truncate="error",
                 json_schema=None, regex=None):
        """Generate continuations with the KV cache (see `tfllm.models.generation.generate`;
        `json_schema` / `regex` constrain every output to match).

        Example:
            >>> lm = tfllm.load("runs/demo")  # doctest: +SKIP
            >>> lm.generate("ROMEO:", max_new_tokens=40)  # doctest: +SKIP
            >>> lm.generate("Is it?", regex="(yes|no)")  # doctest: +SKIP
        """
        # Imported when used: generation loads TensorFlow, the model classes only Keras.
        from tfllm.models.generation import generate

        return generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed,
                        stop_at_end, return_ids, truncate, json_schema, regex)

    def generator(self):
        """This model's `Generator` (tfllm.models.generation), made on first use and kept:
        its compiled decoding functions are reused by every later call."""
        if getattr(self, "_generator", None) is None:
            from tfllm.models.generation import Generator

            tokenizer = self.tokenizer
            end = getattr(tokenizer, "eos_ids", [tokenizer.eos_id]) if tokenizer is not None \
                else 3
            self._generator = Generator(self, end_token_id=end)
        return self._generator


@keras.saving.register_keras_serializable(package="tfllm")
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW that updates from the *aggregated*, de-duplicated gradient.

    Two Keras 3.15 behaviours would make training depend on the number of replicas:
    it clips in each replica before the cross-replica sum (so the norm is that of a
    partial gradient), and its Adam squares an `IndexedSlices` gradient slice by slice,
    so an index that appears twice (a position embedding's rows after a MirroredStrategy
    all-reduce, or any gather of repeated ids) gets `a**2 + b**2` in its second moment
    instead of `(a + b)**2`. Here sparse gradients are summed per row and clipping
    happens after the all-reduce; with one replica and unique indices the result is
    Keras' own.

    Args:
        global_clipnorm: clip the global gradient norm to this (None: no clipping).
        **kwargs: as `keras.optimizers.AdamW` (its own clip arguments are not allowed).
    """

    def __init__(self, global_clipnorm=None, **kwargs):
        super().__init__(**kwargs)
        self.aggregated_clipnorm = global_clipnorm
        self._lr_multipliers = {}

    def set_lr_multiplier(self, variables, multiplier):
        """Train `variables` at `multiplier` times the scheduled learning rate.

        Fine-tuning uses it to move a pretrained backbone more slowly than a new head.
        Scaling gradients would not do: Adam's update is invariant to gradient scale.
        Like `exclude_from_weight_decay`, this is not part of the saved config.
        """
        for v in variables:
            self._lr_multipliers[self._var_key(v)] = float(multiplier)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._lr_multipliers.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "tensorflow":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        variables = [v.value if isinstance(v, keras.Variable) else v
                     for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        # Densifying sums repeated rows. Keras' Adam densifies the moment updates
        # anyway (m and v decay on every row), so this costs no extra update work.
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g, _ in grads_and_vars]
        if self.aggregated_clipnorm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.aggregated_clipnorm)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(grads, variables)), learning_rate)

    def get_config(self):
        config = super().get_config()
        config["global_clipnorm"] = self.aggregated_clipnorm
        return config


def make_optimizer(model, learning_rate=1e-3, warmup_steps=100, total_steps=2000,
                   min_lr_ratio=0.1, weight_decay=0.1, beta_2=0.99, clipnorm=1.0):
    """AdamW with linear warmup then cosine decay; biases, norms excluded from weight decay."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=min_lr_ratio,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    optimizer = AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9,
                      beta_2=beta_2, global_clipnorm=clipnorm)
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer
