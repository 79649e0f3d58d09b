"""The position-wise feed-forward block: FFN(x) = act(x W1 + b1) W2 + b2."""

import keras
from keras import ops

from tfllm.layers.export_hooks import through

from tfllm.config import ACTIVATIONS, ConfigError
from tfllm.layers.initializers import kernel_initializer as kernel_initializer_of


@keras.saving.register_keras_serializable(package="tfllm")
class FeedForward(keras.layers.Layer):
    """Two dense layers with an activation between them and dropout after.

    Args:
        d_model: input and output width.
        ffn_dim: inner width.
        activation: "gelu" (tanh approximation, as GPT-2), "gelu_exact" (erf, as BERT) or
            "relu".
        dropout: dropout on the output.
        initializer_stddev: stddev of the normal kernel initializer.
        output_stddev: stddev for the second (output) kernel (default `initializer_stddev`).
        kernel_initializer: "normal" (the stddevs above) or "glorot_uniform".

    Example:
        >>> FeedForward(d_model=8, ffn_dim=32)(keras.ops.ones((1, 3, 8))).shape
        (1, 3, 8)
    """

    def __init__(self, d_model, ffn_dim, activation="gelu", dropout=0.0,
                 initializer_stddev=0.02,
                 output_stddev=None, kernel_initializer="normal", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.d_model = d_model
        self.ffn_dim = ffn_dim
        self.activation = activation
        self.dropout = dropout
        self.initializer_stddev = initializer_stddev
        self.output_stddev = output_stddev
        self.kernel_initializer = kernel_initializer
        init = kernel_initializer_of(kernel_initializer, initializer_stddev)
        self.inner = keras.layers.Dense(ffn_dim, kernel_initializer=init, name="inner",
                                        dtype=self.dtype_policy)
        out_init = kernel_initializer_of(kernel_initializer, output_stddev or initializer_stddev)
        self.outer = keras.layers.Dense(d_model, kernel_initializer=out_init, name="outer",
                                        dtype=self.dtype_policy)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build(tuple(input_shape[:-1]) + (self.ffn_dim,))
        self.built = True

    def call(self, x, training=None):
        h = through(self.inner, "call", self.inner, x)
        if self.activation == "gelu":
            h = keras.activations.gelu(h, approximate=True)
        elif self.activation == "gelu_exact":
            # x * Phi(x) written with erf: TensorFlow's own exact GELU uses erfc, which
            # tf2onnx cannot convert.
            h = 0.5 * h * (1.0 + ops.erf(h * 0.7071067811865476))
        else:
            h = keras.activations.relu(h)
        return self.dropout_layer(through(self.outer, "call", self.outer, h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(d_model=self.d_model, ffn_dim=self.ffn_dim, activation=self.activation,
                      dropout=self.dropout, initializer_stddev=self.initializer_stddev,
                      output_stddev=self.output_stddev,
                      kernel_initializer=self.kernel_initializer)
        return config
