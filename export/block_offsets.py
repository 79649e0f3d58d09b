"""Asymmetric 4-bit blocks on TFLite's symmetric int4 kernels: a scale and an offset per block.

TFLite's blockwise int4 (what XNNPACK runs fast, and what ai-edge-quantizer writes) has one
scale per block of input values and no zero point: `w = s * k`, `k` in [-8, 7]. The 4-bit
formats models ship in are asymmetric (GGUF's Q4_1, AWQ/GPTQ with zero points): `w = d * q
+ m` per block. Re-quantizing such weights symmetrically moves almost every one of them
(SmolLM2-135M from its Q4_1 GGUF: next-token agreement with float fell to 41%), and even
for float checkpoints a symmetric grid wastes a level on one side of each block.

Here each block of `block` input values is written as `w ~= s * k + c`: `s * k` is an exact
symmetric int4 grid holding both -8 and 7, which ai-edge-quantizer's dequantized-weight-
recovery algorithm stores without loss (it reads the scale off the grid rather than
re-deriving one), and `c` is the block's offset. Since
`x . (s*k + c) = x . (s*k) + c * sum(x_block)`, a layer computes `x @ grid` (the int4 matmul)
plus `block_sums(x) @ offsets`, a second matmul `block` times smaller whose offsets are
stored in int8 per output channel (dequantized once; their error is about 1% of one int4
step, against the half step symmetric re-quantization costs). A Q4_1
block is reproduced exactly up to the scale's bfloat16 rounding (the quantizer stores
scales as bf16-rounded fp16): `k = q - 8`, `c = m + 8 d`.

`block_offsets(model, blocks)` applies this to the Dense layers of a causal LM's blocks and to
its token table (lookup and output projection), part by part, while an export traces it,
and puts the original weights back afterwards.
"""

from __future__ import annotations

import contextlib

import numpy as np

# Name scope of the offset matmuls and lookups, which the quantizer's recipe gives int8.
OFFSET_SCOPE = "block_offset"


