"""RMSNorm, rotary embeddings and the gated feed-forward against independent NumPy code."""

import math

import numpy as np
import pytest
from keras import ops

from tests.harness import run_layer_test
from tfllm.config import ConfigError
from tfllm.layers import GatedFeedForward, RMSNorm, RotaryEmbedding, rope_inverse_frequencies

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 6, 16)).astype("float32")


def test_rms_norm(tmp_path):
    layer = run_layer_test(RMSNorm, dict(epsilon=1e-5), X, (2, 6, 16), tmp_path)
    layer.scale.assign(RNG.normal(size=16).astype("float32"))
    scale = ops.convert_to_numpy(layer.scale)
    expected = X / np.sqrt((X.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(ops.convert_to_numpy(layer(X)), expected, atol=1e-5)
    # The unfoldable form (the final norm of TFLite exports with a tied table) agrees.
    from tfllm.layers import export_hooks

    with export_hooks.tracing(norm_scale={layer: "per_token"}):
        per_token = layer(X)
    np.testing.assert_allclose(ops.convert_to_numpy(per_token), expected,
                               atol=1e-5)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_gated_feed_forward(tmp_path, activation, use_bias):
    layer = run_layer_test(GatedFeedForward,
                           dict(d_model=16, ffn_dim=24, activation=activation,
                                use_bias=use_bias, dropout=0.0, initializer_stddev=0.02,
                                output_stddev=0.01, kernel_initializer="normal"),
                           X, (2, 6, 16), tmp_path)
    assert len(layer.weights) == (6 if use_bias else 3)

    def dense(d, x):
        w = [ops.convert_to_numpy(v) for v in d.weights]
        return x @ w[0] + (w[1] if use_bias else 0)
    g = dense(layer.gate, X)
    if activation == "silu":
        g = g / (1 + np.exp(-g))
    else:
        g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    expected = dense(layer.down, g * dense(layer.up, X))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(X)), expected, atol=1e-5)


def _rope_reference(x, positions, inv_freq):
    """Each pair (i, i + d/2) as a complex number, rotated by position * frequency.

    The angle is a float32 product, as in the Hugging Face reference (inv_freq float32 times
    float32 positions): at position 4000 a float64 angle differs by ~2e-4 rad.
    """
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    angle = (np.float32(1) * positions.astype(np.float32)[:, None]
             * inv_freq.astype(np.float32)[None, :]).astype(np.float64)  # (seq, d/2)
    z = z * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


def _meta_llama3_scaling(freqs, factor, low, high, old_len):
    """Meta's own `apply_scaling` (llama-models), written as its loop of cases."""
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:
            out.append(f)
        elif wavelen > old_len / low:
            out.append(f / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


@pytest.mark.parametrize("scaling, kwargs", [
    (None, {}),
    ("linear", dict(factor=4.0)),
    ("llama3", dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position=8192)),
])
def test_rotary_matches_reference(scaling, kwargs):
    head_dim, theta = 64, 500000.0
    base = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    if scaling == "linear":
        expected_freq = base / 4.0
    elif scaling == "llama3":
        expected_freq = _meta_llama3_scaling(base, 32.0, 1.0, 4.0, 8192)
        # The blend covers some frequencies: all three cases occur.
        assert (expected_freq == base).any() and (expected_freq == base / 32).any()
        assert ((expected_freq != base) & (expected_freq != base / 32)).any()
    else:
        expected_freq = base
    inv = rope_inverse_frequencies(head_dim, theta, scaling, **kwargs)
    np.testing.assert_allclose(inv, expected_freq, rtol=1e-12)

    rope = RotaryEmbedding(head_dim, theta, scaling, **kwargs)
    x = RNG.normal(size=(2, 3, 5, head_dim)).astype("float32")
    positions = np.array([0, 1, 7, 100, 4000], np.int32)
    got = ops.convert_to_numpy(rope(x, positions))
    np.testing.assert_allclose(got, _rope_reference(x, positions, inv), atol=1e-5)
    # Per-row positions (batch, seq) give each row its own rotation.
    rows = np.stack([positions, positions + 3])
    got_rows = ops.convert_to_numpy(rope(x, rows))
    np.testing.assert_allclose(got_rows[1], _rope_reference(x[1], rows[1], inv), atol=1e-5)


def test_rotary_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(head_dim=16, rope_theta=10000.0)
    q = RNG.normal(size=(1, 1, 1, 16)).astype("float32")
    k = RNG.normal(size=(1, 1, 1, 16)).astype("float32")

    def score(m, n):
        a = ops.convert_to_numpy(rope(q, np.array([m])))
        b = ops.convert_to_numpy(rope(k, np.array([n])))
        return float((a * b).sum())
    assert score(10, 3) == pytest.approx(score(107, 100), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)


def test_rotary_config_round_trip_and_errors():
    rope = RotaryEmbedding(head_dim=8, rope_theta=1e6, scaling="llama3", factor=8.0)
    config = rope.get_config()
    clone = RotaryEmbedding.from_config(config)
    assert clone.get_config() == config
    x = RNG.normal(size=(1, 2, 3, 8)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(x, np.arange(3))),
                                  ops.convert_to_numpy(rope(x, np.arange(3))))
    with pytest.raises(ConfigError, match="unsupported rope scaling 'yarn'"):
        RotaryEmbedding(head_dim=8, scaling="yarn")
    with pytest.raises(ConfigError, match="even head_dim"):
        RotaryEmbedding(head_dim=7)
