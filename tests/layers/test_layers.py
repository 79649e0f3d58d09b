import math

import numpy as np
import pytest
from keras import ops

from tests.harness import run_layer_test
from tfllm.layers import (FeedForward, MultiHeadAttention, TokenAndPositionEmbedding,
                          TransformerBlock, causal_mask, merge_masks)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 6, 16)).astype("float32")
IDS = RNG.integers(0, 20, size=(2, 6)).astype("int32")


def test_embedding(tmp_path):
    layer = run_layer_test(TokenAndPositionEmbedding,
                           dict(vocab_size=20, max_len=8, d_model=16, dropout=0.0,
                                initializer_stddev=0.02, learned_positions=True,
                                tie_embeddings=True, type_vocab_size=0, scale=False,
                                logit_softcap=None),
                           IDS, (2, 6, 16), tmp_path)
    # Tied output projection: logits are hidden @ token_embeddings^T.
    h = RNG.normal(size=(2, 6, 16)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(layer.logits(h)),
                               h @ ops.convert_to_numpy(layer.token_embeddings).T, rtol=1e-5,
                               atol=1e-5)


def test_gemma_embedding_scales_by_sqrt_width_and_caps_logits(tmp_path):
    layer = run_layer_test(TokenAndPositionEmbedding,
                           dict(vocab_size=20, max_len=8, d_model=16, dropout=0.0,
                                initializer_stddev=0.5, learned_positions=False,
                                tie_embeddings=True, type_vocab_size=0, scale=True,
                                logit_softcap=3.0),
                           IDS, (2, 6, 16), tmp_path)
    table = ops.convert_to_numpy(layer.token_embeddings)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(IDS)), table[IDS] * 4.0, atol=1e-6)
    h = RNG.normal(size=(2, 6, 16)).astype("float32") * 10
    logits = ops.convert_to_numpy(layer.logits(h))
    np.testing.assert_allclose(logits, 3.0 * np.tanh(h @ table.T / 3.0), atol=1e-5)
    assert np.abs(h @ table.T).max() > 3.0 >= np.abs(logits).max()


def test_embedding_with_token_types(tmp_path):
    layer = run_layer_test(TokenAndPositionEmbedding,
                           dict(vocab_size=20, max_len=8, d_model=16, dropout=0.0,
                                initializer_stddev=0.02, learned_positions=True,
                                tie_embeddings=True, type_vocab_size=2, scale=False,
                                logit_softcap=None),
                           IDS, (2, 6, 16), tmp_path)
    tok, pos, typ = (ops.convert_to_numpy(v) for v in (
        layer.token_embeddings, layer.position_embeddings, layer.token_type_embeddings))
    types = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    np.testing.assert_allclose(ops.convert_to_numpy(layer(IDS, token_type_ids=types)),
                               tok[IDS] + pos[:6] + typ[types], atol=1e-6)
    # No token types given: every token is of type 0, as BERT embeds a single text.
    np.testing.assert_allclose(ops.convert_to_numpy(layer(IDS)), tok[IDS] + pos[:6] + typ[0],
                               atol=1e-6)


@pytest.mark.parametrize("activation", ["gelu", "relu", "gelu_exact"])
def test_feed_forward(tmp_path, activation):
    layer = run_layer_test(FeedForward, dict(d_model=16, ffn_dim=32, activation=activation,
                                             dropout=0.0, initializer_stddev=0.02, output_stddev=0.01,
                                             kernel_initializer="normal"),
                           X, (2, 6, 16), tmp_path)
    # FFN(x) = act(x W1 + b1) W2 + b2, checked against NumPy.
    w1, b1 = (ops.convert_to_numpy(v) for v in layer.inner.weights)
    w2, b2 = (ops.convert_to_numpy(v) for v in layer.outer.weights)
    h = X @ w1 + b1
    if activation == "relu":
        h = np.maximum(h, 0)
    elif activation == "gelu_exact":
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    else:
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(X)), h @ w2 + b2, atol=1e-5)


