"""4- and 8-bit weights for converted TFLite models, by Google's ai-edge-quantizer.

The TFLite converter's own options give float16 and dynamic-range int8 (channelwise); the
modes here are what on-device LLMs ship with and the converter lacks: int4 weights in
blocks of 32 or 128 input values with one scale each (XNNPACK runs them with float
activations quantized per token on the fly), and int8 weights dequantized before a float
matmul (weight-only). ai-edge-quantizer rewrites the converted flatbuffer; we only choose
which ops get which recipe:

- the token table (EMBEDDING_LOOKUP, see `tfllm.layers.token_lookup_mode`) and the output
  projection (the FULLY_CONNECTED outside attention and feed-forward, sharing that table
  when the embeddings are tied): `embedding`;
- attention's q/k/v/output projections: `attention`; the feed-forward's: `ffn`.

Each part defaults to the model-wide mode; "float32" keeps a part in float. The int4-asym
modes quantize grids that `export.block_offsets` traced in place of the weights, with the
quantizer's dequantized-weight-recovery algorithm (exact on a grid), and their per-block
offsets (ops named into `OFFSET_SCOPE`) to int8 per channel. The int4-mixed modes do the
same for the weights on a 4-bit grid and give the matmuls and lookups `block_offsets` named
into `INT8_SCOPE` (the rest) dynamic int8 per channel.
"""

from __future__ import annotations

import re

import numpy as np

from .block_offsets import INT8_SCOPE, OFFSET_SCOPE
from .options import PART_MODES, QUANTIZER_MODES

# Op output names carry the Keras layer path (".../block_3/attention/qkv/..."); the
# exporter keeps names until this step has run.
ATTENTION = r"/attention(_\d+)?/"
FFN = r"/ffn(_\d+)?/"
OUTSIDE_BLOCKS = rf"^(?!.*({ATTENTION}|{FFN}))"
# The per-block offsets of the int4-asym modes (export/block_offsets.py): int8 per output
# channel, dequantized once (an eighth of the float32 table's bytes; their error is about
# 1% of one int4 step).
OFFSETS = rf"(^|/){OFFSET_SCOPE}(_\d+)?/"
# The int4-mixed modes' int8 chunks (weights off a 4-bit grid, and the token table):
# dynamic int8 per channel.
INT8_CHUNKS = rf"(^|/){INT8_SCOPE}(_\d+)?/"


class WeightQuantizationError(ValueError):
    """A recipe that cannot be built or applied."""


def parts_recipe(mode: str, embedding: str | None = None, attention: str | None = None,
                 ffn: str | None = None):
    """The ai-edge-quantizer recipe: `mode` for every weight, then each part's override.

    Args:
        mode: one of QUANTIZER_MODES.
        embedding, attention, ffn: a PART_MODES entry for that part (None: `mode`).
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    ops = qtyping.TFLOperationName
    for name, value in (("--quantize", mode), ("--quantize-embedding", embedding),
                        ("--quantize-attention", attention), ("--quantize-ffn", ffn)):
        allowed = QUANTIZER_MODES if name == "--quantize" else PART_MODES
        if value is not None and value not in allowed:
            raise WeightQuantizationError(f"{name} {value!r}: choose one of "
                                          f"{', '.join(allowed)}")
    manager = recipe_manager.RecipeManager()

    def add(regex, op, part_mode):
        if part_mode.startswith("int4-mixed-block"):
            # Grids where block_offsets traced them; the token table is int8 chunks.
            part_mode = ("dynamic-int8" if op == ops.EMBEDDING_LOOKUP
                         else part_mode.replace("-mixed-", "-asym-"))
        if part_mode == "float32":
            manager.add_quantization_config(regex, op, qtyping.OpQuantizationConfig(),
                                            algorithm_manager.AlgorithmName.NO_QUANTIZE)
        elif part_mode == "int8-weight":
            manager.add_weight_only_config(regex, op, 8, qtyping.QuantGranularity.CHANNELWISE)
        elif part_mode == "dynamic-int8":
            manager.add_dynamic_config(regex, op, 8, qtyping.QuantGranularity.CHANNELWISE)
        else:
            block = int(part_mode.rsplit("block", 1)[1])
            granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block}")
            if "-asym-" in part_mode:
                # The weights are already an int4 grid (block_offsets.asymmetric_blocks,
                # with -8 and 7 in every block): the quantizer's recovery algorithm reads
                # its scales off the grid (exactly) rather than re-deriving max/7 scales,
                # which would move every weight.
                manager.add_dynamic_config(
                    regex, op, 4, granularity,
                    algorithm_manager.AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY)
            else:
                manager.add_dynamic_config(regex, op, 4, granularity)

    # The last matching entry wins, so the model-wide mode goes first.
    add(".*", ops.FULLY_CONNECTED, mode)
    add(ATTENTION, ops.FULLY_CONNECTED, attention or mode)
    add(FFN, ops.FULLY_CONNECTED, ffn or mode)
    add(OUTSIDE_BLOCKS, ops.FULLY_CONNECTED, embedding or mode)
    add(".*", ops.EMBEDDING_LOOKUP, embedding or mode)
    if any(m.startswith("int4-mixed-block") for m in (mode, embedding or mode,
                                                      attention or mode, ffn or mode)):
        add(INT8_CHUNKS, ops.FULLY_CONNECTED, "dynamic-int8")
        add(INT8_CHUNKS, ops.EMBEDDING_LOOKUP, "dynamic-int8")
    add(OFFSETS, ops.FULLY_CONNECTED, "int8-weight")
    add(OFFSETS, ops.EMBEDDING_LOOKUP, "int8-weight")
    return manager.get_quantization_recipe()


def mark_lookups(data: bytes, scopes) -> bytes:
    """`data` with the EMBEDDING_LOOKUP ops that read a table `block_offsets` added (its
    shape a key of `scopes`, {shape: scope}) named into that scope (block offsets, int8
    chunks): the converter names every lookup `tfl.embedding_lookup<N>`, whatever its
    scope, and the quantizer's recipe tells ops apart by their output names."""
    from ai_edge_litert.tools import flatbuffer_utils

    scopes = {tuple(k): v for k, v in dict(scopes or {}).items()}
    if not scopes:
        return data
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    codes = {i: max(c.builtinCode, c.deprecatedBuiltinCode)
             for i, c in enumerate(model.operatorCodes)}
    for graph in model.subgraphs:
        for op in graph.operators:
            if codes[op.opcodeIndex] != 7:
                continue
            if scope := scopes.get(tuple(graph.tensors[op.inputs[1]].shape)):
                out = graph.tensors[op.outputs[0]]
                out.name = f"tfllm/{scope}/{(out.name or b'').decode()}".encode()
    buffers_as_arrays(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def buffers_as_arrays(model):
    """Make a TFLite model object's buffers numpy arrays before packing it: buffers that are
    not (ai-edge-quantizer leaves bytes) are packed one byte per Python call, minutes for a
    100M-parameter model against a copy as an array."""
    for buffer in model.buffers:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), np.uint8)


