"""Random tiny Gemma-family checkpoints in the Hugging Face file layout, and an independent
NumPy forward pass over their tensors (Hugging Face's modeling_gemma/gemma2/gemma3 math:
norms scale by 1 + w, embeddings times sqrt(hidden_size), GeGLU, query_pre_attn_scalar,
post-norms, soft-capping, sliding windows with Gemma 3's local rotary base)."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np

# model_type -> config.json fields beyond the shared ones.
VARIANTS = {
    "gemma": dict(model_type="gemma", num_key_value_heads=1, head_dim=24),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=16,
                   query_pre_attn_scalar=24, attn_logit_softcapping=1.5,
                   final_logit_softcapping=2.5, sliding_window=6),
    # transformers 5.x spelling of Gemma 3: layer_types and per-kind rope_parameters.
    "gemma3_text": dict(model_type="gemma3_text", num_hidden_layers=3, num_key_value_heads=1,
                        head_dim=32, query_pre_attn_scalar=32, sliding_window=5,
                        final_logit_softcapping=None, attn_logit_softcapping=None,
                        layer_types=["sliding_attention", "sliding_attention",
                                     "full_attention"],
                        rope_parameters={"full_attention": {"rope_type": "linear",
                                                            "factor": 2.0,
                                                            "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default",
                                                               "rope_theta": 1e4}}),
}


def hf_config(model_type: str, vocab_size: int) -> dict:
    return {"architectures": ["X"], "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": vocab_size,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1,
            "pad_token_id": 0, "rope_theta": 10000.0, **VARIANTS[model_type]}


def image_text_config(text: dict) -> dict:
    """A Gemma3ForConditionalGeneration config.json around a gemma3_text config."""
    return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "text_config": {**text, "model_type": "gemma3_text"},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8}}


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with every name and shape Hugging Face uses for `cfg` (norm weights
    are the stored `w` of `1 + w`)."""
    rng = np.random.default_rng(seed)
    d, f, nh = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    hd, nkv = cfg["head_dim"], cfg["num_key_value_heads"]

    def w(*shape, scale=0.08, mean=0.0):
        return rng.normal(mean, scale, shape).astype(np.float32)

    t = {"model.embed_tokens.weight": w(cfg["vocab_size"], d, scale=0.1),
         "model.norm.weight": w(d, scale=0.3)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if cfg["model_type"] != "gemma":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + f"{n}.weight": w(d, scale=0.3) for n in norms})
        t.update({p + "self_attn.q_proj.weight": w(nh * hd, d),
                  p + "self_attn.k_proj.weight": w(nkv * hd, d),
                  p + "self_attn.v_proj.weight": w(nkv * hd, d),
                  p + "self_attn.o_proj.weight": w(d, nh * hd),
                  p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
        if cfg["model_type"] == "gemma3_text":
            t.update({p + "self_attn.q_norm.weight": w(hd, scale=0.3),
                      p + "self_attn.k_norm.weight": w(hd, scale=0.3)})
    return t


SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
CONTROL = ["<start_of_turn>", "<end_of_turn>"]


def sentencepiece_model(corpus, vocab_size: int = 400) -> bytes:
    """A Gemma-shaped SentencePiece BPE model: pad 0, eos 1, bos 2, unk 3, byte fallback,
    no normalization (not even of whitespace), no dummy prefix, digits split, the turn
    markers as control pieces."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True,
        add_dummy_prefix=False, control_symbols=CONTROL, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, minloglevel=2)
    return model.getvalue()


def write_checkpoint(root: str, model_type: str, seed: int = 0, image_text: bool = False,
                     **overrides) -> str:
    """A checkpoint directory: config.json, model.safetensors, tokenizer.model,
    tokenizer_config.json (no chat template: the family's is used), generation_config.json.
    `image_text`: a gemma3 checkpoint (text_config, weights under language_model.model.,
    a vision tower)."""
    from safetensors.numpy import save_file

    from tests.tokenizers.hf_fixtures import corpus

    os.makedirs(root, exist_ok=True)
    proto = sentencepiece_model(corpus())
    with open(os.path.join(root, "tokenizer.model"), "wb") as f:
        f.write(proto)
    cfg = {**hf_config(model_type, 400), **overrides}
    tensors = hf_tensors(cfg, seed)
    if image_text:
        tensors = {"language_model." + k: v for k, v in tensors.items()}
        tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = \
            np.zeros((8, 3, 2, 2), np.float32)
        tensors["multi_modal_projector.mm_input_projection_weight"] = \
            np.zeros((8, cfg["hidden_size"]), np.float32)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(image_text_config(cfg) if image_text else cfg, f)
    with open(os.path.join(root, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": [1, 5], "pad_token_id": 0}, f)
    with open(os.path.join(root, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "bos_token": "<bos>", "eos_token": "<eos>",
                   "pad_token": "<pad>"}, f)
    save_file(tensors, os.path.join(root, "model.safetensors"))
    return root


def _inv_freq(theta: float, hd: int, factor: float = 1.0) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd) / factor


def _layer_types(cfg: dict) -> list[str]:
    n = cfg["num_hidden_layers"]
    if cfg.get("layer_types"):
        return cfg["layer_types"]
    if cfg["model_type"] == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return ["full_attention"] * n


def numpy_logits(cfg: dict, t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """(batch, seq, vocab) logits of Hugging Face's Gemma/Gemma2/Gemma3ForCausalLM for the
    tensors `t`, in float64."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    d, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, nkv = cfg["head_dim"], cfg["num_key_value_heads"]
    eps, kind = cfg["rms_norm_eps"], cfg["model_type"]
    b, s = ids.shape

    def rms(x, w):  # Gemma's RMSNorm: x * (1 + w)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)

    def rot(x, inv):
        ang = np.arange(s)[:, None] * inv[None].astype(np.float64)
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin

    rope = cfg.get("rope_parameters")
    if rope:  # transformers 5.x: per attention kind
        glob, local = rope["full_attention"], rope["sliding_attention"]
    else:  # 4.x: rope_theta and rope_scaling global, rope_local_base_freq (Gemma 3)
        scaling = cfg.get("rope_scaling") or {}
        linear = scaling.get("rope_type", scaling.get("type")) == "linear"
        glob = {"rope_theta": cfg.get("rope_theta", 10000.0),
                "factor": scaling["factor"] if linear else 1.0}
        local = {"rope_theta": cfg["rope_local_base_freq"]} if kind == "gemma3_text" else glob
    inv = {"full_attention": _inv_freq(glob["rope_theta"], hd, glob.get("factor", 1.0)),
           "sliding_attention": _inv_freq(local["rope_theta"], hd, local.get("factor", 1.0))}
    scale = cfg.get("query_pre_attn_scalar", hd) ** -0.5 if kind != "gemma" else hd ** -0.5
    attn_cap, final_cap = cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping")
    pos = np.arange(s)
    x = t["model.embed_tokens.weight"][ids] * np.float32(math.sqrt(d))
    for i, layer in enumerate(_layer_types(cfg)):
        p = f"model.layers.{i}."
        a = p + "self_attn."

        def proj(name, n):
            y = h @ t[a + f"{name}_proj.weight"].T
            return y.reshape(b, s, n, hd).transpose(0, 2, 1, 3)  # (batch, heads, seq, hd)

        h = rms(x, t[p + "input_layernorm.weight"])
        q, k, v = proj("q", nh), proj("k", nkv), proj("v", nkv)
        if a + "q_norm.weight" in t:
            q, k = rms(q, t[a + "q_norm.weight"]), rms(k, t[a + "k_norm.weight"])
        q, k = rot(q, inv[layer]), rot(k, inv[layer])
        k, v = np.repeat(k, nh // nkv, 1), np.repeat(v, nh // nkv, 1)
        scores = q @ k.transpose(0, 1, 3, 2) * scale
        if attn_cap:
            scores = np.tanh(scores / attn_cap) * attn_cap
        visible = pos[None, :] <= pos[:, None]
        if layer == "sliding_attention":
            visible &= pos[None, :] > pos[:, None] - cfg["sliding_window"]
        scores = np.where(visible, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        o = (scores @ v).transpose(0, 2, 1, 3).reshape(b, s, nh * hd) @ t[a + "o_proj.weight"].T
        if kind == "gemma":
            x = x + o
            h = rms(x, t[p + "post_attention_layernorm.weight"])
        else:
            x = x + rms(o, t[p + "post_attention_layernorm.weight"])
            h = rms(x, t[p + "pre_feedforward_layernorm.weight"])
        g = h @ t[p + "mlp.gate_proj.weight"].T
        gelu = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        o = (gelu * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
        x = x + (o if kind == "gemma" else rms(o, t[p + "post_feedforward_layernorm.weight"]))
    logits = rms(x, t["model.norm.weight"]) @ t["model.embed_tokens.weight"].T
    return np.tanh(logits / final_cap) * final_cap if final_cap else logits


def import_tiny_gemma3(root: str, window: int, max_len: int) -> str:
    """A tiny Gemma 3 checkpoint (sliding layers of `window`, one global) imported as the run
    `root/run`; returns its path."""
    from tfllm.checkpoints import import_hf

    ckpt = write_checkpoint(os.path.join(root, "ckpt"), "gemma3_text", seed=4,
                            sliding_window=window)
    return import_hf(ckpt, os.path.join(root, "run"), max_len=max_len)
