"""Rotary position embeddings (RoPE), with the linear and Llama 3 frequency scalings.

Rotates each query/key head by position-dependent angles, so attention scores depend on
relative positions. The half-split convention of the Hugging Face checkpoints: dimension i
pairs with i + head_dim/2 (not adjacent pairs), `x * cos + rotate_half(x) * sin`.
"""

import math

import keras
import numpy as np
from keras import ops

from tfllm.config import ConfigError

ROPE_SCALINGS = (None, "linear", "llama3")


def rope_inverse_frequencies(head_dim, rope_theta=10000.0, scaling=None, factor=1.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position=8192):
    """The (head_dim / 2,) angular frequencies, float64, with a checkpoint's scaling.

    Args:
        head_dim: width of one head (even).
        rope_theta: the base (10000 for Llama 2, 500000 for Llama 3, 1e6 for Qwen2.5).
        scaling: None, "linear" (positions divided by `factor`) or "llama3" (low
            frequencies divided by `factor`, high ones kept, a smooth blend between).
        factor, low_freq_factor, high_freq_factor, original_max_position: the
            `rope_scaling` fields of a Llama 3.x config.
    """
    if head_dim % 2:
        raise ConfigError(f"rotary embeddings need an even head_dim, got {head_dim}")
    if scaling not in ROPE_SCALINGS:
        raise ConfigError(f"unsupported rope scaling {scaling!r}; supported: linear, llama3")
    inv = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling == "linear":
        return inv / factor
    if scaling == "llama3":
        low_wavelen = original_max_position / low_freq_factor
        high_wavelen = original_max_position / high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original_max_position / wavelen - low_freq_factor) / \
            (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, blended, scaled)
    return inv


@keras.saving.register_keras_serializable(package="tfllm")
class RotaryEmbedding(keras.layers.Layer):
    """Applies RoPE to (batch, heads, seq, head_dim) queries or keys at given positions.

    No weights: the frequencies are a constant of the config.

    Args:
        head_dim: width of one head.
        rope_theta: the frequency base.
        scaling, factor, low_freq_factor, high_freq_factor, original_max_position: see
            `rope_inverse_frequencies` (defaults: no scaling).

    Call args:
        x: (batch, heads, seq, head_dim).
        positions: int (seq,) or (batch, seq), absolute positions.

    Example:
        >>> rope = RotaryEmbedding(head_dim=8)
        >>> rope(ops.ones((1, 2, 3, 8)), ops.arange(3)).shape
        (1, 2, 3, 8)
    """

    def __init__(self, head_dim, rope_theta=10000.0, scaling=None, factor=1.0,
                 low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192,
                 **kwargs):
        super().__init__(**kwargs)
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.scaling = scaling
        self.factor = factor
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self.original_max_position = original_max_position
        self._inv_freq = rope_inverse_frequencies(
            head_dim, rope_theta, scaling, factor, low_freq_factor, high_freq_factor,
            original_max_position).astype("float32")

    def cos_sin(self, positions):
        """cos and sin of the angles, each (batch|1, 1, seq, head_dim), float32."""
        positions = ops.cast(positions, "float32")
        if len(positions.shape) == 1:
            positions = positions[None, :]
        angles = positions[:, :, None] * ops.convert_to_tensor(self._inv_freq)  # (b, seq, d/2)
        angles = ops.concatenate([angles, angles], axis=-1)[:, None]  # (b, 1, seq, head_dim)
        return ops.cos(angles), ops.sin(angles)

    def call(self, x, positions):
        cos, sin = self.cos_sin(positions)
        half = self.head_dim // 2
        x32 = ops.cast(x, "float32")
        rotated = ops.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
        return ops.cast(x32 * cos + rotated * sin, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(head_dim=self.head_dim, rope_theta=self.rope_theta,
                      scaling=self.scaling, factor=self.factor,
                      low_freq_factor=self.low_freq_factor,
                      high_freq_factor=self.high_freq_factor,
                      original_max_position=self.original_max_position)
        return config
