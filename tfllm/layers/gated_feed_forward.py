"""The gated feed-forward block of Llama-family models: down(act(gate(x)) * up(x))."""

import keras

from tfllm.layers.export_hooks import through

from tfllm.config import ConfigError
from tfllm.layers.initializers import kernel_initializer as kernel_initializer_of

# SwiGLU (Llama, Mistral, Qwen, SmolLM2) and GeGLU (Gemma: GELU, tanh approximation).
GATE_ACTIVATIONS = ("silu", "gelu")


@keras.saving.register_keras_serializable(package="tfllm")
class GatedFeedForward(keras.layers.Layer):
    """Gated linear unit feed-forward: `down(act(gate(x)) * up(x))`, dropout after.

    Args:
        d_model: input and output width.
        ffn_dim: inner width (Llama's `intermediate_size`).
        activation: "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation).
        use_bias: biases on the three projections (the Llama family has none).
        dropout: dropout on the output.
        initializer_stddev: stddev of the normal kernel initializer.
        output_stddev: stddev of the `down` kernel (default `initializer_stddev`).
        kernel_initializer: "normal" (the stddevs above) or "glorot_uniform".

    Example:
        >>> GatedFeedForward(d_model=8, ffn_dim=16)(keras.ops.ones((1, 3, 8))).shape
        (1, 3, 8)
    """

    def __init__(self, d_model, ffn_dim, activation="silu", use_bias=False, dropout=0.0,
                 initializer_stddev=0.02, output_stddev=None, kernel_initializer="normal",
                 **kwargs):
        super().__init__(**kwargs)
        if activation not in GATE_ACTIVATIONS:
            raise ConfigError(f"gated activation must be one of {GATE_ACTIVATIONS}, "
                              f"got {activation!r}")
        self.d_model = d_model
        self.ffn_dim = ffn_dim
        self.activation = activation
        self.use_bias = use_bias
        self.dropout = dropout
        self.initializer_stddev = initializer_stddev
        self.output_stddev = output_stddev
        self.kernel_initializer = kernel_initializer
        init = kernel_initializer_of(kernel_initializer, initializer_stddev)
        out_init = kernel_initializer_of(kernel_initializer, output_stddev or initializer_stddev)
        policy = self.dtype_policy
        self.gate = keras.layers.Dense(ffn_dim, use_bias=use_bias, kernel_initializer=init,
                                       name="gate", dtype=policy)
        self.up = keras.layers.Dense(ffn_dim, use_bias=use_bias, kernel_initializer=init,
                                     name="up", dtype=policy)
        self.down = keras.layers.Dense(d_model, use_bias=use_bias, kernel_initializer=out_init,
                                       name="down", dtype=policy)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.gate.build(input_shape)
        self.up.build(input_shape)
        self.down.build(tuple(input_shape[:-1]) + (self.ffn_dim,))
        self.built = True

    def _gate_up(self, x):
        return through(self.gate, "call", self.gate, x), through(self.up, "call", self.up, x)

    def call(self, x, training=None):
        # Both projections read `x`: an exporter may trace them as one matmul ("gate_up").
        g, u = through(self, "gate_up", self._gate_up, x)
        if self.activation == "silu":
            g = keras.activations.silu(g)
        else:
            g = keras.activations.gelu(g, approximate=True)
        return self.dropout_layer(through(self.down, "call", self.down, g * u), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(d_model=self.d_model, ffn_dim=self.ffn_dim, activation=self.activation,
                      use_bias=self.use_bias, dropout=self.dropout,
                      initializer_stddev=self.initializer_stddev,
                      output_stddev=self.output_stddev,
                      kernel_initializer=self.kernel_initializer)
        return config
