"""Random tiny Llama-family checkpoints in the Hugging Face file layout, and an independent
NumPy forward pass over their tensors (Hugging Face's modeling_llama/qwen2/qwen3 math)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from tests.tokenizers.hf_fixtures import make_tokenizer_json

# model_type -> config.json fields beyond the shared ones; shapes small, head_dim even.
VARIANTS = {
    "llama": dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=False,
                  rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16}),
    "mistral": dict(model_type="mistral", num_key_value_heads=1, sliding_window=None,
                    tie_word_embeddings=False, rope_theta=10000.0),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True,
                  rope_theta=1000000.0, use_sliding_window=False, sliding_window=32768),
    # transformers 5.x spelling: theta and scaling inside rope_parameters.
    "qwen3": dict(model_type="qwen3", num_key_value_heads=2, head_dim=24,
                  tie_word_embeddings=False, attention_bias=False,
                  rope_parameters={"rope_type": "linear", "factor": 2.0,
                                   "rope_theta": 1000000.0}),
}
FAMILY_TOKENIZER = {"llama": "llama3", "mistral": "gpt2", "qwen2": "qwen2", "qwen3": "qwen2"}


def hf_config(model_type: str, vocab_size: int) -> dict:
    return {"architectures": ["X"], "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": vocab_size,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "bos_token_id": 0, "eos_token_id": [1, 2], **VARIANTS[model_type]}


def hf_tensors(cfg: dict, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random weights with every name and shape Hugging Face uses for `cfg`."""
    rng = np.random.default_rng(seed)
    d, f, nh = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // nh
    nkv = cfg.get("num_key_value_heads", nh)

    def w(*shape, scale=0.08, mean=0.0):
        return rng.normal(mean, scale, shape).astype(np.float32).astype(dtype)

    t = {"model.embed_tokens.weight": w(cfg["vocab_size"], d, scale=0.5),
         "model.norm.weight": w(d, mean=1.0, scale=0.2)}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(cfg["vocab_size"], d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": w(d, mean=1.0, scale=0.2),
                  p + "post_attention_layernorm.weight": w(d, mean=1.0, scale=0.2),
                  p + "self_attn.q_proj.weight": w(nh * hd, d),
                  p + "self_attn.k_proj.weight": w(nkv * hd, d),
                  p + "self_attn.v_proj.weight": w(nkv * hd, d),
                  p + "self_attn.o_proj.weight": w(d, nh * hd),
                  p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
        if cfg["model_type"] == "qwen2":
            t.update({p + "self_attn.q_proj.bias": w(nh * hd, scale=0.3),
                      p + "self_attn.k_proj.bias": w(nkv * hd, scale=0.3),
                      p + "self_attn.v_proj.bias": w(nkv * hd, scale=0.3)})
        if cfg["model_type"] == "qwen3":
            t.update({p + "self_attn.q_norm.weight": w(hd, mean=1.0, scale=0.2),
                      p + "self_attn.k_norm.weight": w(hd, mean=1.0, scale=0.2)})
    return t


def write_checkpoint(root: str, model_type: str, shards: int = 1, dtype=np.float32,
                     seed: int = 0, vocab_size: int | None = None, **overrides) -> str:
    """A checkpoint directory: config.json, safetensors (sharded if asked), tokenizer.json,
    tokenizer_config.json, generation_config.json."""
    from safetensors.numpy import save_file

    os.makedirs(root, exist_ok=True)
    tok = make_tokenizer_json(os.path.join(root, "tokenizer.json"), FAMILY_TOKENIZER[model_type])
    with open(tok, encoding="utf-8") as f:
        spec = json.load(f)
    vocab = vocab_size or max(spec["model"]["vocab"].values()) + 1
    cfg = {**hf_config(model_type, vocab), **overrides}
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(root, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": [1, 2]}, f)
    with open(os.path.join(root, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": model_type == "llama", "chat_template": "{{ x }}"}, f)
    tensors = hf_tensors(cfg, seed, dtype)
    if shards == 1:
        save_file(tensors, os.path.join(root, "model.safetensors"))
    else:
        names = sorted(tensors)
        weight_map = {}
        for k in range(shards):
            shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[k::shards]}
            save_file(part, os.path.join(root, shard))
            weight_map.update({n: shard for n in part})
        with open(os.path.join(root, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return root


def _inv_freq(cfg: dict, hd: int) -> np.ndarray:
    """transformers' rope init functions (default, linear, llama3), written out again."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        return inv / rope["factor"]
    if kind == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, out)
    return inv


def numpy_logits(cfg: dict, t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """(batch, seq, vocab) logits of Hugging Face's LlamaForCausalLM (and Qwen2/3, Mistral
    with its sliding window) for the tensors `t`, in float64."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    d, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // nh
    nkv = cfg.get("num_key_value_heads", nh)
    eps = cfg["rms_norm_eps"]
    b, s = ids.shape

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rot(x):
        return np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)

    ang = np.arange(s)[:, None] * _inv_freq(cfg, hd)[None].astype(np.float64)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x = t["model.embed_tokens.weight"][ids]
    causal = np.tril(np.ones((s, s), bool))
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" or \
        cfg.get("use_sliding_window") else None
    first_sliding = cfg.get("max_window_layers", 0) if cfg["model_type"] != "mistral" else 0
    for i in range(cfg["num_hidden_layers"]):
        mask = causal if not window or i < first_sliding else \
            causal & ~np.tril(np.ones((s, s), bool), -window)
        p = f"model.layers.{i}.self_attn."

        def proj(name, n):
            y = h @ t[p + f"{name}_proj.weight"].T + t.get(p + f"{name}_proj.bias", 0.0)
            return y.reshape(b, s, n, hd).transpose(0, 2, 1, 3)  # (batch, heads, seq, hd)

        h = rms(x, t[f"model.layers.{i}.input_layernorm.weight"])
        q, k, v = proj("q", nh), proj("k", nkv), proj("v", nkv)
        if p + "q_norm.weight" in t:
            q, k = rms(q, t[p + "q_norm.weight"]), rms(k, t[p + "k_norm.weight"])
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = np.repeat(k, nh // nkv, 1), np.repeat(v, nh // nkv, 1)
        a = np.where(mask, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, nh * hd)
        x = x + o @ t[p + "o_proj.weight"].T
        m = f"model.layers.{i}.mlp."
        h = rms(x, t[f"model.layers.{i}.post_attention_layernorm.weight"])
        g = h @ t[m + "gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ t[m + "up_proj.weight"].T)) @ \
            t[m + "down_proj.weight"].T
    x = rms(x, t["model.norm.weight"])
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T
