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

Activation outliers. XNNPACK's int4 (and int8) matmuls quantize their input to int8 per
token, one scale per row. A few input channels of a real LM carry activations hundreds of
times larger than the rest on some tokens (SmolLM2-135M: up to 3164 against a median of 8
into a down projection), and that row's scale then rounds every other channel to a few
levels: with exact weights, that alone left SmolLM2's next-token agreement at 89.7%. Given
calibration text, each layer's `OUTLIER_BLOCKS` input blocks with the largest calibration
peaks get matmuls of their own (grid and offsets, as the rest; its own per-token activation
scale), so the rest are quantized at their own range. Blocks are cut whole, so the grids
stay exact (int8 weights for the outlier blocks cost more than they gave: a massive
activation times the int8 rounding of its weight). The output projection is split the same
way (`head_block`; a tied table's lookup reads both column sets). Only layers with a
marked outlier are split (`OUTLIER_RATIO`), and the output projection always
(`HEAD_OUTLIER_RATIO`). SmolLM2 exported at int4-asym-block32 with an int8 table: agreement
with float 86.5% -> 90.5% (layers) -> 92.5% (and head), same size; its decode graph,
timed call by call against the unsplit one, within 2%.

Rounding. Weights finer than 4 bits (a float checkpoint, a GGUF's Q5_0 or Q8_0 tensors)
have to move to reach a grid. Given calibration text, the same pass that finds the peaks
collects each layer's input second moment, and GPTQ (`export.gptq`) picks every weight's
level so that the layer's output on that text moves least, kept for a layer where it does
move that output less than nearest rounding (every layer of Gemma 3 270M's GGUF, none of
SmolLM2's Q4_1 ones, which stay where they are); without calibration, each weight takes its
nearest level. The grids themselves (each block's low value and scale) are the same.

Op count. On 2 threads each op of a decode step costs a few microseconds of dispatch
whatever its size, and the offsets path adds four per layer (reshape, sum, matmul, add):
a gated feed-forward's gate and up projections, which read the same input, are traced as
one grid matmul (and one offsets path) and split after (`GatedFeedForward.gate_up`), which
makes SmolLM2's decode graph faster than with the two traced apart (benchmarks/README.md,
"On-device at real scale", has the figures and what the offsets path costs).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .gptq import gptq_blocks, round_blocks

# Name scope of the offset matmuls and lookups, which the quantizer's recipe gives int8.
OFFSET_SCOPE = "block_offset"
# Name scope of the outlier blocks' matmuls (a name only: their part's recipe applies).
OUTLIER_SCOPE = "outlier_blocks"
# Input blocks per layer given their own matmul: simulating the kernels' rounding on
# SmolLM2-135M (every layer split, float token table), 1 block gave 91.7%, 2 gave 93.7%,
# 3 and 4 gave 92.7-92.9% (the moderate blocks they add are rounded at the largest one's
# scale).
OUTLIER_BLOCKS = 2
# Layers whose largest input block peaks under this many times their median block are not
# split: each split adds about 8 ops to every decode step. On SmolLM2-135M this splits the
# few layers whose massive activations cost agreement and leaves the decode graph as fast
# as unsplit's; splitting every layer agreed barely better at a larger file (figures in
# benchmarks/README.md, "On-device at real scale").
OUTLIER_RATIO = 4.0
# The output projection (a dynamic-int8 or symmetric int4 token table) is split whatever
# its ratio: it is one matmul per step (its split costs 4 ops of some 2,500) and its
# rounding lands on the logits. SmolLM2-135M's head input peaks at 3.3x its median block,
# under OUTLIER_RATIO; split anyway, next-token agreement with float 90.5% -> 92.5% (loss
# 4.1363 -> 4.1226, float's 4.1242), same size, decode graph within 2% (call by call).
HEAD_OUTLIER_RATIO = 1.0
# Name scope of the int4-mixed modes' int8 matmuls and token-table lookups (see
# `block_offsets`), which the quantizer's recipe gives dynamic int8 per channel.
INT8_SCOPE = "int8_chunks"
# Input values per int8 matmul of the int4-mixed modes: each chunk gets its own per-token
# activation scale (XNNPACK quantizes a matmul's input per row) and its own per-channel
# weight scales. Simulated on Gemma 3 270M (Keras, weights and activations rounded as the
# kernels do; Q4_K layers exact): one chunk per matmul 89.5%, 320 90.3%, 128 92.5%, 64
# 93.9% next-token agreement with float. Exported (the gate's windows): 128 90.3%, 282 MB,
# decode step 15.6 ms on 2 threads; 64 92.7%, 305 MB (a scale and an int64 zero point per
# row and chunk of the 262k-row table), 18.7 ms: each chunk is an op of every step.
INT8_CHUNK = 128


def asymmetric_blocks(weights, block, hessian=None):
    """Split `weights` [out, in] into an int4 grid and per-block offsets.

    Args:
        weights: float array [out, in]; `in` a multiple of `block`.
        block: input values per block.
        hessian: `X^T X` [in, in] of the layer's calibration inputs: the levels are chosen
            by GPTQ (`export.gptq`); None rounds each weight to its nearest level.

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
    shape = (out, width // block, block)  # (out, blocks, block)
    grid, offsets, on_grid = _nearest_grid(w, block)
    # Weights on a grid already (a GGUF's Q4_1 or Q4_K) are kept to within the scale's
    # bfloat16 rounding; GPTQ has nothing to gain there (and its time is spared).
    if hessian is not None and not on_grid:
        g_codes, g_low, g_scale = gptq_blocks(w, hessian, block)
        g_codes, g_scale = g_codes.reshape(shape), g_scale[..., None]
        # GPTQ may leave a block's lowest level unused: its codes move down so that -8 is
        # there (the quantizer reads the scale off the grid) and the offset moves up.
        shift = g_codes.min(-1, keepdims=True)
        g_grid = g_scale * (g_codes - shift - 8)
        # Exactly the levels GPTQ chose (a least-squares offset would undo part of the
        # error it spread).
        g_offsets = g_low + g_scale[..., 0] * (shift[..., 0] + 8)
        # Kept only where it moves the layer's output on the calibration text less.
        # Weights already on a grid (Q4_1) lie within the scale's bfloat16 rounding of
        # it, and GPTQ, spreading those small errors, tips some weights a whole level:
        # SmolLM2's Q4_1 layers all by GPTQ, agreement 90.9% -> 89.3%.
        if _output_error(w, g_grid, g_offsets, hessian) < _output_error(w, grid, offsets,
                                                                       hessian):
            grid, offsets = g_grid, g_offsets
    return grid.astype(np.float32).reshape(out, width), offsets.astype(np.float32)


def _nearest_grid(w, block):
    """(grid [out, blocks, block], least-squares offsets [out, blocks], whether every
    weight lies within a tenth of a step of its level) of float64 `w` [out, in]."""
    out, width = w.shape
    shape = (out, width // block, block)  # (out, blocks, block)
    codes, low, scale = round_blocks(w, block)
    codes, scale = codes.reshape(shape), scale[..., None]
    grid = scale * (codes - 8)
    # The least-squares offset given the grid (= m + 8 d for a Q4_1 block).
    offsets = (w.reshape(shape) - grid).mean(-1)
    on_grid = bool((np.abs(w.reshape(shape) - grid - offsets[..., None]) <= 0.1 * scale).all())
    return grid, offsets, on_grid


def on_int4_grid(weights, block):
    """Whether every block of `block` input values of `weights` [out, in] lies on 16 evenly
    spaced levels (a GGUF's Q4_0, Q4_1 or Q4_K tensor), which int4-asym stores exactly."""
    w = np.asarray(weights, np.float64)
    return w.shape[1] % block == 0 and _nearest_grid(w, block)[2]


def _output_error(weights, grid, offsets, hessian):
    """`||X (weights - stored)^T||^2` for the calibration inputs `X` (`hessian` = X^T X):
    how far the stored grid-plus-offsets moves the layer's output on that text."""
    out, width = weights.shape
    block = width // offsets.shape[1]
    diff = weights - (grid.reshape(out, width) + np.repeat(offsets, block, 1))
    return float(((diff @ hessian) * diff).sum())


def block_sums(x, block):
    """Sum of each run of `block` values along the last axis: (..., in) -> (..., in/block)."""
    from keras import ops

    shape = ops.shape(x)
    return ops.sum(ops.reshape(x, (*shape[:-1], shape[-1] // block, block)), axis=-1)


def input_peaks(model, layers, windows, hessians=None, hessian_ids=None):
    """Per input channel, the largest |activation| each layer in `layers` (and the output
    projection, key "head") sees while `model` reads `windows` (token id lists).

    Args:
        hessians: a dict to add each layer's `X^T X` [in, in] (float64) to, keyed by
            `id(layer)`, from the same pass (GPTQ's statistics); None adds none.
        hessian_ids: the `id(layer)`s whose `X^T X` is wanted (None: every layer's).

    Returns:
        {id(layer): float array [in]} and "head": [d_model].
    """
    from keras import ops

    from tfllm.layers import export_hooks

    peaks = {}

    def record(key, x):
        flat = ops.convert_to_numpy(ops.max(ops.abs(ops.reshape(x, (-1, x.shape[-1]))), 0))
        peaks[key] = np.maximum(peaks.get(key, 0.0), flat)

    wanted = {id(layer) for layer in layers}
    emb = model.backbone.embedding

    def observe(layer, step, x):
        if step == "call" and id(layer) in wanted:
            record(id(layer), x)
            if hessians is not None and (hessian_ids is None or id(layer) in hessian_ids):
                rows = np.asarray(ops.convert_to_numpy(x), np.float32).reshape(-1, x.shape[-1])
                # float32 products (BLAS), summed in float64 across batches.
                product = (rows.T @ rows).astype(np.float64)
                hessians[id(layer)] = hessians.get(id(layer), 0.0) + product
        elif step == "logits" and layer is emb:
            record("head", x)

    # Windows of one length are read 8 at a time: fewer, larger calls.
    batches = []
    for w in windows:
        if batches and len(batches[-1]) < 8 and len(batches[-1][0]) == len(w):
            batches[-1].append(w)
        else:
            batches.append([w])
    with export_hooks.tracing(observe=observe):
        for batch in batches:
            model(np.array(batch, np.int32))
    return peaks


def outlier_blocks(peaks, block, count=OUTLIER_BLOCKS, ratio=None):
    """The `count` blocks (indices, ascending) of `block` channels with the largest peaks;
    none when the largest is under `ratio` (default OUTLIER_RATIO) times the median
    block's, or when no other block would be left."""
    ratio = OUTLIER_RATIO if ratio is None else ratio
    per_block = np.asarray(peaks).reshape(-1, block).max(-1)
    if per_block.size <= count or per_block.max() < ratio * np.median(per_block):
        return []
    return sorted(np.argsort(-per_block, kind="stable")[:count].tolist())


def block_runs(blocks, block):
    """Contiguous channel ranges [(start, stop)] covering the blocks `blocks` (ascending)."""
    runs = []
    for b in blocks:
        if runs and runs[-1][1] == b * block:
            runs[-1] = (runs[-1][0], (b + 1) * block)
        else:
            runs.append((b * block, (b + 1) * block))
    return runs


def take_runs(x, runs, width):
    """`x`'s channels in `runs` (slices joined along the last axis; `x` itself if one run
    covers all `width` channels)."""
    from keras import ops

    if runs == [(0, width)]:
        return x
    parts = [x[..., a:b] for a, b in runs]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)


def _dense_layers(layer):
    """The Dense layers under `layer`."""
    import keras

    return [sub for sub in layer._flatten_layers(include_self=False)
            if isinstance(sub, keras.layers.Dense)]


def part_blocks(mode, parts=None):
    """{"embedding" | "attention" | "ffn": block size} of the parts whose mode (`parts`'s,
    else `mode`) is an int4-asym or int4-mixed one; {} when none is."""
    parts = parts or {}
    blocks = {}
    for part in ("embedding", "attention", "ffn"):
        part_mode = parts.get(part) or mode
        if part_mode.startswith(("int4-asym-block", "int4-mixed-block")):
            blocks[part] = int(part_mode.rsplit("block", 1)[1])
    return blocks


def mixed_parts(mode, parts=None):
    """The parts (a frozenset) whose mode (`parts`'s, else `mode`) is an int4-mixed one."""
    parts = parts or {}
    return frozenset(part for part in ("embedding", "attention", "ffn")
                     if (parts.get(part) or mode).startswith("int4-mixed-block"))


@contextlib.contextmanager
def block_offsets(model, blocks, calibration=None, head_block=None, mixed=frozenset()):
    """While tracing a causal LM for export, run its weights as int4 grids plus offsets.

    The Dense layers of each transformer block's attention and feed-forward, and the token
    table (lookup and output projection), as `blocks` names them, are traced as grids
    where their input width is a multiple of the block; the grids and offsets live in
    variables the model tracks for the trace. With `calibration`, each such Dense layer's
    outlier blocks (see the module docstring) get a matmul of their own, and so does the
    output projection's when `head_block` is given (the token table not int4-asym). Any
    weight changed is restored on exit.

    The parts in `mixed` (int4-mixed modes) keep each weight at the precision it has: a
    Dense layer whose weights lie on 4-bit grids already (`on_int4_grid`: a GGUF's Q4_K
    tensors) is traced as a grid, as above; any other (Q5_0, Q6_K, Q8_0, float), which 4
    bits would move, as matmuls of `INT8_CHUNK` input values each, named into `INT8_SCOPE`
    (dynamic int8 per channel). A mixed embedding's token table is always int8 in chunks:
    lookup and output projection.

    Args:
        model: a tfllm CausalLM.
        blocks: {"embedding" | "attention" | "ffn": block size}, e.g. `part_blocks(mode)`.
        calibration: token id lists (a few windows of text) whose activations pick the
            outlier blocks; None splits nothing.
        head_block: the channel block the output projection's outliers are cut in (the
            table's quantization block, 32 for per-channel modes); None splits nothing.
        mixed: the parts of `blocks` in an int4-mixed mode, e.g. `mixed_parts(mode)`.

    Yields:
        ({shape: name scope} of the token tables the lookups of this trace read besides
        the model's own (offsets, int8 chunks), for `weight_quantization.quantize_weights`;
        a tf.Module holding the grids' and offsets' variables, which the caller's export
        archive must track).

    Example:
        >>> with block_offsets(model, {"ffn": 32}, windows) as (shapes, tables):  # doctest: +SKIP
        ...     archive.track(tables)
        ...     archive.add_endpoint("decode", step, input_signature=signature)
    """
    import tensorflow as tf
    from keras import ops

    from tfllm.layers import GatedFeedForward, RMSNorm, embedding_lookup, export_hooks

    restore, holders = [], []
    replace = {}  # layer -> {step: fn(default, ...)}: how it traces (export_hooks)

    def variable(values, name):
        # Variables (not constants) so every signature shares one copy.
        var = tf.Variable(values, trainable=False, name=name)
        holders.append(var)
        return var

    dense, norms, gated, fused = [], [], [], set()
    for blk in model.backbone.blocks:
        for part, layer in (("attention", blk.attention), ("ffn", blk.ffn)):
            if part in blocks:
                dense += [(layer, blocks[part], part in mixed) for layer in _dense_layers(layer)]
        ffn = blk.ffn
        if ("ffn" in blocks and isinstance(ffn, GatedFeedForward)
                and (ffn.gate.kernel.shape[0] % blocks["ffn"] == 0 or "ffn" in mixed)):
            gated.append((ffn, blocks["ffn"], "ffn" in mixed))
            fused |= {id(ffn.gate), id(ffn.up)}
        if dense:
            norms += [n for n in blk._flatten_layers(include_self=False) if isinstance(n, RMSNorm)]
    if "embedding" in blocks and isinstance(getattr(model.backbone, "norm", None), RMSNorm):
        norms.append(model.backbone.norm)
    peaks, hessians = {}, {}
    if calibration and (dense or head_block):
        # GPTQ's statistics only where it may round: mixed parts keep off-grid weights
        # in int8 and on-grid ones where they are.
        # (A fused gate/up pair's X^T X is its gate's: one input.)
        up = {id(ffn.up) for ffn, _, _ in gated}
        peaks = input_peaks(model, [layer for layer, _, _ in dense], calibration, hessians,
                            {id(layer) for layer, _, mix in dense
                             if not mix and id(layer) not in up})
    lookup_scopes = {}
    try:
        for layer, block, mix in dense:
            if id(layer) in fused:
                continue
            kernel = np.array(layer.kernel.numpy())  # (in, out)
            if mix and not on_int4_grid(kernel.T, block):  # int8: any width
                matmul = _int8_chunks(kernel, layer.name, variable)
            elif kernel.shape[0] % block:
                continue
            else:
                matmul = _grid_matmul(kernel, block, peaks.get(id(layer)), layer.name,
                                      variable, hessians.get(id(layer)))

            def call(default, inputs, *args, _layer=layer, _matmul=matmul, **kwargs):
                y = _matmul(inputs)
                if _layer.use_bias:
                    y = y + ops.cast(_layer.bias, y.dtype)
                return _layer.activation(y) if _layer.activation is not None else y

            replace[layer] = {"call": call}

        for ffn, block, mix in gated:
            # gate and up read the same input: one grid matmul (per group) and one offsets
            # matmul for both, split after; each would otherwise quantize the same input
            # and run its own small offsets path (a few microseconds an op per token).
            kernel = np.concatenate([ffn.gate.kernel.numpy(), ffn.up.kernel.numpy()], 1)
            if mix and not on_int4_grid(kernel.T, block):
                matmul = _int8_chunks(kernel, ffn.name + "_gate_up", variable)
            else:
                # One input, so one H: GPTQ rounds each output row on its own.
                matmul = _grid_matmul(kernel, block, peaks.get(id(ffn.gate)),
                                      ffn.name + "_gate_up", variable,
                                      hessians.get(id(ffn.gate)))

            def gate_up(default, x, _ffn=ffn, _matmul=matmul):
                y = _matmul(x)  # (..., 2 * ffn_dim): [gate | up]
                if _ffn.use_bias:
                    y = y + ops.cast(ops.concatenate([_ffn.gate.bias, _ffn.up.bias], 0),
                                     y.dtype)
                return y[..., :_ffn.ffn_dim], y[..., _ffn.ffn_dim:]

            replace[ffn] = {"gate_up": gate_up}

        emb = model.backbone.embedding
        block = blocks.get("embedding")
        if "embedding" in mixed:
            replace[emb], chunk_widths = _int8_tables(emb, variable)
            lookup_scopes.update({(emb.vocab_size, w): INT8_SCOPE for w in chunk_widths})
            block = None
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
            grids[id(var)] = variable(offsets, "token_offsets")  # (vocab, d/block)
        if grids:
            lookup_offsets = grids.get(id(emb.token_embeddings))
            head = emb.token_embeddings if emb.tie_embeddings else emb.output_embeddings
            head_offsets = grids.get(id(head))

            def emb_call(default, token_ids, *args, **kwargs):
                x = default(token_ids, *args, **kwargs)
                if lookup_offsets is None:
                    return x
                with tf.name_scope(OFFSET_SCOPE):
                    # (batch, seq, d/block); EMBEDDING_LOOKUP so the quantizer reaches it
                    rows = embedding_lookup(ops.cast(lookup_offsets, x.dtype), token_ids)
                    shape = ops.shape(x)  # (batch, seq, d) -> (batch, seq, d/block, block)
                    x = ops.reshape(x, (*shape[:-1], shape[-1] // block, block))
                    return ops.reshape(x + rows[..., None], shape)

            def logits(default, hidden):
                y = default(hidden)
                if head_offsets is None:
                    return y
                with tf.name_scope(OFFSET_SCOPE):
                    return y + ops.matmul(block_sums(hidden, block),
                                          ops.transpose(ops.cast(head_offsets, y.dtype)))

            replace[emb] = {"call": emb_call, "logits": logits}
        elif (head_block and "head" in peaks and emb not in replace
              and not (emb.type_vocab_size or emb.learned_positions)):
            replace[emb] = _split_head(emb, peaks["head"], head_block, variable)
        lookup_scopes.update({tuple(v.shape): OFFSET_SCOPE for v in grids.values()})
        # The export archive saves what it tracks: the caller tracks these variables.
        module = tf.Module()
        module.tables = holders
        # The converter folds a norm's constant scale into the next matmul's weights, which
        # would take them off their grid: the scale is applied per token instead.
        with export_hooks.tracing(replace={k: v for k, v in replace.items() if v},
                                  norm_scale={norm: "per_token" for norm in norms}):
            yield lookup_scopes, module
    finally:
        for var, original in restore:
            var.assign(original)


def _grid_matmul(kernel, block, peaks, name, variable, hessian=None):
    """`x -> x @ kernel` ([in, out]) as int4 grid matmuls plus one offsets matmul: the
    main blocks and, where calibration `peaks` (None: no split) mark them, the outlier
    blocks, each group a matmul of its own; the grid rounded by GPTQ given the
    calibration's `hessian` (None: to nearest)."""
    import tensorflow as tf
    from keras import ops

    width = kernel.shape[0]
    outliers = outlier_blocks(peaks, block) if peaks is not None else []
    main = [b for b in range(width // block) if b not in outliers]
    # Each block's grid and offset depend on that block alone, so the groups' grids are row
    # sets of the layer's grid; one offsets matmul serves both (its input stays float: its
    # weights are dequantized once), in the layer's block order.
    grid, offsets = asymmetric_blocks(kernel.T, block, hessian)
    offsets = variable(offsets.T, f"{name}_offsets")  # (in/block, out)
    groups = []  # (channel runs, grid rows (in_group, out)): the main blocks, the outliers
    for n, members in enumerate((main, outliers)):
        if members:
            runs = block_runs(members, block)
            rows = np.concatenate([np.arange(a, b) for a, b in runs])
            groups.append((runs, variable(grid.T[rows], f"{name}_grid{'_outliers' * n}")))

    def matmul(inputs):
        y = 0
        for n, (runs, grid) in enumerate(groups):
            # The outlier blocks' own matmul: their own per-token activation scale.
            with tf.name_scope(OUTLIER_SCOPE) if n else contextlib.nullcontext():
                y = y + ops.matmul(take_runs(inputs, runs, width), ops.cast(grid, inputs.dtype))
        with tf.name_scope(OFFSET_SCOPE):
            return y + ops.matmul(block_sums(inputs, block), ops.cast(offsets, y.dtype))

    return matmul


def _split_head(emb, peaks, block, variable):
    """The token embedding's steps ({} where nothing is split) that give the output
    projection's outlier input blocks a matmul of their own (a token table in two column
    sets; a tied lookup reads both and puts the columns back)."""
    from keras import ops

    from tfllm.layers import embedding_lookup

    head = emb.token_embeddings if emb.tie_embeddings else emb.output_embeddings
    width = head.shape[1]
    if width % block:
        return {}
    outliers = outlier_blocks(peaks, block, ratio=HEAD_OUTLIER_RATIO)
    if not outliers:
        return {}
    main = block_runs([b for b in range(width // block) if b not in outliers], block)
    extra = block_runs(outliers, block)
    original = np.array(head.numpy())  # (vocab, d)
    tables = [variable(np.concatenate([original[:, a:b] for a, b in runs], 1), name)
              for runs, name in ((main, "head_main"), (extra, "head_outliers"))]
    # Where each original column sits in [main columns | outlier columns].
    order = np.concatenate([np.arange(a, b) for a, b in main + extra])
    position = np.argsort(order)
    back = block_runs(list(position[::block] // block), block)

    def logits(default, hidden):
        y = ops.matmul(take_runs(hidden, main, width),
                       ops.transpose(ops.cast(tables[0], hidden.dtype)))
        return y + ops.matmul(take_runs(hidden, extra, width),
                              ops.transpose(ops.cast(tables[1], hidden.dtype)))

    def emb_call(default, token_ids, *args, **kwargs):
        dtype = emb.compute_dtype
        parts = [embedding_lookup(ops.cast(t, dtype), token_ids) for t in tables]
        return take_runs(ops.concatenate(parts, axis=-1), back, width)

    return {"logits": logits, **({"call": emb_call} if emb.tie_embeddings else {})}


def _int8_chunks(kernel, name, variable):
    """`x -> x @ kernel` ([in, out]) as one matmul per `INT8_CHUNK` input values, named into
    `INT8_SCOPE` (the recipe's dynamic int8 per channel): each chunk's activations and
    weights get scales of their own."""
    import tensorflow as tf
    from keras import ops

    width = kernel.shape[0]
    cuts = [(a, min(a + INT8_CHUNK, width)) for a in range(0, width, INT8_CHUNK)]
    chunks = [variable(kernel[a:b], f"{name}_int8_{n}") for n, (a, b) in enumerate(cuts)]

    def matmul(inputs):
        with tf.name_scope(INT8_SCOPE):
            y = 0
            for (a, b), chunk in zip(cuts, chunks):
                part = inputs if (a, b) == (0, width) else inputs[..., a:b]
                y = y + ops.matmul(part, ops.cast(chunk, inputs.dtype))
            return y

    return matmul


def _int8_tables(emb, variable):
    """The token embedding's steps with its table(s) in column chunks of `INT8_CHUNK`
    (int4-mixed: int8 per row and chunk), and the chunks' widths: the output projection
    sums a matmul per chunk, and the lookup of a tied table reads the chunks (one copy of
    the table) and joins them. A lookup that adds type or learned position embeddings keeps
    the model's own table (a second copy, int8 per row)."""
    import tensorflow as tf
    from keras import ops

    from tfllm.layers import embedding_lookup

    def chunked(var, name):
        table = np.array(var.numpy())  # (vocab, d)
        width = table.shape[1]
        cuts = [(a, min(a + INT8_CHUNK, width)) for a in range(0, width, INT8_CHUNK)]
        return cuts, [variable(table[:, a:b], f"{name}_int8_{n}") for n, (a, b) in
                      enumerate(cuts)]

    head = emb.token_embeddings if emb.tie_embeddings else emb.output_embeddings
    cuts, head_chunks = chunked(head, "head")

    def logits(default, hidden):
        with tf.name_scope(INT8_SCOPE):
            y = 0
            for (a, b), chunk in zip(cuts, head_chunks):
                y = y + ops.matmul(hidden[..., a:b], ops.transpose(ops.cast(chunk, hidden.dtype)))
            return y

    steps = {"logits": logits}
    if not (emb.type_vocab_size or emb.learned_positions):
        lookup_chunks = head_chunks if emb.tie_embeddings else chunked(emb.token_embeddings,
                                                                       "lookup")[1]

        def emb_call(default, token_ids, *args, **kwargs):
            dtype = emb.compute_dtype
            parts = [embedding_lookup(ops.cast(t, dtype), token_ids) for t in lookup_chunks]
            return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)

        steps["call"] = emb_call
    return steps, sorted({b - a for a, b in cuts})
