"""Import Llama-family Hugging Face checkpoints: `llama`, `mistral`, `qwen2`, `qwen3`.

All four are pre-RMSNorm decoders with rotary positions, SwiGLU and grouped-query
attention; they differ in Q/K/V biases (Qwen2), QK-norm (Qwen3), head width, tied output
and RoPE scaling, which `ModelConfig` expresses. Hugging Face stores projections as
`[out, in]` (Keras Dense kernels are `[in, out]`), Q/K rows already in the half-split
rotary order tfllm uses. Configs come from transformers 4.x (`rope_theta`, `rope_scaling`)
or 5.x (`rope_parameters`). `llama_weights` is shared with the GGUF importer.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfllm.checkpoints.common import (CheckpointError, check_tensors, config_fields,
                                      read_hf_config, read_optional_json, read_safetensors)
from tfllm.config import LAYER_TYPES, LIMITS, ConfigError, ModelConfig
from tfllm.errors import TokenizerError
from tfllm.untrusted import Fields, excerpt, read_json_object

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_MAX_LEN = 2048
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu",
                "gelu_new": "gelu"}
# Buffers some checkpoints carry that are not weights.
_BUFFERS = (".rotary_emb.inv_freq",)


def choose_max_len(model_max: int, max_len: int | None, where: str) -> int:
    """The KV cache length: `max_len`, or min(model's, 2048); above the model's is refused."""
    if max_len is None:
        return min(model_max, DEFAULT_MAX_LEN)
    if not isinstance(max_len, int) or max_len < 2:
        raise CheckpointError(f"--max-len must be an integer >= 2, got {max_len!r}")
    if max_len > model_max:
        raise CheckpointError(f"--max-len {max_len} is above the {model_max} positions "
                              f"{where} supports; choose at most {model_max}")
    return max_len


def rope_scaling_of(path: str, params: dict | None) -> dict | None:
    """tfllm's `rope_scaling` of a Hugging Face `rope_scaling` / `rope_parameters` dict."""
    if not params:
        return None
    f = Fields(path, params, CheckpointError, "rope_scaling.")
    kind = f.text("rope_type", params.get("type", "default")) if "rope_type" in params \
        else f.text("type", "default")
    if kind == "default":
        return None
    if kind == "linear":
        return {"type": "linear", "factor": f.number("factor", low=0)}
    if kind == "llama3":
        return {"type": "llama3", "factor": f.number("factor", low=0),
                "low_freq_factor": f.number("low_freq_factor", low=0),
                "high_freq_factor": f.number("high_freq_factor", low=0),
                "original_max_position_embeddings":
                    f.integer("original_max_position_embeddings", high=LIMITS["max_len"])}
    raise CheckpointError(f"{path}: rope scaling type {excerpt(kind)} is not supported; "
                          "supported: default, linear, llama3")


def stated_layer_types(f: Fields, num_layers: int) -> list[str] | None:
    """A config's `layer_types` list, checked, or None where it states none."""
    types = f.data.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != num_layers:
        raise CheckpointError(f"{f.path}: layer_types must list num_hidden_layers "
                              f"({num_layers}) entries, got {excerpt(types)}")
    bad = [t for t in types if t not in LAYER_TYPES]
    if bad:
        raise CheckpointError(f"{f.path}: unknown layer_types entry {excerpt(bad[0])}; "
                              f"known: {', '.join(LAYER_TYPES)}")
    return types


def sliding_layers(f: Fields, model_type: str, context: int) -> tuple:
    """`(sliding_window, layer_types)` of a config: Mistral's window on every layer;
    Qwen2/3's (with `use_sliding_window`) on layers from `max_window_layers` on; a stated
    `layer_types` list (transformers 4.5x+, Gemma) wins. A window at least as long as the
    context is full attention (exactly), so it is dropped."""
    num_layers = f.integer("num_hidden_layers", high=LIMITS["num_layers"])
    if model_type == "mistral":
        window = f.integer("sliding_window", 0, low=0)
    elif model_type in ("qwen2", "qwen3") and f.boolean("use_sliding_window", False):
        window = f.integer("sliding_window", 0, low=0)
    else:
        window = 0
    types = stated_layer_types(f, num_layers)
    if types is None and model_type in ("qwen2", "qwen3") and window:
        first = f.integer("max_window_layers", num_layers, low=0)
        types = ["full_attention" if i < first else "sliding_attention"
                 for i in range(num_layers)]
    if not window or window >= context or (types is not None and
                                           "sliding_attention" not in types):
        return None, None
    return window, types


def read_config(checkpoint: str, max_len: int | None = None) -> ModelConfig:
    """The ModelConfig of a llama / mistral / qwen2 / qwen3 `config.json`, every value
    type-checked and bounded before anything is built."""
    f = config_fields(checkpoint)
    path = f.path
    model_type = f.text("model_type", choices=MODEL_TYPES)
    f.require(("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
               "vocab_size"),
              "a Llama-family config.json")
    heads = f.integer("num_attention_heads", high=LIMITS["num_heads"])
    d_model = f.integer("hidden_size", high=LIMITS["d_model"])
    act = f.text("hidden_act", "silu", choices=_ACTIVATIONS)
    model_max = f.integer("max_position_embeddings", 2048, high=LIMITS["max_len"])
    context = choose_max_len(model_max, max_len, "this checkpoint")
    window, layer_types = sliding_layers(f, model_type, context)
    attention_bias = f.boolean("attention_bias", False)
    if attention_bias and not f.boolean("mlp_bias", False) and model_type == "llama":
        raise CheckpointError(f"{path}: attention_bias without mlp_bias is not supported")
    # transformers 5.x folds theta and scaling into rope_parameters.
    parameters = f.mapping("rope_parameters")
    rope = parameters or f.mapping("rope_scaling")
    theta = Fields(path, parameters, CheckpointError, "rope_parameters.").number(
        "rope_theta", 10000.0, low=0) if parameters and "rope_theta" in parameters else \
        f.number("rope_theta", 10000.0, low=0)
    try:
        return ModelConfig(
            vocab_size=f.integer("vocab_size", low=2, high=LIMITS["vocab_size"]),
            num_layers=f.integer("num_hidden_layers", high=LIMITS["num_layers"]),
            d_model=d_model, num_heads=heads,
            ffn_dim=f.integer("intermediate_size", high=LIMITS["ffn_dim"]),
            max_len=context, dropout=0.0, causal=True, activation=_ACTIVATIONS[act],
            norm_first=True, layer_norm_epsilon=f.number("rms_norm_eps", 1e-6, low=0, high=0.5),
            tokenizer="bpe",
            num_kv_heads=f.integer("num_key_value_heads", heads, high=LIMITS["num_kv_heads"]),
            head_size=f.integer("head_dim", d_model // heads or 1, high=LIMITS["head_size"]),
            position_embedding="rope", rope_theta=theta,
            rope_scaling=rope_scaling_of(path, rope), norm="rmsnorm", ffn="gated",
            qkv_bias=model_type == "qwen2" or attention_bias, proj_bias=attention_bias,
            qk_norm=model_type == "qwen3",
            tie_embeddings=f.boolean("tie_word_embeddings", False),
            sliding_window=window, layer_types=layer_types)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


# A block's norms (tfllm attribute -> Hugging Face name after "model.layers.N."): Llama's two
# pre-norms, or Gemma 2/3's four, where "post_attention_layernorm" is the attention
# output's norm rather than the feed-forward's input norm.
LLAMA_NORMS = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
POST_NORMS = {"norm1": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
              "norm2": "pre_feedforward_layernorm",
              "post_ffn_norm": "post_feedforward_layernorm"}


def block_norms(cfg: ModelConfig) -> dict[str, str]:
    """The block norms of `cfg` and their Hugging Face names."""
    return POST_NORMS if cfg.post_norms else LLAMA_NORMS


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every tensor name of a Hugging Face Llama-family (or Gemma) checkpoint and its
    shape."""
    d, f, hd = cfg.d_model, cfg.ffn_dim, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.kv_heads * hd
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + f"{name}.weight": (d,) for name in block_norms(cfg).values()})
        shapes.update({
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
        if cfg.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if cfg.proj_bias:
            shapes.update({p + "self_attn.o_proj.bias": (d,), p + "mlp.gate_proj.bias": (f,),
                           p + "mlp.up_proj.bias": (f,), p + "mlp.down_proj.bias": (d,)})
        if cfg.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (hd,),
                           p + "self_attn.k_norm.weight": (hd,)})
    return shapes


def read_weights(checkpoint: str, cfg: ModelConfig):
    """The checkpoint's tensors (as stored, read when looked up), checked against the
    config."""
    path, raw = read_safetensors(checkpoint)
    shapes = {k: v for k, v in raw.shapes.items() if not k.endswith(_BUFFERS)}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    check_tensors(path, shapes, expected_shapes(cfg))
    return raw


def llama_weights(model, cfg: ModelConfig, w, dtype, norm_offset: float = 0.0) -> list[tuple]:
    """Each variable of a tfllm CausalLM and a function making its value from
    Hugging Face-named Llama tensors (any float dtype, looked up only when called).

    Args:
        model: a CausalLM built from `cfg` (see `common.build_deferred`).
        w: a mapping of tensor names to arrays; a lazy one keeps one tensor in memory.
        dtype: the NumPy dtype of the values.
        norm_offset: added to every RMSNorm weight: Gemma's checkpoints store `w` of a
            norm that scales by `1 + w`, tfllm's norms the scale itself.
    """
    def take(name, transpose=True):
        def make():
            x = np.asarray(w[name]).astype(dtype, copy=False)  # no copy of float32 tensors
            return x.T if transpose else x
        return make

    def norm(name):
        if not norm_offset:
            return take(name, False)
        return lambda: (np.asarray(w[name], np.float32) + norm_offset).astype(dtype)

    def joined(makers, axis):
        return lambda: np.concatenate([m() for m in makers], axis=axis)

    bb = model.backbone
    pairs = [(bb.embedding.token_embeddings, take("model.embed_tokens.weight", False)),
             (bb.norm.scale, norm("model.norm.weight"))]
    if not cfg.tie_embeddings:
        pairs.append((bb.embedding.output_embeddings, take("lm_head.weight", False)))
    for i, block in enumerate(bb.blocks):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        att = block.attention
        # The fused projection's columns are [Q heads | K heads | V heads].
        pairs.append((att.qkv.kernel, joined([take(a + f"{n}_proj.weight") for n in "qkv"], 1)))
        if cfg.qkv_bias:
            pairs.append((att.qkv.bias,
                          joined([take(a + f"{n}_proj.bias", False) for n in "qkv"], 0)))
        pairs.append((att.out.kernel, take(a + "o_proj.weight")))
        if cfg.qk_norm:
            pairs += [(att.q_norm.scale, norm(a + "q_norm.weight")),
                      (att.k_norm.scale, norm(a + "k_norm.weight"))]
        pairs += [(getattr(block, attr).scale, norm(p + f"{name}.weight"))
                  for attr, name in block_norms(cfg).items()]
        for name in ("gate", "up", "down"):
            pairs.append((getattr(block.ffn, name).kernel, take(p + f"mlp.{name}_proj.weight")))
        if cfg.proj_bias:
            pairs.append((att.out.bias, take(a + "o_proj.bias", False)))
            for name in ("gate", "up", "down"):
                pairs.append((getattr(block.ffn, name).bias,
                               take(p + f"mlp.{name}_proj.bias", False)))
    return pairs


def _token_id(token, vocab_ids: dict) -> int | None:
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer_configs
        token = token.get("content")
    return vocab_ids.get(token) if isinstance(token, str) else None


def tokenizer_entry(checkpoint: str) -> tuple[dict, dict[str, str]]:
    """The run's tokenizer entry and the files to copy, from the checkpoint's tokenizer
    files: `tokenizer.json` (byte-level BPE) or `tokenizer.model` (SentencePiece). Special
    ids come from generation_config.json, config.json and tokenizer_config.json."""
    config = read_optional_json(checkpoint, "config.json")
    generation = read_optional_json(checkpoint, "generation_config.json")
    tok_config = read_optional_json(checkpoint, "tokenizer_config.json")
    hf_json = os.path.join(checkpoint, "tokenizer.json")
    sp_model = os.path.join(checkpoint, "tokenizer.model")
    vocab_ids = {}
    if os.path.isfile(hf_json):
        spec = read_json_object(hf_json, CheckpointError)
        model = spec.get("model")
        if isinstance(model, dict) and model.get("type") == "BPE" and \
                "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
            from tfllm.tokenizers.hf_bpe import read_tokenizer_json

            try:
                vocab_ids = read_tokenizer_json(hf_json)[0]
            except TokenizerError as e:
                raise CheckpointError(f"the checkpoint's tokenizer cannot be used: {e}") \
                    from None
            kind, source = "hf-bpe", hf_json
        elif not os.path.isfile(sp_model):
            raise CheckpointError(f"{hf_json} is not a byte-level BPE tokenizer and there is "
                                  "no tokenizer.model; tfllm imports byte-level BPE "
                                  "(tokenizer.json) and SentencePiece (tokenizer.model)")
    if not vocab_ids:
        if not os.path.isfile(sp_model):
            raise CheckpointError(f"{checkpoint} has no tokenizer.json or tokenizer.model; "
                                  "copy the tokenizer files beside config.json")
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_file=sp_model)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
            raise CheckpointError(f"{sp_model} is not a SentencePiece model: {e}") from e
        vocab_ids = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        kind, source = "sentencepiece", sp_model

    def ids(value):
        values = value if isinstance(value, list) else [value]
        return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]

    eos = ids(generation.get("eos_token_id")) or ids(config.get("eos_token_id")) or \
        [i for i in [_token_id(tok_config.get("eos_token"), vocab_ids)] if i is not None]
    if not eos:
        raise CheckpointError(f"{checkpoint}: no EOS token id in generation_config.json, "
                              "config.json or tokenizer_config.json")
    bos = (ids(generation.get("bos_token_id")) or ids(config.get("bos_token_id")) or
           [i for i in [_token_id(tok_config.get("bos_token"), vocab_ids)] if i is not None])
    pad = _token_id(tok_config.get("pad_token"), vocab_ids)
    if pad is None:
        pad = (ids(generation.get("pad_token_id")) or ids(config.get("pad_token_id")) or
               [None])[0]
    # add_bos_token: Llama 2/3 and Mistral prepend BOS; Qwen and SmolLM2 do not.
    add_bos = bool(tok_config.get("add_bos_token", kind == "sentencepiece")) and bool(bos)
    name = "tokenizer.json" if kind == "hf-bpe" else "tokenizer.model"
    entry = {"type": kind, "file": name, "bos_id": bos[0] if bos else None, "eos_ids": eos,
             "pad_id": pad, "add_bos": add_bos}
    files = {name: source}
    template = tok_config.get("chat_template")
    if isinstance(template, str):
        entry["chat_template"] = template
    return entry, files


DTYPES = ("float32", "bfloat16")


def check_dtype(dtype: str) -> None:
    """CheckpointError unless `dtype` is one an import stores weights in (`DTYPES`)."""
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def import_llama(checkpoint: str, out: str, overwrite: bool = False,
                 max_len: int | None = None, dtype: str = "float32") -> str:
    """Import a llama / mistral / qwen2 / qwen3 checkpoint into the run directory `out`.

    Args:
        checkpoint: a directory with config.json, safetensors and tokenizer files.
        out: the run directory to write (an existing run only with `overwrite`).
        max_len: the context (KV cache) length; default min(model's, 2048).
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_llama("downloads/SmolLM2-135M-Instruct", "runs/smollm2")  # doctest: +SKIP
    """
    from tfllm import runs
    from tfllm.checkpoints.common import build_deferred, write_imported_run

    check_dtype(dtype)
    output = runs.new_run(out, overwrite, [checkpoint], "import-hf")
    cfg = read_config(checkpoint, max_len)
    entry, files = tokenizer_entry(checkpoint)
    check_tokenizer_fits(entry, files, cfg)
    weights = read_weights(checkpoint, cfg)
    model_type = read_hf_config(checkpoint)[1]["model_type"]
    model = build_deferred(lambda: build_model(cfg, dtype))
    return write_imported_run(output, model,
                              llama_weights(model, cfg, weights, numpy_dtype(dtype)), {
        "model": cfg.to_dict(), "preset": model_type, "objective": "clm", "data": None,
        "training": None, "dtype": dtype,
        "imported_from": {"format": f"huggingface-{model_type}",
                          "path": os.path.abspath(checkpoint)},
        "tokenizer": entry,
    }, files)


def numpy_dtype(dtype: str):
    """The NumPy dtype of a run's weight dtype name ("float32" or "bfloat16")."""
    import ml_dtypes

    return np.float32 if dtype == "float32" else ml_dtypes.bfloat16


def build_model(cfg: ModelConfig, dtype: str = "float32"):
    """A CausalLM of `cfg` whose weights are stored in `dtype`."""
    from tfllm.models import CausalLM

    return CausalLM.from_model_config(cfg, name="causal_lm", dtype=dtype)


def check_tokenizer_fits(entry: dict, files: dict, cfg: ModelConfig) -> None:
    """Check the tokenizer files before anything is written, without building the in-graph
    tokenizer (keras-hub and its tables would sit in memory through the import's peak)."""
    from tfllm.errors import TokenizerError
    from tfllm.tokenizers.hf_bpe import read_tokenizer_json

    source = files[entry["file"]]
    try:
        if entry["type"] == "hf-bpe":
            size = max(read_tokenizer_json(source)[0].values()) + 1
        else:
            import sentencepiece as spm

            size = spm.SentencePieceProcessor(model_file=source).get_piece_size()
    except TokenizerError as e:
        raise CheckpointError(f"the checkpoint's tokenizer cannot be used: {e}") from e
    except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
        raise CheckpointError(f"{source} is not a SentencePiece model: {e}") from e
    ids = [i for i in [entry.get("bos_id"), entry.get("pad_id"), *entry["eos_ids"]]
           if i is not None]
    if size > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {size} tokens but the model only "
                              f"{cfg.vocab_size}")
    if any(not 0 <= i < size for i in ids):
        raise CheckpointError(f"special token ids {ids} do not fit the tokenizer's {size} "
                              "tokens")


# -- the inverse: a run written back as a Hugging Face checkpoint (export/hf.py) --------------

def hf_model_type(cfg: ModelConfig) -> str | None:
    """The Hugging Face model_type a Llama-style run (rotary positions, RMSNorm, SwiGLU)
    is written as: "llama", "qwen2" (Q/K/V biases) or "qwen3" (QK-norm); None for other
    architectures."""
    llama_like = (cfg.position_embedding == "rope" and cfg.norm == "rmsnorm"
                  and cfg.ffn == "gated" and cfg.activation == "silu" and cfg.norm_first)
    gemma_fields = (cfg.post_norms or cfg.scale_embeddings or cfg.rope_local_theta or
                    cfg.query_pre_attn_scalar or cfg.attn_logit_softcap or
                    cfg.final_logit_softcap)
    if not (llama_like and cfg.causal) or gemma_fields:
        return None
    if cfg.sliding_window is not None:
        # Mistral: one window on every layer; Qwen's per-layer windows are written as
        # their layer_types.
        if cfg.layer_types is None and not (cfg.qk_norm or cfg.qkv_bias or cfg.proj_bias):
            return "mistral"
        if cfg.qk_norm and not (cfg.qkv_bias or cfg.proj_bias):
            return "qwen3"
        if cfg.qkv_bias and not cfg.proj_bias:
            return "qwen2"
        raise CheckpointError("sliding-window layers with this architecture have no "
                              "transformers counterpart")
    if cfg.qk_norm:
        if cfg.qkv_bias or cfg.proj_bias:
            raise CheckpointError("QK-norm with projection biases has no transformers "
                                  "counterpart")
        return "qwen3"
    if cfg.qkv_bias and not cfg.proj_bias:
        return "qwen2"
    return "llama"


def _np(variable):
    return np.asarray(variable.numpy(), np.float32)


def hf_tensors(model, cfg: ModelConfig, norm_offset: float = 0.0) -> dict[str, np.ndarray]:
    """The run's weights under Hugging Face Llama names ([out, in] projections); the
    inverse of `llama_weights` (`norm_offset` is subtracted from the norms)."""
    def norm(variable):
        return _np(variable) - np.float32(norm_offset)

    bb = model.backbone
    q, kv = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    t = {"model.embed_tokens.weight": _np(bb.embedding.token_embeddings),
         "model.norm.weight": norm(bb.norm.scale)}
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = _np(bb.embedding.output_embeddings)
    for i, block in enumerate(bb.blocks):
        p, att = f"model.layers.{i}.", block.attention
        a = p + "self_attn."
        # The fused projection's columns are [Q heads | K heads | V heads].
        qkv = _np(att.qkv.kernel)  # (d_model, q + 2 * kv)
        for name, part in zip("qkv", np.split(qkv, [q, q + kv], axis=1)):
            t[a + f"{name}_proj.weight"] = np.ascontiguousarray(part.T)
        if cfg.qkv_bias:
            for name, part in zip("qkv", np.split(_np(att.qkv.bias), [q, q + kv])):
                t[a + f"{name}_proj.bias"] = part
        t[a + "o_proj.weight"] = np.ascontiguousarray(_np(att.out.kernel).T)
        if cfg.qk_norm:
            t[a + "q_norm.weight"] = norm(att.q_norm.scale)
            t[a + "k_norm.weight"] = norm(att.k_norm.scale)
        for attr, name in block_norms(cfg).items():
            t[p + f"{name}.weight"] = norm(getattr(block, attr).scale)
        for name in ("gate", "up", "down"):
            layer = getattr(block.ffn, name)
            t[p + f"mlp.{name}_proj.weight"] = np.ascontiguousarray(_np(layer.kernel).T)
            if cfg.proj_bias:
                t[p + f"mlp.{name}_proj.bias"] = _np(layer.bias)
        if cfg.proj_bias:
            t[a + "o_proj.bias"] = _np(att.out.bias)
    return t


def hf_weights(model, cfg: ModelConfig, tensors: dict) -> list[tuple]:
    """`llama_weights` of tensors `hf_tensors` wrote (the exporter's round-trip check)."""
    return llama_weights(model, cfg, tensors, np.float32)


def hf_config(cfg: ModelConfig, model_type: str, bos, eos, dtype: str) -> dict:
    """config.json of the written checkpoint (`eos`: one id or a list)."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
    out = {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
           "hidden_act": "silu", "max_position_embeddings": cfg.max_len,
           "rms_norm_eps": cfg.layer_norm_epsilon, "rope_theta": cfg.rope_theta,
           "rope_scaling": hf_rope_scaling(cfg.rope_scaling),
           "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
           "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": dtype}
    if model_type == "llama":
        out.update(attention_bias=cfg.proj_bias, mlp_bias=cfg.proj_bias)
    if model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if model_type in ("qwen2", "qwen3"):
        out.update(use_sliding_window=cfg.sliding_window is not None,
                   sliding_window=cfg.sliding_window, layer_types=cfg.attention_types,
                   # transformers before layer_types: layers from this one on slide.
                   max_window_layers=(cfg.attention_types + ["sliding_attention"]).index(
                       "sliding_attention"))
    if model_type == "qwen3":
        out["attention_bias"] = False
    return out


def hf_rope_scaling(scaling):
    if not scaling:
        return None
    return {"rope_type": scaling["type"], **{k: v for k, v in scaling.items() if k != "type"}}