def part_of(op_name: str, code: int) -> str:
    """"embedding", "attention" or "ffn": the part an op (by output name; `code` its builtin
    operator code) belongs to."""
    if code == 7 or not re.search(ATTENTION + "|" + FFN, op_name):  # 7: EMBEDDING_LOOKUP
        return "embedding"
    return "attention" if re.search(ATTENTION, op_name) else "ffn"


def block_size_problems(data: bytes, modes: dict) -> list[str]:
    """Weights a blockwise mode cannot take: int4 blocks run along a weight's input width,
    which must be a multiple of the block. `modes` maps each part to its mode; returns
    "name [out, in] (mode)" for each weight that misses, from the float model `data`."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    codes = {i: max(c.builtinCode, c.deprecatedBuiltinCode)
             for i, c in enumerate(model.operatorCodes)}
    bad = set()
    for graph in model.subgraphs:
        for op in graph.operators:
            code = codes[op.opcodeIndex]
            # FULLY_CONNECTED (9) weights are input 1 ([out, in]); EMBEDDING_LOOKUP's (7)
            # table too ([vocab, width]).
            if code not in (9, 7) or len(op.inputs) < 2:
                continue
            out_name = (graph.tensors[op.outputs[0]].name or b"").decode()
            if re.search(OFFSETS, out_name) or re.search(INT8_CHUNKS, out_name):
                # int8 per channel: any width
                continue
            mode = modes[part_of(out_name, code)]
            block = re.search(r"block(\d+)$", mode)
            tensor = graph.tensors[op.inputs[1]]
            shape = list(tensor.shape)
            if block and len(shape) == 2 and shape[1] % int(block.group(1)):
                name = (tensor.name or b"?").decode().split(";")[0]
                bad.add(f"{name} {shape} ({mode})")
    return sorted(bad)


def quantize_weights(data: bytes, mode: str, embedding: str | None = None,
                     attention: str | None = None, ffn: str | None = None,
                     lookup_scopes=None) -> bytes:
    """`data` (a float TFLite model with its tensor names) with quantized weights.

    `lookup_scopes`: {shape: name scope} of the tables `block_offsets` added (int4-asym
    token offsets, int4-mixed table chunks).

    Example:
        >>> small = quantize_weights(float_bytes, "int4-block32",  # doctest: +SKIP
        ...                          embedding="int8-weight")
    """
    import contextlib
    import io
    import logging

    from ai_edge_quantizer import quantizer

    recipe = parts_recipe(mode, embedding, attention, ffn)
    data = mark_lookups(data, lookup_scopes)
    modes = {"embedding": embedding or mode, "attention": attention or mode,
             "ffn": ffn or mode}
    if bad := block_size_problems(data, modes):
        raise WeightQuantizationError(
            f"int4 blocks must divide a weight's input width; this model has "
            f"{', '.join(bad[:3])}{' and others' if len(bad) > 3 else ''}: use a block "
            "that divides them (int4-block32 where widths are multiples of 32), or give "
            "those parts another mode (--quantize-embedding / --quantize-attention / "
            "--quantize-ffn)")
    # The quantizer prints progress bars and a size summary; the exporter reports instead.
    logging.getLogger("absl").setLevel(logging.WARNING)
    q = quantizer.Quantizer(bytes(data))
    q.load_quantization_recipe(recipe)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return bytes(q.quantize().quantized_model)
    except Exception as e:  # its validation raises several types
        raise WeightQuantizationError(f"ai-edge-quantizer failed ({mode}): "
                                      f"{str(e)[-800:]}") from e
