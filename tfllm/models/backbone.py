"""The transformer backbone: embeddings and a stack of blocks, causal or bidirectional."""

import keras
from keras import ops

from tfllm.config import ModelConfig, attention_types
from tfllm.layers.attention import (causal_mask, empty_cache, merge_masks, ring_masks,
                                    sliding_window_mask)
from tfllm.layers.embedding import TokenAndPositionEmbedding
from tfllm.layers.initializers import block_initializers, kernel_initializer
from tfllm.layers.transformer_block import TransformerBlock, make_norm

# ModelConfig fields after the GPT-2 ones, with the defaults that keep GPT-2's architecture.
_ARCH_FIELDS = ("num_kv_heads", "head_size", "position_embedding", "rope_theta",
                "rope_scaling", "norm", "ffn", "qkv_bias", "proj_bias", "qk_norm",
                "tie_embeddings", "type_vocab_size", "pooler", "initializer", "post_norms",
                "scale_embeddings", "query_pre_attn_scalar", "attn_logit_softcap",
                "final_logit_softcap", "sliding_window", "layer_types", "rope_local_theta")


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerBackbone(keras.layers.Layer):
    """Token ids (batch, seq) to hidden states (batch, seq, d_model).

    Pre-LN stacks end with a final LayerNorm (GPT-2); post-LN stacks normalize the
    embeddings instead (BERT). `causal=True` makes a decoder, `False` an encoder.

    Args: the fields of `ModelConfig` of the same names (see `from_config_dataclass`).

    Example:
        >>> bb = TransformerBackbone.from_model_config(get_preset("shakespeare-char").replace(vocab_size=65))
        >>> bb(ops.zeros((2, 16), "int32")).shape
        (2, 16, 128)
    """

    def __init__(self, vocab_size, num_layers, d_model, num_heads, ffn_dim, max_len,
                 dropout=0.0, causal=True, activation="gelu", norm_first=True,
                 layer_norm_epsilon=1e-5, num_kv_heads=None, head_size=None,
                 position_embedding="learned", rope_theta=10000.0, rope_scaling=None,
                 norm="layernorm", ffn="plain", qkv_bias=True, proj_bias=True, qk_norm=False,
                 tie_embeddings=True, type_vocab_size=0, pooler=False, initializer="gpt2",
                 post_norms=False, scale_embeddings=False, query_pre_attn_scalar=None,
                 attn_logit_softcap=None, final_logit_softcap=None, sliding_window=None,
                 layer_types=None, rope_local_theta=None, **kwargs):
        super().__init__(**kwargs)
        self.post_norms = post_norms
        self.scale_embeddings = scale_embeddings
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attn_logit_softcap = attn_logit_softcap
        self.final_logit_softcap = final_logit_softcap
        self.sliding_window = sliding_window
        self.layer_types = None if layer_types is None else list(layer_types)
        self.rope_local_theta = rope_local_theta
        self.initializer = initializer
        self.type_vocab_size = type_vocab_size
        self.pooler = pooler
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.norm_kind = norm
        self.ffn = ffn
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        self.qk_norm = qk_norm
        self.tie_embeddings = tie_embeddings
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.d_model = d_model
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.max_len = max_len
        self.dropout = dropout
        self.causal = causal
        self.activation = activation
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.embedding = TokenAndPositionEmbedding(
            vocab_size, max_len, d_model, dropout, learned_positions=position_embedding ==
            "learned", tie_embeddings=tie_embeddings, type_vocab_size=type_vocab_size,
            scale=scale_embeddings, logit_softcap=final_logit_softcap, name="embedding",
            dtype=policy)
        self.blocks = [
            TransformerBlock(d_model, num_heads, ffn_dim, dropout, activation, norm_first,
                             layer_norm_epsilon, norm=norm, ffn=ffn,
                             num_kv_heads=num_kv_heads, head_dim=head_size,
                             qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                             rope=self._rope_of(kind), post_norms=post_norms,
                             query_pre_attn_scalar=query_pre_attn_scalar,
                             attn_logit_softcap=attn_logit_softcap, name=f"block_{i}",
                             dtype=policy, **block_initializers(initializer, num_layers))
            for i, kind in enumerate(self.attention_types)
        ]
        # Pre-LN ends with a norm (GPT-2's ln_f); post-LN normalizes the embeddings (BERT).
        self.norm = make_norm(norm, layer_norm_epsilon,
                              "final_norm" if norm_first else "embedding_norm", policy)
        if pooler:
            self.pooler_dense = keras.layers.Dense(
                d_model, activation="tanh", name="pooler", dtype=policy,
                kernel_initializer=kernel_initializer(
                    "glorot_uniform" if initializer == "xavier" else "normal", 0.02))

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs):
        """Build from a `ModelConfig` (which must have a vocab_size)."""
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None: train or load a tokenizer first")
        return cls(vocab_size=config.vocab_size, num_layers=config.num_layers,
                   d_model=config.d_model, num_heads=config.num_heads, ffn_dim=config.ffn_dim,
                   max_len=config.max_len, dropout=config.dropout, causal=config.causal,
                   activation=config.activation, norm_first=config.norm_first,
                   layer_norm_epsilon=config.layer_norm_epsilon,
                   **{f: getattr(config, f) for f in _ARCH_FIELDS}, **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The `ModelConfig` of this backbone's architecture (tokenizer fields at defaults)."""
        return ModelConfig(vocab_size=self.vocab_size, num_layers=self.num_layers,
                           d_model=self.d_model, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                           max_len=self.max_len, dropout=self.dropout, causal=self.causal,
                           activation=self.activation, norm_first=self.norm_first,
                           layer_norm_epsilon=self.layer_norm_epsilon,
                           **self._arch_config())

    def _arch_config(self):
        return dict(num_kv_heads=self.num_kv_heads, head_size=self.head_size,
                    position_embedding=self.position_embedding, rope_theta=self.rope_theta,
                    rope_scaling=self.rope_scaling, norm=self.norm_kind, ffn=self.ffn,
                    qkv_bias=self.qkv_bias, proj_bias=self.proj_bias, qk_norm=self.qk_norm,
                    tie_embeddings=self.tie_embeddings, type_vocab_size=self.type_vocab_size,
                    pooler=self.pooler, initializer=self.initializer,
                    post_norms=self.post_norms, scale_embeddings=self.scale_embeddings,
                    query_pre_attn_scalar=self.query_pre_attn_scalar,
                    attn_logit_softcap=self.attn_logit_softcap,
                    final_logit_softcap=self.final_logit_softcap,
                    sliding_window=self.sliding_window, layer_types=self.layer_types,
                    rope_local_theta=self.rope_local_theta)

    @property
    def head_dim(self):
        return self.head_size or self.d_model // self.num_heads

    @property
    def attention_types(self) -> list[str]:
        """Each block's attention kind, "full_attention" or "sliding_attention" (see
        `ModelConfig.attention_types`)."""
        return attention_types(self.num_layers, self.sliding_window, self.layer_types)

    def _rope_of(self, kind):
        if self.position_embedding != "rope":
            return None
        if kind == "sliding_attention" and self.rope_local_theta is not None:
            return _rope_arguments(self.rope_local_theta, None)
        return _rope_arguments(self.rope_theta, self.rope_scaling)

    @property
    def kv_heads(self):
        """Key/value heads: the cache's second dimension."""
        return self.num_kv_heads or self.num_heads

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.d_model)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.norm.build(hidden_shape)
        if self.pooler:
            self.pooler_dense.build((None, self.d_model))
        self.built = True

    def pool(self, hidden):
        """BERT's pooled output: dense + tanh over the first token, (batch, d_model); the
        first token's hidden state itself where the backbone has no pooler."""
        first = hidden[:, 0, :]  # (batch, d_model)
        return self.pooler_dense(first) if self.pooler else first

    def cache_lengths(self) -> list[int]:
        """Each layer's KV cache length: `max_len`, or for a sliding-window layer whose
        window is shorter, the window (a ring: index i in slot i mod window)."""
        ring = self.sliding_window if self.sliding_window and \
            self.sliding_window < self.max_len else self.max_len
        return [ring if kind == "sliding_attention" else self.max_len
                for kind in self.attention_types]

    def empty_caches(self, batch_size, dtype=None):
        """Zero KV caches for every layer: a list of (k, v), each
        (batch, kv_heads, length, head_dim), length from `cache_lengths`."""
        dtype = dtype or self.compute_dtype
        return [empty_cache(batch_size, self.kv_heads, length, self.head_dim, dtype)
                for length in self.cache_lengths()]

    def call(self, token_ids, padding_mask=None, positions=None, caches=None, cache_index=None,
             token_type_ids=None, training=None):
        """Run the stack.

        Args:
            token_ids: int (batch, seq).
            padding_mask: optional bool (batch, keys), True for real tokens. Keys are the
                inputs, or the cache slots (batch, max_len) when `caches` is given.
            positions: optional int position ids, (seq,) or (batch, seq); default
                `cache_index + 0..seq-1`.
            caches: optional list of per-layer (k, v) caches (see `empty_caches`; a
                sliding-window layer's is a ring of `window` slots).
            cache_index: absolute slot where this call's tokens are written in the caches.
            token_type_ids: optional int (batch, seq) segment ids (0: first text, 1: the
                pair's second); only where `type_vocab_size` > 0.

        Returns hidden states, or `(hidden, new_caches)` when `caches` is given.
        """
        seq_len = ops.shape(token_ids)[1]
        keys = seq_len if caches is None else self.max_len
        offset = 0 if caches is None else ops.cast(cache_index, "int32")
        if self.causal:
            causal = causal_mask(seq_len, keys, offset)
        elif caches is None:
            causal = None
        else:
            # An encoder sees every written slot, but none past this call's tokens.
            causal = ops.broadcast_to(ops.arange(self.max_len)[None, :] < offset + seq_len,
                                      (seq_len, self.max_len))
        masks = {"full_attention": merge_masks(causal, padding_mask)}
        if positions is None:
            positions = ops.arange(seq_len, dtype="int32") + offset
        lengths = self.cache_lengths()
        ring = None
        if caches is not None and min(lengths) < self.max_len:
            # Ring caches: their layers take `ring_masks`, not a (seq, max_len) mask.
            ring = ring_masks(seq_len, offset, min(lengths), self.sliding_window, positions,
                              padding_mask)
        elif "sliding_attention" in self.attention_types:
            # Slots are positions (left padding shifts both alike), so the window is
            # measured on slots.
            masks["sliding_attention"] = merge_masks(
                sliding_window_mask(seq_len, keys, self.sliding_window, offset), padding_mask)
        x = self.embedding(token_ids, positions=positions, token_type_ids=token_type_ids,
                           training=training)
        if not self.norm_first:
            x = self.norm(x)
        new_caches = []
        for i, (block, kind) in enumerate(zip(self.blocks, self.attention_types)):
            mask = masks.get(kind)  # none for ring-cached layers (see ring_masks)
            if caches is None:
                x = block(x, attention_mask=mask, positions=positions, training=training)
                continue
            if ring is not None and lengths[i] < self.max_len:
                x, cache = block(x, attention_mask=ring[0], cache=caches[i],
                                 cache_index=offset, positions=positions,
                                 ring_write=ring[1], training=training)
            else:
                x, cache = block(x, attention_mask=mask, cache=caches[i],
                                 cache_index=offset, positions=positions, training=training)
            new_caches.append(cache)
        if self.norm_first:
            x = self.norm(x)
        return x if caches is None else (x, new_caches)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.d_model,)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, num_layers=self.num_layers,
                      d_model=self.d_model, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                      max_len=self.max_len, dropout=self.dropout, causal=self.causal,
                      activation=self.activation, norm_first=self.norm_first,
                      layer_norm_epsilon=self.layer_norm_epsilon, **self._arch_config())
        return config


