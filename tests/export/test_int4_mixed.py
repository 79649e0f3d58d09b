"""int4-mixed-block32 (export/block_offsets.py): each weight kept at the precision it has,
int4 where it lies on a 4-bit grid, int8 in input chunks elsewhere, the token table in
int8 chunks stored once; values through the real converter and quantizer."""

import numpy as np
import pytest

from tests.export.test_tflite import _tflite_logit_error, _to_q4_1

INT4, INT8 = 17, 9  # TFLite tensor types


def _weights(data):
    """[(op code, weight shape, weight type, weight buffer)] of the FULLY_CONNECTED (9) and
    EMBEDDING_LOOKUP (7) ops of the decode signature's subgraph."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    codes = {i: max(c.builtinCode, c.deprecatedBuiltinCode)
             for i, c in enumerate(model.operatorCodes)}
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        if codes[op.opcodeIndex] in (7, 9):
            t = graph.tensors[op.inputs[1]]
            found.append((codes[op.opcodeIndex], tuple(t.shape), t.type, t.buffer))
    return found


@pytest.mark.slow
def test_int4_mixed_keeps_grids_in_int4_and_the_rest_in_int8_chunks(tmp_path):
    """Attention on Q4_1 grids (as a GGUF's Q4_K tensors), the feed-forward float (as its
    Q5_0 ones): int4-mixed's logits stay far closer to Keras than int4-asym's, which has to
    round the feed-forward to 4 bits; the grids are int4, the feed-forward int8 in chunks of
    128 input values, the tied table int8 in two column chunks read by both the lookup and
    the output projection (one copy)."""
    from export.block_offsets import INT8_CHUNK, _dense_layers
    from tests.export.tiny_models import tiny_llama

    lm = tiny_llama(d_model=256, ffn_dim=512)
    for blk in lm.backbone.blocks:
        for layer in _dense_layers(blk.attention):
            layer.kernel.assign(_to_q4_1(layer.kernel.numpy().T).T)
    ids = list(range(3, 27))
    keras_logits = lm(np.array([ids], np.int32)).numpy()[0]
    asym, _ = _tflite_logit_error(lm, ids, keras_logits, tmp_path, "int4-asym-block32")
    mixed, data = _tflite_logit_error(lm, ids, keras_logits, tmp_path, "int4-mixed-block32")
    assert mixed < 0.3 * asym, (mixed, asym)  # 0.13x here
    np.testing.assert_array_equal(lm(np.array([ids], np.int32)).numpy()[0], keras_logits)

    ops = _weights(data)
    assert INT8_CHUNK == 128
    # Attention: qkv [512 out, 256 in] and out [256, 256] grids (+ their offsets matmuls).
    int4 = sorted(shape for code, shape, kind, _ in ops if kind == INT4)
    assert int4 == [(256, 256)] * 2 + [(512, 256)] * 2, int4
    # Feed-forward: gate+up [1024, 256] in two chunks, down [256, 512] in four; the head.
    chunks = sorted(shape for code, shape, kind, _ in ops if code == 9 and kind == INT8)
    assert chunks == [(96, 128)] * 2 + [(256, 128)] * 8 + [(1024, 128)] * 4, chunks
    lookups = {buf for code, shape, kind, buf in ops if code == 7 and kind == INT8}
    head = {buf for code, shape, kind, buf in ops if code == 9 and shape == (96, 128)}
    assert len(lookups) == 2 and lookups == head, (lookups, head)


def test_int4_mixed_recipe():
    from export.options import ACCURACY_GATES, QUANTIZER_MODES
    from export.weight_quantization import parts_recipe

    assert "int4-mixed-block32" in QUANTIZER_MODES and ACCURACY_GATES["int4-mixed-block32"]
    recipe = parts_recipe("int4-mixed-block32", attention="int8-weight")
    by_scope = {(r["regex"], r["operation"]): r for r in recipe}
    # Matmuls outside the chunks' scope: grids, their scales read off them.
    assert by_scope[(".*", "FULLY_CONNECTED")]["algorithm_key"] == "dequantized_weight_recovery"
    assert by_scope[(".*", "FULLY_CONNECTED")]["op_config"]["weight_tensor_config"][
        "num_bits"] == 4
    chunks = [r for (regex, op), r in by_scope.items() if "int8_chunks" in regex]
    assert {r["operation"] for r in chunks} == {"FULLY_CONNECTED", "EMBEDDING_LOOKUP"}
    for r in chunks + [by_scope[(".*", "EMBEDDING_LOOKUP")]]:
        config = r["op_config"]
        assert config["weight_tensor_config"]["num_bits"] == 8, r
        assert config["compute_precision"] == "INTEGER", r  # dynamic: int8 activations
    # A part given another mode keeps it.
    attention = [r for (regex, op), r in by_scope.items() if "attention" in regex][0]
    assert attention["op_config"]["compute_precision"] == "FLOAT"


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_int4_mixed_untied_tables_with_a_narrow_last_chunk(tmp_path, positions):
    """An untied output projection and a table 192 wide (chunks of 128 and 64); with
    learned positions the lookup keeps the model's own table. Float weights: all int8, the
    logits within a few hundredths of Keras's (mean |logit| 0.25)."""
    from tests.export.tiny_models import tiny_llama

    lm = tiny_llama(d_model=192, num_layers=1, position_embedding=positions,
                    tie_embeddings=False)
    ids = list(range(3, 27))
    keras_logits = lm(np.array([ids], np.int32)).numpy()[0]
    error, data = _tflite_logit_error(lm, ids, keras_logits, tmp_path, "int4-mixed-block32")
    assert error < 0.02, error  # 0.003 here
    head = sorted(shape for code, shape, kind, _ in _weights(data)
                  if code == 9 and shape[0] == 96)
    assert head == [(96, 64), (96, 128)], head
    lookups = sorted(shape for code, shape, kind, _ in _weights(data) if code == 7)
    assert lookups == ([(96, 192)] if positions == "learned" else [(96, 64), (96, 128)]), lookups


@pytest.mark.slow
def test_int4_mixed_takes_widths_that_int4_blocks_do_not_divide(tmp_path):
    """80 wide: no int4 block of 32 fits (int4-asym refuses, naming the weights), while
    int8 chunks take any width, so int4-mixed holds every float weight in int8."""
    from export.tflite import TFLiteExportError
    from tests.export.tiny_models import tiny_llama

    lm = tiny_llama(d_model=80, ffn_dim=160)
    ids = list(range(3, 27))
    keras_logits = lm(np.array([ids], np.int32)).numpy()[0]
    error, data = _tflite_logit_error(lm, ids, keras_logits, tmp_path, "int4-mixed-block32")
    assert error < 0.01, error  # 0.0016 here (mean |logit| 0.15)
    assert {kind for _, _, kind, _ in _weights(data)} == {INT8}, _weights(data)
    with pytest.raises(TFLiteExportError, match="int4 blocks must divide"):
        _tflite_logit_error(lm, ids, keras_logits, tmp_path, "int4-asym-block32")
