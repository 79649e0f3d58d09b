"""The Gemma-family architecture options (#35) against an independent NumPy Gemma.

Embeddings scaled by sqrt(d_model), GeGLU (tanh GELU), one key/value head with a wide
head, query scaling by `query_pre_attn_scalar`, pre- and post-norms around both branches
(Gemma 2/3), attention and final logit soft-capping (Gemma 2), sliding-window layers
interleaved with global ones, with their own rotary base (Gemma 3), QK-norm (Gemma 3).
Prompts are longer than the window, so the window changes the result.
"""

import numpy as np
import pytest

from tfllm.config import ConfigError, ModelConfig
from tfllm.layers.rotary import rope_inverse_frequencies
from tfllm.models import CausalLM
from tfllm.models.generation import GenerationParams, get_generator

BASE = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=2, num_kv_heads=1,
            head_size=24, ffn_dim=48, max_len=32, dropout=0.0, position_embedding="rope",
            norm="rmsnorm", ffn="gated", activation="gelu", qkv_bias=False,
            proj_bias=False, layer_norm_epsilon=1e-6, scale_embeddings=True)
VARIANTS = {
    "gemma": dict(),
    # Caps small enough that random weights reach them.
    "gemma2": dict(post_norms=True, query_pre_attn_scalar=20.0, attn_logit_softcap=1.5,
                   final_logit_softcap=2.0, sliding_window=5,
                   layer_types=["sliding_attention", "full_attention"]),
    "gemma3": dict(num_layers=3, post_norms=True, qk_norm=True, query_pre_attn_scalar=16.0,
                   sliding_window=6, rope_theta=1e6, rope_local_theta=1e4,
                   rope_scaling={"type": "linear", "factor": 2.0},
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}


def _config(variant, **changes):
    return ModelConfig(**{**BASE, **VARIANTS[variant], **changes})


def _model(variant, seed=0, **changes):
    import keras

    keras.utils.set_random_seed(seed)
    lm = CausalLM.from_model_config(_config(variant, **changes))
    # Non-trivial norm scales, so that a wrong wiring shows.
    rng = np.random.default_rng(seed)
    for w in lm.weights:
        if w.path.endswith("scale"):
            w.assign(rng.normal(1.0, 0.3, w.shape))
    return lm


def _w(lm, suffix):
    matches = [w for w in lm.weights if w.path.endswith(suffix)]
    assert len(matches) == 1, suffix
    return np.asarray(matches[0].numpy(), np.float64)


def _rms(x, scale, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def _rotate(x, positions, theta, scaling):
    hd = x.shape[-1]
    inv = rope_inverse_frequencies(hd, theta, scaling.get("type"), scaling.get("factor", 1.0))
    angle = positions[:, None].astype(np.float32) * inv.astype(np.float32)[None]
    emb = np.concatenate([angle, angle], -1).astype(np.float64)
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def numpy_gemma(lm, cfg, ids):
    """Logits (batch, seq, vocab) the way Hugging Face's Gemma/Gemma2/Gemma3 models compute
    them (norm scales here are the stored `1 + w`)."""
    eps, hd = cfg.layer_norm_epsilon, cfg.head_dim
    nh, nkv = cfg.num_heads, cfg.kv_heads
    b, t = ids.shape
    x = _w(lm, "embedding/token_embeddings")[ids] * np.float32(np.sqrt(cfg.d_model))
    pos = np.arange(t)
    types = cfg.layer_types or ["full_attention"] * cfg.num_layers
    for i in range(cfg.num_layers):
        p = f"block_{i}/"
        local = types[i] == "sliding_attention"
        h = _rms(x, _w(lm, p + "norm1/scale"), eps)
        qkv = h @ _w(lm, p + "attention/qkv/kernel")
        q = qkv[..., :nh * hd].reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
        k = qkv[..., nh * hd:(nh + nkv) * hd].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        v = qkv[..., (nh + nkv) * hd:].reshape(b, t, nkv, hd).transpose(0, 2, 1, 3)
        if cfg.qk_norm:
            q = _rms(q, _w(lm, p + "attention/q_norm/scale"), eps)
            k = _rms(k, _w(lm, p + "attention/k_norm/scale"), eps)
        if local and cfg.rope_local_theta:
            theta, scaling = cfg.rope_local_theta, {}
        else:
            theta, scaling = cfg.rope_theta, cfg.rope_scaling or {}
        q, k = _rotate(q, pos, theta, scaling), _rotate(k, pos, theta, scaling)
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) * (cfg.query_pre_attn_scalar or hd) ** -0.5
        if cfg.attn_logit_softcap:
            scores = np.tanh(scores / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
        distance = pos[:, None] - pos[None, :]
        mask = (distance >= 0) & ((distance < cfg.sliding_window) if local else True)
        scores = np.where(mask, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, nh * hd)
        attn = attn @ _w(lm, p + "attention/out/kernel")
        if cfg.post_norms:
            attn = _rms(attn, _w(lm, p + "post_attention_norm/scale"), eps)
        x = x + attn
        h = _rms(x, _w(lm, p + "norm2/scale"), eps)
        out = (_gelu_tanh(h @ _w(lm, p + "ffn/gate/kernel")) *
               (h @ _w(lm, p + "ffn/up/kernel"))) @ _w(lm, p + "ffn/down/kernel")
        if cfg.post_norms:
            out = _rms(out, _w(lm, p + "post_ffn_norm/scale"), eps)
        x = x + out
    x = _rms(x, _w(lm, "final_norm/scale"), eps)
    logits = x @ _w(lm, "embedding/token_embeddings").T
    if cfg.final_logit_softcap:
        logits = np.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_numpy_gemma(variant):
    lm = _model(variant)
    cfg = _config(variant)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 17)).astype("int32")
    got = lm(ids).numpy()
    np.testing.assert_allclose(got, numpy_gemma(lm, cfg, ids), atol=1e-4)
    if cfg.sliding_window:  # 17 tokens against a window of 5 or 6: the window matters
        assert np.abs(got - _model(variant, sliding_window=None, layer_types=None)(ids)
                      .numpy()).max() > 1e-3
    if cfg.final_logit_softcap:
        assert np.abs(got).max() <= cfg.final_logit_softcap


