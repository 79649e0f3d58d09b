"""The Llama-family architecture options (#15) against an independent NumPy Llama.

RoPE (with Llama 3 scaling), RMSNorm, SwiGLU, grouped-query attention, a head width that
is not d_model / heads, Q/K/V biases (Qwen2), QK-norm (Qwen3), untied output projection.
"""

import numpy as np
import pytest

from tfllm.config import ModelConfig, get_preset
from tfllm.models.generation import GenerationParams, get_generator
from tfllm.layers.rotary import rope_inverse_frequencies
from tfllm.models import CausalLM

BASE = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=4, ffn_dim=48, max_len=24,
            dropout=0.0, position_embedding="rope", norm="rmsnorm", ffn="gated",
            activation="silu", qkv_bias=False, proj_bias=False, layer_norm_epsilon=1e-6)
VARIANTS = {
    "llama-gqa": dict(num_kv_heads=2),
    "mqa-llama3-rope": dict(num_kv_heads=1, rope_theta=500000.0,
                            rope_scaling={"type": "llama3", "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8}),
    "qwen2-bias-untied": dict(num_kv_heads=2, qkv_bias=True, tie_embeddings=False,
                              rope_theta=1e6),
    "qwen3-qknorm-headsize": dict(num_kv_heads=2, qk_norm=True, head_size=12,
                                  tie_embeddings=False),
    "linear-rope-mha": dict(rope_scaling={"type": "linear", "factor": 2.0}),
}


def _model(variant, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    lm = CausalLM.from_model_config(ModelConfig(**{**BASE, **VARIANTS[variant]}))
    # Non-trivial norm scales and biases, so that a wrong wiring shows.
    rng = np.random.default_rng(seed)
    for w in lm.weights:
        if w.path.endswith(("scale", "bias")):
            w.assign(rng.normal(1.0 if w.path.endswith("scale") else 0.0, 0.3, w.shape))
    return lm


def _w(lm, suffix):
    matches = [w for w in lm.weights if w.path.endswith(suffix)]
    assert len(matches) == 1, suffix
    return np.asarray(matches[0].numpy(), np.float64)


def _rms(x, scale, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def numpy_llama(lm, cfg, ids):
    """Logits (batch, seq, vocab) the way Hugging Face's LlamaForCausalLM computes them."""
    eps, hd = cfg.layer_norm_epsilon, cfg.head_dim
    nh, nkv = cfg.num_heads, cfg.kv_heads
    b, t = ids.shape
    x = _w(lm, "embedding/token_embeddings")[ids]
    scaling = cfg.rope_scaling or {}
    inv = rope_inverse_frequencies(
        hd, cfg.rope_theta, scaling.get("type"), scaling.get("factor", 1.0),
        scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0),
        scaling.get("original_max_position_embeddings", 8192))
    angle = np.arange(t, dtype=np.float32)[:, None] * inv.astype(np.float32)[None]
    emb = np.concatenate([angle, angle], -1).astype(np.float64)
    cos, sin = np.cos(emb), np.sin(emb)
    mask = np.tril(np.ones((t, t), bool))
    for i in range(cfg.num_layers):
        p = f"block_{i}/"
        h = _rms(x, _w(lm, p + "norm1/scale"), eps)
        qkv = h @ _w(lm, p + "attention/qkv/kernel")
        if cfg.qkv_bias:
            qkv = qkv + _w(lm, p + "attention/qkv/bias")
        q = qkv[..., :nh * hd].reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
        k = qkv[..., nh * hd:(nh + nkv) * hd].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        v = qkv[..., (nh + nkv) * hd:].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        if cfg.qk_norm:
            q = _rms(q, _w(lm, p + "attention/q_norm/scale"), eps)
            k = _rms(k, _w(lm, p + "attention/k_norm/scale"), eps)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # repeat_kv: each key/value head serves nh / nkv query heads.
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        scores = np.where(mask, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, nh * hd)
        x = x + attn @ _w(lm, p + "attention/out/kernel")
        h = _rms(x, _w(lm, p + "norm2/scale"), eps)
        g = h @ _w(lm, p + "ffn/gate/kernel")
        x = x + (g / (1 + np.exp(-g)) * (h @ _w(lm, p + "ffn/up/kernel"))) @ \
            _w(lm, p + "ffn/down/kernel")
    x = _rms(x, _w(lm, "final_norm/scale"), eps)
    head = "embedding/token_embeddings" if cfg.tie_embeddings else "embedding/output_embeddings"
    return x @ _w(lm, head).T


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_numpy_llama(variant):
    lm = _model(variant)
    cfg = ModelConfig(**{**BASE, **VARIANTS[variant]})
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 17)).astype("int32")
    got = lm(ids).numpy()
    np.testing.assert_allclose(got, numpy_llama(lm, cfg, ids), atol=1e-4)


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen3-qknorm-headsize"])
def test_cache_holds_kv_heads_and_cached_greedy_equals_full_loop(variant):
    lm = _model(variant)
    cfg = ModelConfig(**{**BASE, **VARIANTS[variant]})
    caches = lm.backbone.empty_caches(1)
    assert tuple(caches[0][0].shape) == (1, cfg.kv_heads, cfg.max_len, cfg.head_dim)
    prompts = [[5, 9, 2, 7], [11, 3]]  # ragged: left-padded rows with their own positions
    got = get_generator(lm).generate_ids(prompts, GenerationParams(10, stop_at_end=False))
    for prompt, ids in zip(prompts, got):
        seq = list(prompt)
        for _ in range(10):
            seq.append(int(np.argmax(lm(np.array([seq], np.int32)).numpy()[0, -1])))
        assert ids == seq[len(prompt):]


def test_save_load_round_trip(tmp_path):
    import keras

    lm = _model("qwen3-qknorm-headsize")
    ids = np.arange(12, dtype=np.int32)[None]
    path = str(tmp_path / "m.keras")
    lm.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(ids).numpy(), lm(ids).numpy())


def test_old_configs_load_as_gpt2_architecture():
    old = get_preset("shakespeare-char").to_dict()
    for field in ("num_kv_heads", "head_size", "position_embedding", "rope_theta",
                  "rope_scaling", "norm", "ffn", "qkv_bias", "proj_bias", "qk_norm",
                  "tie_embeddings"):
        old.pop(field)
    cfg = ModelConfig.from_dict(old)
    assert cfg == get_preset("shakespeare-char")
    assert (cfg.position_embedding, cfg.norm, cfg.ffn, cfg.kv_heads) == ("learned",
                                                                         "layernorm",
                                                                         "plain", 4)


@pytest.mark.parametrize("changes, match", [
    (dict(num_kv_heads=3), "num_kv_heads \\(3\\) must divide num_heads"),
    (dict(ffn="gated", activation="relu"), "for a gated feed-forward"),
    (dict(position_embedding="alibi"), "position_embedding must be one of"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}, position_embedding="rope"),
     "unsupported rope scaling 'yarn'"),
    (dict(norm="batchnorm"), "norm must be one of"),
])
def test_bad_architecture_fields(changes, match):
    from tfllm.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        get_preset("shakespeare-char").replace(**changes)