def test_embedding_untied_without_positions(tmp_path):
    run_layer_test(TokenAndPositionEmbedding,
                   dict(vocab_size=20, max_len=8, d_model=16, dropout=0.0,
                        initializer_stddev=0.02, learned_positions=False, tie_embeddings=True,
                        type_vocab_size=0, scale=False, logit_softcap=None),
                   IDS, (2, 6, 16), tmp_path)
    # Untied: `logits` uses a matrix of its own (only `logits` reads it, so the harness's
    # fit step through `call` would leave it unchanged).
    layer = TokenAndPositionEmbedding(vocab_size=20, max_len=8, d_model=16,
                                      learned_positions=False, tie_embeddings=False)
    layer.build()
    assert TokenAndPositionEmbedding.from_config(layer.get_config()).get_config() == \
        layer.get_config()
    assert {w.path.split("/")[-1] for w in layer.weights} == {"token_embeddings",
                                                               "output_embeddings"}
    h = RNG.normal(size=(2, 6, 16)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(layer.logits(h)),
                               h @ ops.convert_to_numpy(layer.output_embeddings).T, atol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(IDS)),
                                  ops.convert_to_numpy(layer.token_embeddings)[IDS])


_GPT2_ATTENTION = dict(num_kv_heads=None, head_dim=None, qkv_bias=True, out_bias=True,
                       qk_norm=False, norm_epsilon=1e-6, rope=None, cross_attention=False,
                       kernel_initializer="normal", query_pre_attn_scalar=None,
                       logit_softcap=None)
_LLAMA_ATTENTION = dict(num_kv_heads=2, head_dim=6, qkv_bias=False, out_bias=False,
                        qk_norm=True, norm_epsilon=1e-6, rope={"rope_theta": 10000.0},
                        cross_attention=False, kernel_initializer="glorot_uniform",
                        query_pre_attn_scalar=None, logit_softcap=None)
_GEMMA_ATTENTION = dict(_LLAMA_ATTENTION, num_kv_heads=1, head_dim=8,
                        query_pre_attn_scalar=12.0, logit_softcap=2.0)


@pytest.mark.parametrize("options", [_GPT2_ATTENTION, _LLAMA_ATTENTION, _GEMMA_ATTENTION])
def test_attention(tmp_path, options):
    run_layer_test(MultiHeadAttention, dict(d_model=16, num_heads=4, dropout=0.0,
                                            initializer_stddev=0.02, output_stddev=0.01,
                                            **options), X, (2, 6, 16), tmp_path)


def test_cross_attention(tmp_path):
    """Queries from X, keys and values from a 4-step context (an encoder's output)."""
    context = X[:, :4] * 0.5
    layer = run_layer_test(MultiHeadAttention, dict(_GPT2_ATTENTION, d_model=16, num_heads=4,
                                                    dropout=0.0, initializer_stddev=0.02,
                                                    output_stddev=0.01, cross_attention=True),
                           X, (2, 6, 16), tmp_path, call_kwargs={"context": context})
    # softmax(q k^T / sqrt(d)) v per head, checked against NumPy.
    wq, bq = (ops.convert_to_numpy(v) for v in layer.q.weights)
    wkv, bkv = (ops.convert_to_numpy(v) for v in layer.kv.weights)
    wo, bo = (ops.convert_to_numpy(v) for v in layer.out.weights)
    q = (X @ wq + bq).reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)
    k, v = (context @ wkv + bkv).reshape(2, 4, 2, 4, 4).transpose(2, 0, 3, 1, 4)
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = (probs @ v).transpose(0, 2, 1, 3).reshape(2, 6, 16) @ wo + bo
    got = ops.convert_to_numpy(layer(X, context=context))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cross_attention_block(tmp_path):
    run_layer_test(TransformerBlock, dict(d_model=16, num_heads=2, ffn_dim=32, dropout=0.0,
                                          activation="relu", norm_first=True,
                                          # Large enough that one SGD step moves every
                                          # norm scale (see test_llama_transformer_block).
                                          layer_norm_epsilon=1e-5, initializer_stddev=0.5,
                                          output_stddev=0.5,
                                          **dict(_GPT2_BLOCK, cross_attention=True,
                                                 kernel_initializer="glorot_uniform")),
                   X, (2, 6, 16), tmp_path, call_kwargs={"context": X[:, :3]})


_GPT2_BLOCK = dict(norm="layernorm", ffn="plain", num_kv_heads=None, head_dim=None,
                   qkv_bias=True, proj_bias=True, qk_norm=False, rope=None,
                   cross_attention=False, kernel_initializer="normal", post_norms=False,
                   query_pre_attn_scalar=None, attn_logit_softcap=None)


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_block(tmp_path, norm_first):
    run_layer_test(TransformerBlock, dict(d_model=16, num_heads=2, ffn_dim=32, dropout=0.0,
                                          activation="gelu", norm_first=norm_first,
                                          layer_norm_epsilon=1e-5, initializer_stddev=0.02,
                                          output_stddev=0.01, **_GPT2_BLOCK),
                   X, (2, 6, 16), tmp_path)


