import keras
import numpy as np
import pytest
from keras import ops

from tfllm.config import ModelConfig
from tfllm.models import CausalLM, TransformerBackbone

CFG = ModelConfig(vocab_size=50, num_layers=2, d_model=32, num_heads=4, ffn_dim=64, max_len=16)
IDS = np.random.default_rng(1).integers(4, 50, size=(3, 16)).astype("int32")


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(0)
    return CausalLM.from_model_config(CFG)


def test_output_shape_and_dtype(lm):
    logits = lm(IDS)
    assert tuple(logits.shape) == (3, 16, 50)
    assert logits.dtype == "float32"
    assert lm.config == CFG


def test_causality(lm):
    """Changing token t+1 leaves the logits at positions <= t unchanged."""
    base = ops.convert_to_numpy(lm(IDS))
    for t in (0, 7, 14):
        changed = IDS.copy()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 50
        out = ops.convert_to_numpy(lm(changed))
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert np.abs(out[:, t + 1] - base[:, t + 1]).max() > 1e-4


def test_padding_mask(lm):
    """Right padding: real positions ignore whatever ids stand in the padded slots."""
    mask = np.ones_like(IDS, bool)
    mask[0, 10:] = False
    other = IDS.copy()
    other[0, 10:] = 0
    a = ops.convert_to_numpy(lm({"token_ids": IDS, "padding_mask": mask}))
    b = ops.convert_to_numpy(lm({"token_ids": other, "padding_mask": mask}))
    np.testing.assert_allclose(a[0, :10], b[0, :10], atol=1e-6)
    # An encoder (bidirectional) also ignores padded keys, in every position.
    enc = TransformerBackbone.from_model_config(CFG.replace(causal=False))
    ea = ops.convert_to_numpy(enc(IDS, padding_mask=mask))
    eb = ops.convert_to_numpy(enc(other, padding_mask=mask))
    np.testing.assert_allclose(ea[0, :10], eb[0, :10], atol=1e-5)
    assert np.abs(ea[1] - ops.convert_to_numpy(enc(IDS))[1]).max() < 1e-5


def test_kv_cache_parity_token_by_token(lm):
    """Feeding tokens one at a time through the cache gives the full forward's logits."""
    full = ops.convert_to_numpy(lm(IDS))
    caches = lm.backbone.empty_caches(3)
    steps = []
    for t in range(16):
        logits, caches = lm.call_with_cache(IDS[:, t:t + 1], caches, t)
        steps.append(ops.convert_to_numpy(logits))
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-5
    # Cache layout: per layer (batch, heads, max_len, head_dim), K and V.
    assert len(caches) == 2 and tuple(caches[0][0].shape) == (3, 4, 16, 8)


def test_kv_cache_parity_prefill_then_decode(lm):
    full = ops.convert_to_numpy(lm(IDS))
    logits, caches = lm.call_with_cache(IDS[:, :9], lm.backbone.empty_caches(3), 0)
    np.testing.assert_allclose(ops.convert_to_numpy(logits), full[:, :9], atol=1e-5)
    for t in range(9, 16):
        logits, caches = lm.call_with_cache(IDS[:, t:t + 1], caches, t)
        assert np.abs(ops.convert_to_numpy(logits)[:, 0] - full[:, t]).max() <= 1e-5


def test_save_load_round_trip(lm, tmp_path):
    path = str(tmp_path / "lm.keras")
    lm.compile()
    lm.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CausalLM)
    np.testing.assert_array_equal(ops.convert_to_numpy(restored(IDS)),
                                  ops.convert_to_numpy(lm(IDS)))
    assert restored.get_config()["backbone"]["config"] == lm.get_config()["backbone"]["config"]


def test_save_load_keeps_optimizer_state(tmp_path):
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_model_config(CFG)
    lm.compile(learning_rate=2e-3, warmup_steps=3, total_steps=50, jit_compile=False)
    lm.fit(IDS[:, :-1], IDS[:, 1:], epochs=5, batch_size=3, verbose=0)
    path = str(tmp_path / "trained.keras")
    lm.save(path)
    restored = keras.saving.load_model(path)
    assert int(restored.optimizer.iterations) == 5
    np.testing.assert_allclose(float(restored.optimizer.learning_rate),
                               float(lm.optimizer.learning_rate), rtol=1e-6)
    for a, b in zip(restored.optimizer.variables, lm.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_compile_defaults_and_fit_step():
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_model_config(CFG)
    lm.compile(learning_rate=1e-3, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    opt = lm.optimizer
    assert isinstance(opt, keras.optimizers.AdamW)
    # Weight decay only on 2-D+ weights.
    for v in lm.trainable_variables:
        assert opt._use_weight_decay(v) == (len(v.shape) >= 2), v.path
    # Linear warmup to the peak, then cosine decay to min_lr_ratio * peak.
    sched = opt._learning_rate
    np.testing.assert_allclose(float(sched(5)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(sched(100)), 1e-4, rtol=1e-5)
    x, y = IDS[:, :-1], IDS[:, 1:]
    hist = lm.fit(x, y, epochs=8, batch_size=3, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < losses[0]
    # The perplexity metric is exp(token-mean cross-entropy).
    np.testing.assert_allclose(np.log(hist.history["perplexity"][-1]), losses[-1], rtol=1e-4)


@pytest.mark.parametrize("clipnorm", [None, 1.0])
def test_adamw_sums_repeated_rows_of_a_sparse_gradient(clipnorm):
    """A gradient row that arrives twice (a gather of repeated ids, or a MirroredStrategy
    all-reduce) must update like its sum; Keras' Adam squares each copy separately."""
    import tensorflow as tf

    from tfllm.models.causal_lm import AdamW

    rows = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    sparse = tf.IndexedSlices(tf.constant(rows), tf.constant([1, 4, 1]), tf.constant([6, 4]))
    dense = tf.convert_to_tensor(sparse)
    assert float(tf.reduce_max(tf.abs(dense[1] - rows[0] - rows[2]))) == 0.0
    updated = []
    for grad in (sparse, dense):
        table = keras.Variable(np.ones((6, 4), "float32"))
        opt = AdamW(learning_rate=0.1, weight_decay=0.0, global_clipnorm=clipnorm)
        opt.apply_gradients([(grad, table)])
        updated.append(ops.convert_to_numpy(table))
    np.testing.assert_allclose(updated[0], updated[1], rtol=1e-6)
    assert np.abs(updated[1] - 1.0).max() > 0.05  # the step moved the rows it touched


def test_mixed_precision_logits_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        lm = CausalLM.from_model_config(CFG)
        assert lm.backbone.compute_dtype == "bfloat16"
        out = lm(IDS)
        assert out.dtype == "float32" and np.isfinite(ops.convert_to_numpy(out)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_causal_lm_rejects_encoder():
    with pytest.raises(ValueError, match="causal"):
        CausalLM(TransformerBackbone.from_model_config(CFG.replace(causal=False)))
