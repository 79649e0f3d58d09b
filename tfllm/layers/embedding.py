"""Token + learned position embedding whose token matrix doubles as the output projection."""

import keras
from keras import ops

from tfllm.layers import export_hooks

_fused_lookup = None


def embedding_lookup(table, token_ids):
    """Rows of `table` [rows, width] for `token_ids` (any shape), traced so that the TFLite
    converter emits EMBEDDING_LOOKUP (see `tfllm.layers.export_hooks`, token_lookup);
    TensorFlow backend only."""
    global _fused_lookup
    import tensorflow as tf

    if _fused_lookup is None:
        # The converter replaces this function's body by tfl.embedding_lookup(ids, table).
        _fused_lookup = tf.function(lambda params, ids: tf.gather(params, ids),
                                    experimental_implements="embedding_matmul")
    flat = tf.reshape(token_ids, [-1])  # EMBEDDING_LOOKUP takes 1-D ids
    rows = _fused_lookup(table, flat)  # (batch * seq, d_model)
    if token_ids.shape.is_fully_defined():  # static shapes keep the converter's graph static
        return tf.reshape(rows, [*token_ids.shape, table.shape[1]])
    return tf.reshape(rows, tf.concat([tf.shape(token_ids), tf.shape(table)[1:]], 0))


@keras.saving.register_keras_serializable(package="tfllm")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sum of a token embedding and a learned absolute position embedding.

    The token matrix is tied to the output layer: `logits(hidden)` multiplies by its
    transpose, which halves the parameters of small-vocabulary models and is what GPT-2 does.

    Args:
        vocab_size: number of token ids.
        max_len: number of learned positions (the context length).
        d_model: embedding width.
        dropout: dropout applied to the summed embedding.
        initializer_stddev: stddev of the normal initializer (GPT-2 uses 0.02).
        learned_positions: add learned position embeddings (False where attention applies
            rotary embeddings instead).
        tie_embeddings: `logits` multiplies by the token matrix's transpose; False gives the
            output projection a matrix of its own (Llama 3 8B, Mistral, Qwen2.5-7B).
        type_vocab_size: token type (segment) embeddings added to every token, BERT's
            sentence A / B; 0: none.
        scale: multiply the embeddings by sqrt(d_model), rounded to the compute dtype as
            Gemma's reference does.
        logit_softcap: `logits` returns `cap * tanh(logits / cap)` (Gemma 2: 30); None:
            no capping.

    Example:
        >>> emb = TokenAndPositionEmbedding(vocab_size=65, max_len=64, d_model=128)
        >>> emb(ops.zeros((2, 10), "int32")).shape
        (2, 10, 128)
    """

    def __init__(self, vocab_size, max_len, d_model, dropout=0.0, initializer_stddev=0.02,
                 learned_positions=True, tie_embeddings=True, type_vocab_size=0, scale=False,
                 logit_softcap=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.logit_softcap = logit_softcap
        self.type_vocab_size = type_vocab_size
        self.learned_positions = learned_positions
        self.tie_embeddings = tie_embeddings
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.d_model = d_model
        self.dropout = dropout
        self.initializer_stddev = initializer_stddev
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        init = keras.initializers.RandomNormal(stddev=self.initializer_stddev)
        self.token_embeddings = self.add_weight(
            name="token_embeddings", shape=(self.vocab_size, self.d_model), initializer=init)
        if self.learned_positions:
            self.position_embeddings = self.add_weight(
                name="position_embeddings", shape=(self.max_len, self.d_model),
                initializer=init)
        if self.type_vocab_size:
            self.token_type_embeddings = self.add_weight(
                name="token_type_embeddings", shape=(self.type_vocab_size, self.d_model),
                initializer=init)
        if not self.tie_embeddings:
            self.output_embeddings = self.add_weight(
                name="output_embeddings", shape=(self.vocab_size, self.d_model),
                initializer=init)
        self.built = True

    def call(self, token_ids, positions=None, token_type_ids=None, training=None):
        """Embed `token_ids` (batch, seq) at `positions` (batch, seq) or (seq,); default
        0..seq-1. `token_type_ids` (batch, seq) default to type 0 (BERT adds its embedding
        to single texts too)."""
        x = export_hooks.through(self, "call", self._embed, token_ids, positions,
                                 token_type_ids, training)
        if self.scale:
            # Outside the hookable step, so an exporter's replacement lookup keeps it.
            x = x * ops.cast(self.d_model**0.5, x.dtype)
        return x

    def _embed(self, token_ids, positions=None, token_type_ids=None, training=None):
        table = ops.cast(self.token_embeddings, self.compute_dtype)
        # TFLite's EMBEDDING_LOOKUP where an exporter asks (weight quantizers reach it).
        if export_hooks.setting("token_lookup") == "embedding_lookup":
            tokens = embedding_lookup(table, token_ids)
        else:
            tokens = ops.take(table, token_ids, axis=0)
        if self.type_vocab_size:
            table = ops.cast(self.token_type_embeddings, self.compute_dtype)
            if token_type_ids is None:
                tokens = tokens + table[0]
            else:
                tokens = tokens + ops.take(table, token_type_ids, axis=0)
        if not self.learned_positions:
            return self.dropout_layer(tokens, training=training)
        if positions is None:
            positions = ops.arange(ops.shape(token_ids)[1], dtype="int32")
        pos = ops.take(ops.cast(self.position_embeddings, self.compute_dtype), positions, axis=0)
        return self.dropout_layer(tokens + pos, training=training)

    def logits(self, hidden):
        """Project hidden states (batch, seq, d_model) to vocabulary logits (batch, seq, vocab)."""
        logits = export_hooks.through(self, "logits", self._project, hidden)
        if self.logit_softcap:
            cap = ops.cast(self.logit_softcap, logits.dtype)
            logits = ops.tanh(logits / cap) * cap
        return logits

    def _project(self, hidden):
        kernel = self.token_embeddings if self.tie_embeddings else self.output_embeddings
        kernel = ops.cast(kernel, hidden.dtype)
        return ops.matmul(hidden, ops.transpose(kernel))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.d_model,)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_len=self.max_len, d_model=self.d_model,
                      dropout=self.dropout, initializer_stddev=self.initializer_stddev,
                      learned_positions=self.learned_positions,
                      tie_embeddings=self.tie_embeddings,
                      type_vocab_size=self.type_vocab_size, scale=self.scale,
                      logit_softcap=self.logit_softcap)
        return config
