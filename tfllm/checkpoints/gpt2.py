"""Import a Hugging Face GPT-2 checkpoint into a tfllm run directory.

A checkpoint directory holds `config.json`, `model.safetensors`, `vocab.json` and
`merges.txt` (as Hugging Face saves them). GPT-2 is exactly tfllm's pre-LN causal decoder
with learned positions, tied embeddings and tanh-GELU, so every weight maps one to one;
GPT-2 stores its projections as Conv1D kernels `[in, out]`, which is Keras' Dense layout,
and `c_attn` fuses Q, K and V in the order tfllm's fused QKV projection uses.
"""

from __future__ import annotations

import os

import numpy as np

from tfllm import runs
from tfllm.checkpoints.common import (CheckpointError, build_deferred, check_tensors,
                                      config_fields, read_safetensors, write_imported_run)
from tfllm.config import LIMITS, ConfigError, ModelConfig

_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
# Non-weight buffers some GPT-2 checkpoints carry (causal-mask tables).
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def read_config(checkpoint: str) -> ModelConfig:
    """The ModelConfig of a GPT-2 `config.json` (any size: small to xl), every value
    type-checked and bounded before anything is built."""
    f = config_fields(checkpoint)
    f.require(("n_embd", "n_layer", "n_head", "vocab_size"),
              "a GPT-2 config.json")
    f.text("model_type", "gpt2", choices=("gpt2",))
    act = f.text("activation_function", "gelu_new", choices=_ACTIVATIONS)
    d_model = f.integer("n_embd", high=LIMITS["d_model"])
    try:
        return ModelConfig(
            vocab_size=f.integer("vocab_size", low=2, high=LIMITS["vocab_size"]),
            num_layers=f.integer("n_layer", high=LIMITS["num_layers"]), d_model=d_model,
            num_heads=f.integer("n_head", high=LIMITS["num_heads"]),
            ffn_dim=f.integer("n_inner", 4 * d_model, high=LIMITS["ffn_dim"]),
            max_len=f.integer("n_positions", f.integer("n_ctx", 1024, high=LIMITS["max_len"]),
                              high=LIMITS["max_len"]),
            dropout=f.number("resid_pdrop", 0.1, low=0, high=0.99, low_open=False),
            causal=True, activation=_ACTIVATIONS[act], norm_first=True,
            layer_norm_epsilon=f.number("layer_norm_epsilon", 1e-5, low=0, high=0.5),
            tokenizer="bpe")
    except ConfigError as e:
        raise CheckpointError(f"{f.path}: {e}") from None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every GPT-2 tensor name (without the `transformer.` prefix) and its shape."""
    d, f = cfg.d_model, cfg.ffn_dim
    shapes = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (cfg.max_len, d),
              "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.num_layers):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,),
        })
    return shapes


def read_weights(checkpoint: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """GPT-2 tensors by name, checked against the config; errors list every problem."""
    path, raw = read_safetensors(checkpoint)
    tensors = {}
    for key, value in raw.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name == "lm_head.weight" or name.endswith(_BUFFERS):
            continue  # tied to wte / a mask buffer: nothing to load
        tensors[name] = value
    check_tensors(path, {k: v.shape for k, v in tensors.items()}, expected_shapes(cfg))
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def gpt2_weights(model, w: dict[str, np.ndarray], dtype) -> list[tuple]:
    """Each variable of a tfllm CausalLM built from a GPT-2 config, and a function making its
    value from the GPT-2 tensors `w` (see `common.save_with_weights`)."""
    def take(name):
        return lambda: w[name].astype(dtype)

    bb = model.backbone
    pairs = [(bb.embedding.token_embeddings, take("wte.weight")),
             (bb.embedding.position_embeddings, take("wpe.weight")),
             (bb.norm.gamma, take("ln_f.weight")), (bb.norm.beta, take("ln_f.bias"))]
    for i, block in enumerate(bb.blocks):
        p = f"h.{i}."
        pairs += [
            (block.norm1.gamma, take(p + "ln_1.weight")),
            (block.norm1.beta, take(p + "ln_1.bias")),
            (block.attention.qkv.kernel, take(p + "attn.c_attn.weight")),
            (block.attention.qkv.bias, take(p + "attn.c_attn.bias")),
            (block.attention.out.kernel, take(p + "attn.c_proj.weight")),
            (block.attention.out.bias, take(p + "attn.c_proj.bias")),
            (block.norm2.gamma, take(p + "ln_2.weight")), (block.norm2.beta, take(p + "ln_2.bias")),
            (block.ffn.inner.kernel, take(p + "mlp.c_fc.weight")),
            (block.ffn.inner.bias, take(p + "mlp.c_fc.bias")),
            (block.ffn.outer.kernel, take(p + "mlp.c_proj.weight")),
            (block.ffn.outer.bias, take(p + "mlp.c_proj.bias")),
        ]
    return pairs


def import_gpt2(checkpoint: str, out: str, overwrite: bool = False,
                max_len: int | None = None, dtype: str = "float32") -> str:
    """Import the checkpoint into the run directory `out`; returns `out`.

    Args:
        max_len: the context length (at most the checkpoint's positions; default
            min(those, 2048)): the learned position table is cut to it.
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_gpt2("downloads/gpt2", "runs/gpt2")  # doctest: +SKIP
    """
    from tfllm.checkpoints.llama import build_model, check_dtype, choose_max_len, numpy_dtype
    from tfllm.tokenizers import BytePairTokenizer

    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
    check_dtype(dtype)
    output = runs.new_run(out, overwrite, [checkpoint], "import-hf")
    cfg = read_config(checkpoint)
    weights = read_weights(checkpoint, cfg)
    context = choose_max_len(cfg.max_len, max_len, "this checkpoint")
    weights["wpe.weight"] = weights["wpe.weight"][:context]
    cfg = ModelConfig(**{**cfg.to_dict(), "max_len": context})
    tokenizer = BytePairTokenizer(os.path.join(checkpoint, "vocab.json"),
                                  os.path.join(checkpoint, "merges.txt"))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"vocab.json has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.vocab_size}")
    model = build_deferred(lambda: build_model(cfg, dtype))
    return write_imported_run(output, model, gpt2_weights(model, weights,
                                                                  numpy_dtype(dtype)), {
        "model": cfg.to_dict(), "preset": "gpt2", "objective": "clm",
        "data": None, "training": None, "dtype": dtype,
        "imported_from": {"format": "huggingface-gpt2", "path": os.path.abspath(checkpoint)},
        "tokenizer": {"type": "gpt2-bpe", "vocabulary": "vocab.json", "merges": "merges.txt"},
    }, {name: os.path.join(checkpoint, name) for name in ("vocab.json", "merges.txt")})


# -- the inverse: a run written back as a Hugging Face checkpoint (export/hf.py) --------------

def hf_model_type(cfg: ModelConfig) -> str | None:
    """"gpt2" for a GPT-2-style run (learned positions, LayerNorm, GELU, biases, tied
    embeddings, plain multi-head attention), else None."""
    gpt2_like = (cfg.position_embedding == "learned" and cfg.norm == "layernorm"
                 and cfg.ffn == "plain" and cfg.activation == "gelu" and cfg.norm_first
                 and cfg.qkv_bias and cfg.proj_bias and cfg.tie_embeddings and cfg.causal
                 and cfg.kv_heads == cfg.num_heads and cfg.head_dim * cfg.num_heads
                 == cfg.d_model and not cfg.rope_scaling)
    return "gpt2" if gpt2_like else None


def _np(variable):
    return np.asarray(variable.numpy(), np.float32)


def hf_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The run's weights under Hugging Face GPT-2 names (Conv1D kernels are [in, out], as
    Keras stores them); the inverse of `gpt2_weights`."""
    bb = model.backbone
    t = {"transformer.wte.weight": _np(bb.embedding.token_embeddings),
         "transformer.wpe.weight": _np(bb.embedding.position_embeddings),
         "transformer.ln_f.weight": _np(bb.norm.gamma),
         "transformer.ln_f.bias": _np(bb.norm.beta)}
    for i, block in enumerate(bb.blocks):
        p, att = f"transformer.h.{i}.", block.attention
        t.update({p + "ln_1.weight": _np(block.norm1.gamma),
                  p + "ln_1.bias": _np(block.norm1.beta),
                  p + "ln_2.weight": _np(block.norm2.gamma),
                  p + "ln_2.bias": _np(block.norm2.beta),
                  p + "attn.c_attn.weight": _np(att.qkv.kernel),
                  p + "attn.c_attn.bias": _np(att.qkv.bias),
                  p + "attn.c_proj.weight": _np(att.out.kernel),
                  p + "attn.c_proj.bias": _np(att.out.bias),
                  p + "mlp.c_fc.weight": _np(block.ffn.inner.kernel),
                  p + "mlp.c_fc.bias": _np(block.ffn.inner.bias),
                  p + "mlp.c_proj.weight": _np(block.ffn.outer.kernel),
                  p + "mlp.c_proj.bias": _np(block.ffn.outer.bias)})
    return t


def hf_weights(model, cfg: ModelConfig, tensors: dict) -> list[tuple]:
    """`gpt2_weights` of tensors `hf_tensors` wrote (the exporter's round-trip check)."""
    return gpt2_weights(model, {k.removeprefix("transformer."): v for k, v in tensors.items()},
                        np.float32)


def hf_config(cfg: ModelConfig, model_type: str, bos, eos, dtype: str) -> dict:
    """config.json of the written checkpoint (`eos`: one id or a list)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len,
            "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.ffn_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
            "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": dtype}