def _rope_arguments(rope_theta, rope_scaling):
    """`RotaryEmbedding` arguments (all but head_dim) from a config's theta and scaling."""
    args = {"rope_theta": float(rope_theta)}
    if rope_scaling:
        args.update(scaling=rope_scaling["type"], factor=float(rope_scaling.get("factor", 1.0)))
        if rope_scaling["type"] == "llama3":
            args.update(low_freq_factor=float(rope_scaling.get("low_freq_factor", 1.0)),
                        high_freq_factor=float(rope_scaling.get("high_freq_factor", 4.0)),
                        original_max_position=int(rope_scaling.get(
                            "original_max_position_embeddings", 8192)))
    return args


def split_inputs(inputs, pad_id):
    """`(token_ids, padding_mask, token_type_ids)` of a task model's inputs: a dict with
    `token_ids` and optionally `padding_mask` and `token_type_ids`, or bare token ids.
    A missing mask is `token_ids != pad_id` (the TFLite exports feed bare ids)."""
    if isinstance(inputs, dict):
        token_ids, padding_mask = inputs["token_ids"], inputs.get("padding_mask")
        token_type_ids = inputs.get("token_type_ids")
    else:
        token_ids, padding_mask, token_type_ids = inputs, None, None
    if padding_mask is None:
        padding_mask = ops.not_equal(token_ids, pad_id)
    return token_ids, padding_mask, token_type_ids


def with_backbone(config: dict) -> dict:
    """A task model's `get_config()` with its serialized backbone rebuilt (for
    `from_config`)."""
    config = dict(config)
    config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
    return config