def _bf16(x):
    """Round float32 `x` to the nearest bfloat16 value (kept as float32)."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def asymmetric_blocks(weights, block):
    """Split `weights` [out, in] into an int4 grid and per-block offsets.

    Args:
        weights: float array [out, in]; `in` a multiple of `block`.
        block: input values per block.

    Returns:
        (grid [out, in] float32, each block exactly `s * k` with `k` in [-8, 7], `-8` present
        and `s` a bfloat16 value; offsets [out, in // block] float32), with
        `grid + repeat(offsets, block)` ~= `weights`.

    Example:
        >>> grid, offsets = asymmetric_blocks(np.arange(64.0).reshape(1, 64), 32)
        >>> np.abs(grid + np.repeat(offsets, 32, 1) - np.arange(64.0)).max() < 0.5
        True
    """
    w = np.asarray(weights, np.float64)
    out, width = w.shape
    blocks = w.reshape(out, width // block, block)  # (out, blocks, block)
    low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    scale = _bf16((high - low) / 15).astype(np.float64)
    # A constant block still needs a positive scale; its values all land on k = -8.
    scale = np.where(scale > 0, scale, _bf16(np.maximum(np.abs(low), 1e-6) / 8))
    k = np.clip(np.rint((blocks - low) / scale), 0, 15) - 8
    grid = (scale * k).astype(np.float32)
    # The least-squares offset given the grid (= m + 8 d for a Q4_1 block).
    offsets = (blocks - grid).mean(-1)
    return grid.reshape(out, width), offsets.astype(np.float32)


def block_sums(x, block):
    """Sum of each run of `block` values along the last axis: (..., in) -> (..., in/block)."""
    from keras import ops

    shape = ops.shape(x)
    return ops.sum(ops.reshape(x, (*shape[:-1], shape[-1] // block, block)), axis=-1)


def _dense_layers(layer):
    """The Dense layers under `layer`."""
    import keras

    return [sub for sub in layer._flatten_layers(include_self=False)
            if isinstance(sub, keras.layers.Dense)]


def part_blocks(mode, parts=None):
    """{"embedding" | "attention" | "ffn": block size} of the parts whose mode (`parts`'s,
    else `mode`) is an int4-asym one; {} when none is."""
    parts = parts or {}
    blocks = {}
    for part in ("embedding", "attention", "ffn"):
        part_mode = parts.get(part) or mode
        if part_mode.startswith("int4-asym-block"):
            blocks[part] = int(part_mode.rsplit("block", 1)[1])
    return blocks


@contextlib.contextmanager
def block_offsets(model, blocks):
    """While tracing a causal LM for export, run its weights as int4 grids plus offsets.

    The Dense layers of each transformer block's attention and feed-forward, and the token
    table (lookup and output projection), as `blocks` names them, hold the grid (their
    values change) where their input width is a multiple of the block; the offsets live in
    float variables the model tracks for the trace. Weights are restored on exit.

    Args:
        model: a tfllm CausalLM.
        blocks: {"embedding" | "attention" | "ffn": block size}, e.g. `part_blocks(mode)`.

    Yields:
        the shapes of the token-offset tables (for `weight_quantization.quantize_weights`).

    Example:
        >>> with block_offsets(model, {"ffn": 32}):  # doctest: +SKIP
        ...     archive.add_endpoint("decode", step, input_signature=signature)
    """
    import tensorflow as tf
    from keras import ops

    from tfllm.layers import embedding_lookup

    restore, patched = [], []
    holders = []

    def offset_variable(values, name):
        # Variables (not constants) so every signature shares one copy.
        var = tf.Variable(values, trainable=False, name=name)
        holders.append(var)
        return var

    from tfllm.layers import RMSNorm

    dense, norms = [], []
    for blk in model.backbone.blocks:
        for part, layer in (("attention", blk.attention), ("ffn", blk.ffn)):
            if part in blocks:
                dense += [(layer, blocks[part]) for layer in _dense_layers(layer)]
        if dense:
            norms += [n for n in blk._flatten_layers(include_self=False) if isinstance(n, RMSNorm)]
    if "embedding" in blocks and isinstance(getattr(model.backbone, "norm", None), RMSNorm):
        norms.append(model.backbone.norm)
    try:
        # The converter folds a norm's constant scale into the next matmul's weights, which
        # would take them off their grid: the scale is applied per token instead.
        for norm in norms:
            object.__setattr__(norm, "call", lambda x, foldable_scale=True, _norm=norm:
                               RMSNorm.call(_norm, x, foldable_scale=False))
            patched.append(norm)

        for layer, block in dense:
            kernel = layer.kernel  # (in, out)
            if kernel.shape[0] % block:
                continue
            original = np.array(kernel.numpy())
            grid, offsets = asymmetric_blocks(original.T, block)
            restore.append((kernel, original))
            kernel.assign(grid.T)
            table = offset_variable(offsets.T, f"{layer.name}_offsets")  # (in/block, out)

            def call(inputs, *args, _layer=layer, _table=table, _block=block, **kwargs):
                y = type(_layer).call(_layer, inputs, *args, **kwargs)
                with tf.name_scope(OFFSET_SCOPE):
                    return y + ops.matmul(block_sums(inputs, _block),
                                          ops.cast(_table, y.dtype))

            object.__setattr__(layer, "call", call)
            patched.append(layer)

        emb = model.backbone.embedding
        block = blocks.get("embedding")
        tables = [] if block is None else [emb.token_embeddings]
        if tables and not emb.tie_embeddings:
            tables.append(emb.output_embeddings)
        grids = {}
        for var in tables:
            if var.shape[1] % block:
                continue
            original = np.array(var.numpy())
            grid, offsets = asymmetric_blocks(original, block)
            restore.append((var, original))
            var.assign(grid)
            grids[id(var)] = offset_variable(offsets, "token_offsets")  # (vocab, d/block)
        if grids:
            lookup_offsets = grids.get(id(emb.token_embeddings))
            head = emb.token_embeddings if emb.tie_embeddings else emb.output_embeddings
            head_offsets = grids.get(id(head))

            def emb_call(token_ids, *args, **kwargs):
                x = type(emb).call(emb, token_ids, *args, **kwargs)
                if lookup_offsets is None:
                    return x
                with tf.name_scope(OFFSET_SCOPE):
                    # (batch, seq, d/block); EMBEDDING_LOOKUP so the quantizer reaches it
                    rows = embedding_lookup(ops.cast(lookup_offsets, x.dtype), token_ids)
                    shape = ops.shape(x)  # (batch, seq, d) -> (batch, seq, d/block, block)
                    x = ops.reshape(x, (*shape[:-1], shape[-1] // block, block))
                    return ops.reshape(x + rows[..., None], shape)

            def logits(hidden):
                y = type(emb).logits(emb, hidden)
                if head_offsets is None:
                    return y
                with tf.name_scope(OFFSET_SCOPE):
                    return y + ops.matmul(block_sums(hidden, block),
                                          ops.transpose(ops.cast(head_offsets, y.dtype)))

            object.__setattr__(emb, "call", emb_call)
            object.__setattr__(emb, "logits", logits)
            patched.append(emb)
        # The export archive saves what the model tracks; the offsets ride along.
        object.__setattr__(model, "_tfllm_block_offsets", tf.Module())
        model._tfllm_block_offsets.tables = holders
        yield [tuple(v.shape) for v in grids.values()]
    finally:
        for var, original in restore:
            var.assign(original)
        for layer in patched:
            for attr in ("call", "logits"):
                if attr in layer.__dict__:
                    object.__delattr__(layer, attr)
        if "_tfllm_block_offsets" in model.__dict__:
            object.__delattr__(model, "_tfllm_block_offsets")
