"""Root-mean-square layer normalization (Llama, Mistral, Qwen, SmolLM2)."""

import keras
from keras import ops

from tfllm.layers import export_hooks


@keras.saving.register_keras_serializable(package="tfllm")
class RMSNorm(keras.layers.Layer):
    """`x / sqrt(mean(x^2) + epsilon) * scale` over the last axis: no centring, no bias.

    Computed in float32 whatever the compute dtype (as the reference implementations do),
    then cast back. Also the QK-norm of Qwen3, over each head's `head_dim`.

    Args:
        epsilon: added to the mean square (Llama 1e-5 or 1e-6; read from the checkpoint).

    Example:
        >>> RMSNorm(epsilon=1e-6)(ops.ones((1, 3, 8))).shape
        (1, 3, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
        self.built = True

    def call(self, x):
        x32 = ops.cast(x, "float32")
        inv_rms = ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)
        if export_hooks.norm_scale(self) == "per_token":
            # Same values; an exporter asks for it where a converter must not fold the
            # constant scale into the next matmul's weights (tfllm.layers.export_hooks).
            return ops.cast(x32 * (inv_rms * ops.cast(self.scale, "float32")), x.dtype)
        return ops.cast(x32 * inv_rms, x.dtype) * ops.cast(self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config
