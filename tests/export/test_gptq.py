"""GPTQ's rounding of int4 grids (export/gptq.py) against nearest rounding, on the same
grids: values, not that it ran."""

import numpy as np

from export.block_offsets import asymmetric_blocks
from export.gptq import gptq_blocks, round_blocks


def _correlated_inputs(rng, tokens, width, held_out=0):
    """Calibration inputs [tokens, width] (and `held_out` more tokens from the same
    distribution): real layer inputs are correlated across channels, with channels of
    different sizes, which is what GPTQ exploits."""
    mix = rng.normal(size=(width, width)) / np.sqrt(width) + np.eye(width)
    x = rng.normal(size=(tokens + held_out, width)) @ mix * rng.uniform(0.2, 3.0, width)
    return (x[:tokens], x[tokens:]) if held_out else x


def _dequantize(codes, low, scale, block):
    return np.repeat(low, block, 1) + np.repeat(scale, block, 1) * codes


def test_gptq_moves_the_layer_output_less_than_nearest_rounding_on_the_same_grids():
    rng = np.random.default_rng(0)
    x, fresh = _correlated_inputs(rng, 2048, 128, held_out=2048)
    w = rng.normal(0, 0.05, (48, 128))
    near = round_blocks(w, 32)
    codes, low, scale = gptq_blocks(w, x.T @ x, 32)
    # Same grids; integer levels on them.
    np.testing.assert_array_equal(low, near[1])
    np.testing.assert_array_equal(scale, near[2])
    assert np.array_equal(codes, np.rint(codes)) and codes.min() >= 0 and codes.max() <= 15
    def output_error(q):  # on tokens GPTQ did not see
        return float(np.linalg.norm(fresh @ (w - _dequantize(*q, 32)).T))

    # Each weight moves further than by nearest rounding, the layer's output less.
    assert np.abs(w - _dequantize(codes, low, scale, 32)).mean() > np.abs(
        w - _dequantize(*near, 32)).mean()
    assert output_error((codes, low, scale)) < 0.75 * output_error(near), (
        output_error((codes, low, scale)), output_error(near))


def test_gptq_keeps_weights_already_on_the_grid_and_rounds_unseen_inputs_to_nearest():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (16, 64))
    near = round_blocks(w, 32)
    on_grid = _dequantize(*near, 32)  # weights a Q4_1-like GGUF would hold
    x = _correlated_inputs(rng, 512, 64)
    codes, _, _ = gptq_blocks(on_grid, x.T @ x, 32)
    np.testing.assert_array_equal(codes, round_blocks(on_grid, 32)[0])
    # Channels the calibration never saw (all-zero inputs): nearest rounding there.
    x[:, :32] = 0
    codes, _, _ = gptq_blocks(w, x.T @ x, 32)
    np.testing.assert_array_equal(codes[:, :32], near[0][:, :32])
    assert not np.array_equal(codes[:, 32:], near[0][:, 32:])


def test_asymmetric_blocks_store_gptq_levels_exactly_with_minus_eight_in_every_block():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (32, 96))
    x = _correlated_inputs(rng, 1024, 96)
    h = x.T @ x
    codes, low, scale = gptq_blocks(w, h, 32)
    grid, offsets = asymmetric_blocks(w, 32, h)
    # The quantizer reads each block's scale off its grid: integers in [-8, 7], -8 present.
    s = np.repeat(scale, 32, 1)
    k = grid / s
    np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
    blocks = np.rint(k).reshape(32, 3, 32)
    assert (blocks.min(-1) == -8).all() and blocks.max() <= 7
    np.testing.assert_allclose(grid + np.repeat(offsets, 32, 1), _dequantize(codes, low, scale, 32),
                               atol=1e-6)
    # Some block's lowest GPTQ level was above 0 (the shift is exercised here).
    assert (codes.reshape(32, 3, 32).min(-1) > 0).any()