def test_llama_transformer_block(tmp_path):
    block = run_layer_test(TransformerBlock,
                           dict(d_model=16, num_heads=4, ffn_dim=24, dropout=0.0,
                                activation="silu", norm_first=True, layer_norm_epsilon=1e-6,
                                # Large enough that one SGD step moves the norm scales
                                # (at 0.02 their change is below float32's step at 1.0).
                                initializer_stddev=0.5, output_stddev=0.5, norm="rmsnorm",
                                ffn="gated", num_kv_heads=1, head_dim=None, qkv_bias=True,
                                proj_bias=False, qk_norm=False,
                                rope={"rope_theta": 500000.0, "scaling": "llama3",
                                      "factor": 8.0}, cross_attention=False,
                                kernel_initializer="normal", post_norms=False,
                                query_pre_attn_scalar=None, attn_logit_softcap=None),
                           X, (2, 6, 16), tmp_path)
    # Multi-query: the fused projection is [q (4 heads) | k (1) | v (1)] of width 4 each.
    assert tuple(block.attention.qkv.kernel.shape) == (16, (4 + 2) * 4)


def test_gemma_transformer_block(tmp_path):
    block = run_layer_test(TransformerBlock,
                           dict(d_model=16, num_heads=4, ffn_dim=24, dropout=0.0,
                                activation="gelu", norm_first=True, layer_norm_epsilon=1e-6,
                                initializer_stddev=0.5, output_stddev=0.5, norm="rmsnorm",
                                ffn="gated", num_kv_heads=1, head_dim=8, qkv_bias=False,
                                proj_bias=False, qk_norm=True, rope={"rope_theta": 1e4},
                                cross_attention=False, kernel_initializer="normal",
                                post_norms=True, query_pre_attn_scalar=8.0,
                                attn_logit_softcap=20.0),
                           X, (2, 6, 16), tmp_path)
    assert {"post_attention_norm", "post_ffn_norm"} <= {w.path.split("/")[-2]
                                                        for w in block.weights}


def test_attention_matches_numpy_reference():
    layer = MultiHeadAttention(d_model=16, num_heads=4)
    mask = merge_masks(causal_mask(6, 6), np.array([[1] * 6, [1] * 4 + [0] * 2], bool))
    out = ops.convert_to_numpy(layer(X, attention_mask=mask))
    wqkv, bqkv = (ops.convert_to_numpy(v) for v in layer.qkv.weights)
    wo, bo = (ops.convert_to_numpy(v) for v in layer.out.weights)
    qkv = (X @ wqkv + bqkv).reshape(2, 6, 3, 4, 4).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    m = ops.convert_to_numpy(mask)[:, None]
    scores = np.where(m, scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ v).transpose(0, 2, 1, 3).reshape(2, 6, 16) @ wo + bo
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_masks():
    m = ops.convert_to_numpy(causal_mask(3, 5, q_offset=2))
    np.testing.assert_array_equal(m, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    merged = ops.convert_to_numpy(merge_masks(causal_mask(2, 2), np.array([[1, 0]], bool)))
    np.testing.assert_array_equal(merged, [[[1, 0], [1, 0]]])
    assert merge_masks(None, None) is None


@pytest.mark.parametrize("start,seq", [(0, 5), (3, 1), (11, 1), (6, 6)])
def test_one_hot_cache_write_equals_slice_write(start, seq):
    """The ONNX-friendly cache write gives exactly the dynamic-update-slice result."""
    from tfllm.layers import export_hooks
    from tfllm.layers.attention import write_cache

    rng = np.random.default_rng(start)
    cache = rng.normal(size=(2, 3, 12, 4)).astype("float32")
    new = rng.normal(size=(2, 3, seq, 4)).astype("float32")
    sliced = ops.convert_to_numpy(write_cache(cache, new, start))
    with export_hooks.tracing(cache_write="one_hot"):
        blended = ops.convert_to_numpy(write_cache(cache, new, start))
    np.testing.assert_array_equal(blended, sliced)
    np.testing.assert_array_equal(sliced[:, :, start:start + seq], new)
    np.testing.assert_array_equal(np.delete(sliced, range(start, start + seq), axis=2),
                                  np.delete(cache, range(start, start + seq), axis=2))
    with pytest.raises(ValueError, match="one_hot"):
        with export_hooks.tracing(cache_write="scatter"):
            pass


def test_bounded_mask_fill_equals_constant_fill():
    """The int8-friendly mask fill gives the same attention output in float."""
    from tfllm.layers import export_hooks

    layer = MultiHeadAttention(d_model=16, num_heads=4)
    mask = np.ones((2, 6, 6), bool)
    mask[0, :, 3:] = False  # padded keys
    mask = np.logical_and(mask, np.tril(np.ones((6, 6), bool)))
    constant = ops.convert_to_numpy(layer(X, attention_mask=mask))
    with export_hooks.tracing(mask_fill="bounded"):
        bounded = ops.convert_to_numpy(layer(X, attention_mask=mask))
    np.testing.assert_allclose(bounded, constant, atol=1e-6)
    with pytest.raises(ValueError, match="bounded"):
        with export_hooks.tracing(mask_fill="zero"):
            pass


def test_trace_settings_belong_to_the_thread_that_set_them():
    """A thread inside `tracing` (an export) leaves another thread's traces (a server's
    generation in the same process) at the defaults, and each thread sees its own."""
    import threading

    from tfllm.layers import export_hooks

    inside, release, seen = threading.Event(), threading.Event(), {}

    def export():
        with export_hooks.tracing(cache_write="one_hot", norm_scale={"norm": "per_token"}):
            seen["export"] = export_hooks.setting("cache_write")
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=export)
    thread.start()
    try:
        assert inside.wait(10)
        seen["other"] = export_hooks.setting("cache_write")
        seen["other_norm"] = export_hooks.norm_scale("norm")
    finally:
        release.set()
        thread.join(10)
    assert seen == {"export": "one_hot", "other": "slice", "other_norm": "folded"}


