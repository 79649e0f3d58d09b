"""The encoder-decoder backbone: a bidirectional encoder, a causal decoder that attends to
the encoder's output, and one token embedding shared by both (and by the output layer)."""

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.layers.attention import causal_mask, empty_cache, merge_masks
from tfllm.layers.embedding import TokenAndPositionEmbedding
from tfllm.layers.initializers import block_initializers
from tfllm.layers.transformer_block import TransformerBlock, make_norm
from tfllm.models.backbone import _rope_arguments


@keras.saving.register_keras_serializable(package="tfllm")
class Seq2SeqBackbone(keras.layers.Layer):
    """Source ids (batch, src_len) and target ids (batch, tgt_len) to decoder hidden states.

    The Transformer of "Attention Is All You Need" with pre-LN blocks (each stack ends with
    a norm) and learned (or rotary) positions: `encode` runs the encoder once,
    `project_context` turns its output into every decoder block's cross-attention keys and
    values, and `decode` runs the decoder, in full (training) or one cached step at a time
    (generation).

    Args:
        vocab_size: the shared source/target vocabulary.
        num_layers: encoder blocks.
        num_decoder_layers: decoder blocks (each with cross-attention).
        d_model, num_heads, ffn_dim, max_len, dropout, activation, norm_first,
        layer_norm_epsilon, norm, ffn, qkv_bias, proj_bias, initializer: as `ModelConfig`'s;
            `max_len` bounds source and target lengths (one position table serves both).
        position_embedding, rope_theta: "learned" (a position table added to the token
            embeddings) or "rope" (rotary queries and keys in both stacks' self-attention).

    Example:
        >>> bb = Seq2SeqBackbone(vocab_size=100, num_layers=1, num_decoder_layers=1,
        ...                      d_model=16, num_heads=2, ffn_dim=32, max_len=8)
        >>> memory = bb.encode(ops.ones((2, 5), "int32"))
        >>> bb.decode(ops.ones((2, 3), "int32"), memory).shape
        (2, 3, 16)
    """

    def __init__(self, vocab_size, num_layers, num_decoder_layers, d_model, num_heads, ffn_dim,
                 max_len, dropout=0.0, activation="relu", norm_first=True,
                 layer_norm_epsilon=1e-5, norm="layernorm", ffn="plain", qkv_bias=True,
                 proj_bias=True, initializer="gpt2", position_embedding="learned",
                 rope_theta=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.initializer = initializer
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.num_decoder_layers = num_decoder_layers
        self.d_model = d_model
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.max_len = max_len
        self.dropout = dropout
        self.activation = activation
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm_kind = norm
        self.ffn = ffn
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        policy = self.dtype_policy
        self.embedding = TokenAndPositionEmbedding(
            vocab_size, max_len, d_model, dropout,
            learned_positions=position_embedding == "learned", name="embedding", dtype=policy)
        # Rotary positions rotate the self-attention queries and keys of both stacks; the
        # cross-attention compares a target position with every source position, so it has
        # none (as in T5's relative scheme, which also leaves cross-attention position-free).
        rope = _rope_arguments(rope_theta, None) if position_embedding == "rope" else None

        def blocks(n, prefix, cross):
            return [TransformerBlock(d_model, num_heads, ffn_dim, dropout, activation,
                                     norm_first, layer_norm_epsilon, norm=norm, ffn=ffn,
                                     qkv_bias=qkv_bias, proj_bias=proj_bias,
                                     cross_attention=cross, rope=rope, name=f"{prefix}_{i}",
                                     dtype=policy, **block_initializers(initializer, n))
                    for i in range(n)]

        self.encoder_blocks = blocks(num_layers, "encoder_block", False)
        self.decoder_blocks = blocks(num_decoder_layers, "decoder_block", True)
        # Pre-LN stacks end with a norm; post-LN ones normalize the embeddings instead.
        where = "final" if norm_first else "embedding"
        self.encoder_norm = make_norm(norm, layer_norm_epsilon, f"encoder_{where}_norm", policy)
        self.decoder_norm = make_norm(norm, layer_norm_epsilon, f"decoder_{where}_norm", policy)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs):
        """Build from an encoder-decoder `ModelConfig` (with a vocab_size)."""
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None: train or load a tokenizer first")
        if not config.is_seq2seq:
            raise ValueError("Seq2SeqBackbone needs num_decoder_layers > 0")
        return cls(vocab_size=config.vocab_size, num_layers=config.num_layers,
                   num_decoder_layers=config.num_decoder_layers, d_model=config.d_model,
                   num_heads=config.num_heads, ffn_dim=config.ffn_dim, max_len=config.max_len,
                   dropout=config.dropout, activation=config.activation,
                   norm_first=config.norm_first, layer_norm_epsilon=config.layer_norm_epsilon,
                   norm=config.norm, ffn=config.ffn, qkv_bias=config.qkv_bias,
                   proj_bias=config.proj_bias, initializer=config.initializer,
                   position_embedding=config.position_embedding, rope_theta=config.rope_theta,
                   **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The `ModelConfig` of this backbone (tokenizer fields at defaults)."""
        return ModelConfig(vocab_size=self.vocab_size, num_layers=self.num_layers,
                           num_decoder_layers=self.num_decoder_layers, d_model=self.d_model,
                           num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                           max_len=self.max_len, dropout=self.dropout, causal=False,
                           activation=self.activation, norm_first=self.norm_first,
                           layer_norm_epsilon=self.layer_norm_epsilon, norm=self.norm_kind,
                           ffn=self.ffn, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                           initializer=self.initializer,
                           position_embedding=self.position_embedding,
                           rope_theta=self.rope_theta)

    @property
    def head_dim(self):
        return self.d_model // self.num_heads

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.d_model)
        self.embedding.build((None, None))
        for block in self.encoder_blocks + self.decoder_blocks:
            block.build(hidden_shape)
        self.encoder_norm.build(hidden_shape)
        self.decoder_norm.build(hidden_shape)
        self.built = True

    def _stack(self, x, blocks, norm, training, **block_args):
        if not self.norm_first:
            x = norm(x)
        caches, cache = block_args.pop("caches", None), None
        contexts = block_args.pop("context_kv", None)
        new_caches = []
        for i, block in enumerate(blocks):
            args = dict(block_args)
            if contexts is not None:
                args["context_kv"] = contexts[i]
            if caches is not None:
                x, cache = block(x, cache=caches[i], training=training, **args)
                new_caches.append(cache)
            else:
                x = block(x, training=training, **args)
        if self.norm_first:
            x = norm(x)
        return x if caches is None else (x, new_caches)

    def encode(self, source_ids, source_mask=None, training=None):
        """Encoder output (batch, src_len, d_model); `source_mask` (batch, src_len) is True
        for real tokens (padding is never attended to)."""
        x = self.embedding(source_ids, training=training)
        mask = merge_masks(None, source_mask)  # (batch|None, 1, src_len)
        return self._stack(x, self.encoder_blocks, self.encoder_norm, training,
                           attention_mask=mask)

    def project_context(self, memory):
        """Every decoder block's cross-attention `(k, v)` of the encoder output, each
        (batch, heads, src_len, head_dim): computed once per source, reused each step."""
        return [block.project_context(memory) for block in self.decoder_blocks]

    def empty_caches(self, batch_size, dtype=None):
        """Zero self-attention caches for every decoder block: (k, v) pairs, each
        (batch, heads, max_len, head_dim)."""
        dtype = dtype or self.compute_dtype
        return [empty_cache(batch_size, self.num_heads, self.max_len, self.head_dim, dtype)
                for _ in self.decoder_blocks]

    def decode(self, target_ids, memory=None, source_mask=None, context_kv=None, caches=None,
               cache_index=None, training=None):
        """Decoder hidden states (batch, tgt_len, d_model).

        Args:
            target_ids: int (batch, tgt_len): BOS then the target so far.
            memory: the encoder output (or give `context_kv`).
            source_mask: optional bool (batch, src_len), True for real source tokens.
            context_kv: `project_context(memory)`, to skip recomputing it every step.
            caches: optional self-attention caches (see `empty_caches`); then returns
                `(hidden, new_caches)`.
            cache_index: absolute position of `target_ids`' first token in the caches.
        """
        tgt_len = ops.shape(target_ids)[1]
        if caches is None:
            offset, self_mask = 0, causal_mask(tgt_len, tgt_len)[None]  # (1, tgt, tgt)
        else:
            offset = ops.cast(cache_index, "int32")
            self_mask = causal_mask(tgt_len, self.max_len, offset)[None]  # (1, tgt, max_len)
        if context_kv is None:
            context_kv = self.project_context(memory)
        cross_mask = merge_masks(None, source_mask)  # (batch|None, 1, src_len)
        positions = ops.arange(tgt_len, dtype="int32") + offset
        x = self.embedding(target_ids, positions=positions, training=training)
        return self._stack(x, self.decoder_blocks, self.decoder_norm, training,
                           attention_mask=self_mask, context_mask=cross_mask,
                           context_kv=context_kv, caches=caches, cache_index=offset,
                           positions=positions)

    def call(self, source_ids, target_ids, source_mask=None, training=None):
        memory = self.encode(source_ids, source_mask, training=training)
        return self.decode(target_ids, memory, source_mask, training=training)

    def logits(self, hidden):
        """Vocabulary logits of decoder hidden states (the tied embedding's transpose)."""
        return self.embedding.logits(hidden)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, num_layers=self.num_layers,
                      num_decoder_layers=self.num_decoder_layers, d_model=self.d_model,
                      num_heads=self.num_heads, ffn_dim=self.ffn_dim, max_len=self.max_len,
                      dropout=self.dropout, activation=self.activation,
                      norm_first=self.norm_first, layer_norm_epsilon=self.layer_norm_epsilon,
                      norm=self.norm_kind, ffn=self.ffn, qkv_bias=self.qkv_bias,
                      proj_bias=self.proj_bias, initializer=self.initializer,
                      position_embedding=self.position_embedding, rope_theta=self.rope_theta)
        return config