def test_asymmetric_blocks_keep_q4_1_weights_and_use_gptq_only_where_it_moves_the_output_less():
    rng = np.random.default_rng(3)
    x = _correlated_inputs(rng, 1024, 128)
    h = x.T @ x
    # A Q4_1 GGUF's blocks: fp16 scales and minimums, which the bf16 grid only approximates.
    d = rng.uniform(0.002, 0.05, (24, 4, 1)).astype(np.float16).astype(np.float64)
    m = (-7.5 * d + rng.normal(0, 0.01, d.shape)).astype(np.float16).astype(np.float64)
    q = rng.integers(0, 16, (24, 4, 32))
    q[..., 0], q[..., 1] = 0, 15
    q4_1 = (d * q + m).reshape(24, 128)
    for a, b in zip(asymmetric_blocks(q4_1, 32, h), asymmetric_blocks(q4_1, 32)):
        np.testing.assert_array_equal(a, b)
    # Float weights: GPTQ's levels, which move the calibration output less.
    w = rng.normal(0, 0.05, (24, 128))
    near, chosen = asymmetric_blocks(w, 32), asymmetric_blocks(w, 32, h)
    assert not np.array_equal(near[0], chosen[0])

    def output_error(stored):
        grid, offsets = stored
        return float(np.linalg.norm(x @ (w - grid - np.repeat(offsets, 32, 1)).T))

    assert output_error(chosen) < 0.8 * output_error(near), (output_error(chosen),
                                                             output_error(near))


def test_calibrated_int4_asym_trace_moves_a_float_models_logits_less():
    """Through `block_offsets` (what the exporter traces): a model with float weights, its
    layers on int4-asym grids, with calibration text (GPTQ's levels) and without (nearest):
    the logits on other text move less with it; the model's own weights are put back."""
    import export.block_offsets as bo
    from tests.export.tiny_models import tiny_llama

    lm = tiny_llama(d_model=64, ffn_dim=128)
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 96, 32).tolist() for _ in range(24)]
    held_out = np.array([rng.integers(0, 96, 32) for _ in range(4)], np.int32)
    exact = lm(held_out).numpy()
    errors = {}
    for name, windows in (("nearest", None), ("gptq", calibration)):
        with bo.block_offsets(lm, {"attention": 32, "ffn": 32}, windows):
            errors[name] = float(np.sqrt(np.mean((lm(held_out).numpy() - exact) ** 2)))
    assert errors["gptq"] < 0.85 * errors["nearest"], errors
    np.testing.assert_array_equal(lm(held_out).numpy(), exact)


def test_q4_k_blocks_that_use_part_of_their_levels_stay_exact():
    """A GGUF's Q4_K blocks (scale and minimum fitted by search) often leave levels 0 or 15
    unused: the grid keeps the block's own spacing (not its range over 15), so the weights
    stay where they are, and GPTQ is skipped; 17 levels or random floats are off any grid."""
    from export.block_offsets import on_int4_grid
    from export.gptq import lattice_steps

    rng = np.random.default_rng(4)
    d = rng.uniform(0.002, 0.05, (24, 4, 1)).astype(np.float16).astype(np.float64)
    m = rng.uniform(0, 0.3, d.shape).astype(np.float16).astype(np.float64)
    q = rng.integers(2, 14, (24, 4, 32))  # levels 2..13 only
    q[..., 0], q[..., 1] = 2, 13
    q4_k = (d * q - m).reshape(24, 128)
    np.testing.assert_allclose(lattice_steps(q4_k.reshape(24, 4, 32)), d, rtol=1e-9)
    assert on_int4_grid(q4_k, 32)
    grid, offsets = asymmetric_blocks(q4_k, 32)
    stored = grid + np.repeat(offsets, 32, 1)
    # Within the scale's bfloat16 rounding (2^-9 of a step per level), not half a step.
    assert np.abs(stored - q4_k).max() <= 0.06 * d.max(), np.abs(stored - q4_k).max() / d.max()
    x = _correlated_inputs(rng, 1024, 128)
    np.testing.assert_array_equal(asymmetric_blocks(q4_k, 32, x.T @ x)[0], grid)
    # A block spanning 17 levels, and float weights, are not on a 4-bit grid.
    wide = q4_k.copy()
    wide[0, :17] = d[0, 0, 0] * np.arange(17)
    assert not on_int4_grid(wide, 32)
    assert not on_int4_grid(rng.normal(0, 0.05, (24, 128)), 32)
    assert np.isinf(lattice_steps(rng.normal(0, 0.05, (24, 4, 32)))).all()