@pytest.mark.parametrize("variant", ["gemma2", "gemma3"])
def test_cached_greedy_equals_full_forward_across_the_window(variant):
    lm = _model(variant)
    prompts = [[5, 9, 2, 7], [11, 3]]  # ragged: left-padded rows with their own positions
    new = 12  # past the window of 5 or 6 from either prompt
    got = get_generator(lm).generate_ids(prompts, GenerationParams(new, stop_at_end=False))
    for prompt, ids in zip(prompts, got):
        seq = list(prompt)
        for _ in range(new):
            seq.append(int(np.argmax(lm(np.array([seq], np.int32)).numpy()[0, -1])))
        assert ids == seq[len(prompt):]
    # Step by step through the cache, the logits equal the full pass at every position.
    ids = np.random.default_rng(2).integers(0, 61, (1, 14)).astype("int32")
    full = lm(ids).numpy()[0]
    caches = lm.backbone.empty_caches(1)
    for t in range(ids.shape[1]):
        logits, caches = lm.call_with_cache(ids[:, t:t + 1], caches, t)
        np.testing.assert_allclose(logits.numpy()[0, 0], full[t], atol=1e-4)


def test_sliding_layers_cache_a_ring_of_window_slots_even_with_padded_prefills():
    lm = _model("gemma3")  # window 6 of 32 positions; layers sliding, sliding, full
    caches = lm.backbone.empty_caches(1)
    assert [tuple(k.shape) for k, _ in caches] == [(1, 1, 6, 24), (1, 1, 6, 24),
                                                    (1, 1, 32, 24)]
    ids = np.random.default_rng(5).integers(0, 61, (1, 20)).astype("int32")
    full = lm(ids).numpy()[0]
    # As the LiteRT-LM runtime feeds a prompt: fixed-length prefills padded with token 0 at
    # position 0 after the prompt (and longer than the window), then one token at a time.
    for prompt, chunk in ((9, 16), (13, 8), (3, 4)):
        caches = lm.backbone.empty_caches(1)
        start = 0
        while start < prompt:
            n = min(chunk, prompt - start)
            tokens = np.zeros((1, chunk), np.int32)
            positions = np.zeros((chunk,), np.int32)
            tokens[0, :n] = ids[0, start:start + n]
            positions[:n] = np.arange(start, start + n)
            _, caches = lm.call_with_cache(tokens, caches, start, positions=positions)
            start += n
        for t in range(prompt, ids.shape[1]):
            logits, caches = lm.call_with_cache(ids[:, t:t + 1], caches, t)
            np.testing.assert_allclose(logits.numpy()[0, 0], full[t], atol=1e-4)


def test_a_window_as_long_as_the_context_is_full_attention():
    ids = np.arange(1, 17, dtype=np.int32)[None]
    window = _model("gemma2", max_len=16, sliding_window=16)
    full = _model("gemma2", max_len=16, sliding_window=None, layer_types=None)
    np.testing.assert_allclose(window(ids).numpy(), full(ids).numpy(), atol=1e-6)
    # A shorter context clamps the window to it (exact for the reason above).
    short = window.with_max_len(8)
    assert short.config.sliding_window == 8
    np.testing.assert_allclose(short(ids[:, :8]).numpy(), full(ids[:, :8]).numpy(), atol=1e-6)


def test_save_load_round_trip(tmp_path):
    import keras

    lm = _model("gemma3")
    ids = np.arange(12, dtype=np.int32)[None]
    path = str(tmp_path / "m.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(ids).numpy(), lm(ids).numpy())
    assert loaded.config == lm.config


def test_configs_without_the_gemma_fields_load_unchanged():
    cfg = ModelConfig(vocab_size=61)
    for field in ("post_norms", "scale_embeddings", "query_pre_attn_scalar",
                  "attn_logit_softcap", "final_logit_softcap", "sliding_window",
                  "layer_types", "rope_local_theta"):
        assert getattr(cfg, field) in (False, None)
    assert cfg.attention_types == ["full_attention"] * cfg.num_layers


@pytest.mark.parametrize("changes, match", [
    (dict(layer_types=["sliding_attention", "chunked_attention"]),
     "unknown layer_types entry 'chunked_attention'"),
    (dict(layer_types=["full_attention"]), "layer_types must be a list of num_layers"),
    (dict(sliding_window=64), "sliding_window 64 is larger than the context"),
    (dict(sliding_window=None), "sliding_window is null"),
    (dict(attn_logit_softcap=float("nan")), "attn_logit_softcap must be a positive"),
    (dict(query_pre_attn_scalar=-1.0), "query_pre_attn_scalar must be a positive"),
    (dict(norm_first=False), "post_norms needs pre-norm blocks"),
])
def test_bad_gemma_fields(changes, match):
    with pytest.raises(ConfigError, match=match):
        _config("gemma2", **changes)