@pytest.mark.parametrize("padded", [False, True])
def test_decode_step_reads_before_write_equal_after_write(padded):
    """Both forms of the one-token cached step give the same output and new caches."""
    from tfllm.layers import export_hooks

    layer = MultiHeadAttention(d_model=16, num_heads=4)
    rng = np.random.default_rng(1)
    k_cache, v_cache = (rng.normal(size=(2, 4, 8, 4)).astype("float32") for _ in range(2))
    x = rng.normal(size=(2, 1, 16)).astype("float32")
    # Slot 5 is written; it holds stale values that must not leak into the result.
    mask = ops.convert_to_numpy(causal_mask(1, 8, 5))[None].repeat(2, 0)  # (2, 1, 8)
    if padded:
        mask[1, :, :2] = False  # row 1's first two slots are padding
    results = {}
    for mode in ("before_write", "after_write"):
        with export_hooks.tracing(decode_read=mode):
            out, (k, v) = layer(x, attention_mask=mask, cache=(k_cache, v_cache),
                                cache_index=5)
        results[mode] = [ops.convert_to_numpy(t) for t in (out, k, v)]
    for before, after in zip(results["before_write"], results["after_write"]):
        np.testing.assert_allclose(before, after, atol=1e-6)
    new_k = results["before_write"][1]
    np.testing.assert_array_equal(np.delete(new_k, 5, axis=2), np.delete(k_cache, 5, axis=2))
    assert not np.allclose(new_k[:, :, 5], k_cache[:, :, 5])
    with pytest.raises(ValueError, match="after_write"):
        with export_hooks.tracing(decode_read="later"):
            pass


def test_export_hooks_replace_observe_and_restore():
    """An exporter's hooks change how layers trace inside the block only, never the layers
    themselves: a replaced step gets the layer's own as `default`, observers see inputs."""
    from tfllm.layers import GatedFeedForward, export_hooks

    ffn = GatedFeedForward(d_model=16, ffn_dim=8)
    plain = ops.convert_to_numpy(ffn(X))
    seen = []

    def doubled(default, x):
        g, u = default(x)
        return g, 2 * u

    with export_hooks.tracing(replace={ffn: {"gate_up": doubled}},
                              observe=lambda layer, step, x: seen.append((layer, step))):
        twice = ops.convert_to_numpy(ffn(X))
        with export_hooks.tracing(mask_fill="bounded"):  # nested: adds, keeps the outer's
            assert export_hooks.setting("mask_fill") == "bounded"
            np.testing.assert_allclose(ops.convert_to_numpy(ffn(X)), twice, atol=1e-6)
    assert export_hooks.setting("mask_fill") == "constant"
    # down(silu(g) * 2u) = 2 down(silu(g) * u): no biases by default
    np.testing.assert_allclose(twice, 2 * plain, atol=1e-5)
    assert (ffn, "gate_up") in seen and (ffn.down, "call") in seen
    np.testing.assert_allclose(ops.convert_to_numpy(ffn(X)), plain, atol=0)  # restored
    assert "call" not in vars(ffn.down) and "gate_up" not in vars(ffn)
    with pytest.raises(ValueError, match="unknown trace setting"):
        with export_hooks.tracing(cache="slice"):
            pass
