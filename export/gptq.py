"""Asymmetric int4 block grids, rounded weight by weight or by GPTQ against calibration text.

Both roundings put each block of `block` input values of a weight row on the same grid,
`w ~= low + scale * q` with `q` in [0, 15], `low` the block's smallest weight and `scale` a
bfloat16 value (`block_params`); `export.block_offsets` stores it as an int4 grid plus one
offset per block. They differ in which level each weight takes:

- round to nearest (`round_blocks`): each weight its nearest level, independently;
- GPTQ (`gptq_blocks`; Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
  Generative Pre-trained Transformers"): the input columns are rounded one after another,
  and each column's rounding error is spread over the columns not yet rounded so as to
  minimise the layer's output error `||X (W - Q)^T||` on calibration activations `X`,
  through the inverse of their second moment `H = X^T X`. Columns go in order of decreasing
  `diag(H)` (the paper's "act order"), and every block's grid is fixed from the original
  weights first ("static groups"), so the order never changes a grid.

Nearest rounding keeps weights already on such a grid (a GGUF's Q4_1) to within the
scale's bfloat16 rounding; GPTQ spreads even those small errors and tips some weights a
whole level (SmolLM2-135M's Q4_1 layers all by GPTQ: agreement 90.9% -> 89.3%), so
`export.block_offsets` keeps a layer's GPTQ levels only where they move its output on the
calibration text less, and skips GPTQ for weights on a grid. Where the weights are finer
than 4 bits, GPTQ moves far fewer predictions: Gemma 3 270M (its GGUF's q/k/gate/up projections
are Q5_0, 5 bits), every layer re-quantized in Keras with float activations, next-token
agreement with float 69.1% (nearest) -> 83.5% (GPTQ, 128 windows of 128 tokens); figures
in benchmarks/README.md. The loop is NumPy's (per column, in float64): a few seconds for a
135M model's layers, under a minute for Gemma 3 270M's.

Why not Keras's own GPTQ (`model.quantize("gptq")`): it quantizes Keras layers in place to
its own symmetric int4 kernels, which TFLite's converter does not read as blockwise int4 and
which cannot carry the per-block offsets this exporter stores; the algorithm is a few
dozen lines, the grid has to be this exporter's.
"""

from __future__ import annotations

import numpy as np

# Added to H's diagonal, times its mean (the paper's 1%): keeps H invertible where the
# calibration text leaves directions unseen. 10% agreed worse on Gemma 3 270M (77.8% vs
# 80.8% without act order).
DAMP = 0.01
# Columns rounded between two updates of the columns after them (the paper's lazy batch):
# the same result as one column at a time, in fewer, larger matrix products.
LAZY_COLUMNS = 128


def bf16(x):
    """Round float32 `x` to the nearest bfloat16 value (kept as float32): the precision
    ai-edge-quantizer stores a block's scale in."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def block_params(blocks):
    """(low, scale) of each block of `blocks` [..., block]: the grid `low + scale * q`,
    q in [0, 15], spanning the block, its scale a bfloat16 value (float64 arrays, the last
    axis kept with length 1).

    A block whose values already sit on 16 or fewer evenly spaced levels keeps those
    levels' spacing (`lattice_steps`), whatever levels it uses: a GGUF's Q4_K blocks
    (scales and minimums fitted by search, not from the block's range) use levels 0..15
    in only 79% of Gemma 3 270M's blocks, and a grid spanning the others' range would move
    their weights."""
    blocks = np.asarray(blocks, np.float64)
    low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    scale = bf16((high - low) / 15).astype(np.float64)
    step = lattice_steps(blocks)
    scale = np.where(np.isfinite(step), bf16(np.where(np.isfinite(step), step, 0)), scale)
    # A constant block still needs a positive scale; its values all land on q = 0.
    scale = np.where(scale > 0, scale, bf16(np.maximum(np.abs(low), 1e-6) / 8))
    return low, scale


def lattice_steps(blocks, levels=16, tolerance=0.02):
    """The spacing of the evenly spaced levels each block of `blocks` [..., block] sits on
    (within `tolerance` of a step), spanning at most `levels` of them; inf where a block
    does not (or is constant). float64 [..., 1].

    Example:
        >>> lattice_steps(np.array([[0.1, 0.4, 0.7, 0.1], [0.0, 0.3, 0.31, 1.0]]))[:, 0]
        array([0.3, inf])
    """
    blocks = np.asarray(blocks, np.float64)
    ordered = np.sort(blocks, -1)
    low = ordered[..., :1]
    span = ordered[..., -1:] - low
    gaps = np.diff(ordered, axis=-1)
    # Repeats of one level differ by float rounding at most.
    gaps = np.where(gaps > 1e-4 * span, gaps, np.inf)
    step = gaps.min(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        codes = (blocks - low) / step
    fits = ((np.abs(codes - np.rint(codes)) <= tolerance).all(-1, keepdims=True)
            & (np.rint(codes).max(-1, keepdims=True) <= levels - 1) & (span > 0))
    return np.where(fits, step, np.inf)


def round_blocks(weights, block):
    """Nearest-level codes of `weights` [out, in] on their blocks' grids.

    Returns:
        (codes [out, in] in [0, 15], low [out, in/block], scale [out, in/block]).
    """
    w = np.asarray(weights, np.float64)
    out, width = w.shape
    blocks = w.reshape(out, width // block, block)  # (out, blocks, block)
    low, scale = block_params(blocks)
    codes = np.clip(np.rint((blocks - low) / scale), 0, 15)
    return codes.reshape(out, width), low[..., 0], scale[..., 0]


def gptq_blocks(weights, hessian, block, damp=DAMP):
    """GPTQ codes of `weights` [out, in] on the grids of their original blocks.

    Args:
        weights: float array [out, in]; `in` a multiple of `block`.
        hessian: `X^T X` [in, in] of the layer's calibration inputs `X` [tokens, in].
        block: input values per block.
        damp: added to the diagonal, times its mean.

    Returns:
        (codes [out, in] in [0, 15], low [out, in/block], scale [out, in/block]), as
        `round_blocks`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(256, 64))
        >>> w = np.random.default_rng(1).normal(size=(8, 64))
        >>> codes, low, scale = gptq_blocks(w, x.T @ x, 32)
        >>> codes.shape, low.shape
        ((8, 64), (8, 2))
    """
    w = np.array(weights, np.float64)
    out, width = w.shape
    h = np.array(hessian, np.float64)
    _, low, scale = round_blocks(w, block)
    # Inputs the calibration never saw: nothing to weigh their error by; rounded to
    # nearest (their column of H is zero, so no error spreads to or from them).
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(width)] += damp * np.mean(np.diag(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[order][:, order]
    column_low = np.repeat(low, block, 1)[:, order]  # each column's block grid
    column_scale = np.repeat(scale, block, 1)[:, order]
    # Upper Cholesky factor of H^-1: row i holds how column i's error spreads to the later
    # columns, given the columns before it are fixed.
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.empty_like(w)
    for start in range(0, width, LAZY_COLUMNS):
        stop = min(start + LAZY_COLUMNS, width)
        part = w[:, start:stop].copy()
        errors = np.empty_like(part)
        for i in range(stop - start):
            c = start + i
            q = np.clip(np.rint((part[:, i] - column_low[:, c]) / column_scale[:, c]), 0, 15)
            codes[:, c] = q
            error = (part[:, i] - (column_low[:, c] + column_scale[:, c] * q)) / u[c, c]
            part[:, i:] -= np.outer(error, u[c, c:stop])
            errors[:, i] = error
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return codes[:, np.argsort(order)], low, scale
