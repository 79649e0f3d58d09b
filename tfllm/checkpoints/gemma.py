"""Import Gemma-family Hugging Face checkpoints: `gemma`, `gemma2`, `gemma3_text`, and the
language model of `gemma3` (Gemma3ForConditionalGeneration, its vision tower skipped);
and the inverse, a Gemma run written back as a checkpoint (`tfllm export hf`).

Gemma is a Llama-shaped decoder (rotary positions, RMSNorm, a gated feed-forward,
grouped-query attention, Llama's tensor names) with its own choices, which `ModelConfig`
expresses: norms scale by `1 + w` (checkpoints store w, tfllm's norms the scale, so 1 is
added here and subtracted on export; llama.cpp's GGUF files already hold `1 + w`), GeGLU
with tanh GELU, embeddings times sqrt(hidden_size), a tied output projection. Gemma 2 adds
post-norms around both branches, `query_pre_attn_scalar`, attention and final logit
soft-capping and sliding-window layers alternating with global ones; Gemma 3 drops the
capping, adds QK-norm, five sliding layers to each global one and a rotary base of their
own (`rope_local_base_freq`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping

import numpy as np

from tfllm.checkpoints import llama
from tfllm.checkpoints.common import (CheckpointError, check_tensors, read_hf_config,
                                      read_safetensors)
from tfllm.checkpoints.sentencepiece_vocab import readable_controls
from tfllm.config import LIMITS, ConfigError, ModelConfig
from tfllm.untrusted import Fields, excerpt

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3")
# Checkpoints store w of a norm scaling by 1 + w.
NORM_OFFSET = 1.0
_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "gelu_new")
# Gemma 3's layers: five sliding to one global (transformers' sliding_window_pattern).
GEMMA3_PATTERN = 6
# Where Gemma3ForConditionalGeneration keeps its language model (transformers < 4.52 and
# after); a text-only checkpoint's prefix is "model.".
_PREFIXES = ("model.", "language_model.model.", "model.language_model.")
# Gemma's chat format, text only (Google's template as published with Gemma 2 and 3:
# `<start_of_turn>user` / `model` turns, a system message folded into the first user turn),
# for checkpoints that carry none: llama.cpp's GGUF files do not.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


def generation_fields(generation: int, num_layers: int, window: int, context: int,
                      query_scalar: float | None, softcaps=(None, None),
                      local_theta: float | None = None, layer_types=None) -> dict:
    """The `ModelConfig` fields that make Gemma `generation` (1, 2 or 3) of a checkpoint.

    Args:
        window: `sliding_window` (0: none); one longer than the context is cut to it
            (exact: no key is farther), the layers keeping their kind and rotary base.
        query_scalar: `query_pre_attn_scalar` (None: head_dim).
        softcaps: (attention, final) logit caps (Gemma 2).
        local_theta: the sliding layers' rotary base (Gemma 3).
        layer_types: a stated per-layer list; default the generation's pattern.
    """
    fields = dict(activation="gelu", scale_embeddings=True, tie_embeddings=True,
                  post_norms=generation >= 2, qk_norm=generation >= 3,
                  query_pre_attn_scalar=query_scalar)
    if generation == 2:
        fields.update(attn_logit_softcap=softcaps[0], final_logit_softcap=softcaps[1])
    if generation >= 2 and window:
        if layer_types is None:
            period = 2 if generation == 2 else GEMMA3_PATTERN
            # The last layer of each period is global (transformers and llama.cpp alike).
            layer_types = ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
                           for i in range(num_layers)]
        if "sliding_attention" in layer_types:
            fields.update(sliding_window=min(window, context), layer_types=list(layer_types))
    if generation >= 3 and fields.get("sliding_window"):
        fields["rope_local_theta"] = local_theta
    return fields


def text_config(checkpoint: str) -> tuple[str, dict, str]:
    """`(path, the language model's config, model_type)` of a checkpoint; a gemma3
    (image-text) checkpoint's `text_config`."""
    path, cfg = read_hf_config(checkpoint)
    model_type = cfg.get("model_type")
    if model_type != "gemma3":
        return path, cfg, model_type
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{path}: this gemma3 checkpoint has no text_config (a vision "
                              "tower only?); tfllm imports Gemma's language model")
    return path, {**text, "model_type": "gemma3_text"}, model_type


# Gemma3TextConfig's defaults for fields an image-text checkpoint's text_config may omit.
_GEMMA3_DEFAULTS = dict(num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        vocab_size=262208, query_pre_attn_scalar=256, rope_theta=1e6,
                        rope_local_base_freq=10000.0, sliding_window=4096,
                        max_position_embeddings=131072, rms_norm_eps=1e-6)


def read_config(checkpoint: str, max_len: int | None = None) -> ModelConfig:
    """The ModelConfig of a Gemma-family checkpoint, every value type-checked and bounded
    before anything is built."""
    path, data, _ = text_config(checkpoint)
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {excerpt(model_type)} is not a Gemma")
    generation = {"gemma": 1, "gemma2": 2, "gemma3_text": 3}[model_type]
    if generation == 3:
        data = {**_GEMMA3_DEFAULTS, **{k: v for k, v in data.items() if v is not None}}
    f = Fields(path, data, CheckpointError)
    f.require(("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
               "vocab_size"), "a Gemma config.json")
    heads = f.integer("num_attention_heads", high=LIMITS["num_heads"])
    d_model = f.integer("hidden_size", high=LIMITS["d_model"])
    num_layers = f.integer("num_hidden_layers", high=LIMITS["num_layers"])
    act = data.get("hidden_activation") or data.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_activation {excerpt(act)} is not supported; "
                              f"supported: {', '.join(_ACTIVATIONS)} (all run as tanh GELU)")
    context = llama.choose_max_len(f.integer("max_position_embeddings", 8192,
                                             high=LIMITS["max_len"]), max_len,
                                   "this checkpoint")
    window = f.integer("sliding_window", 0, low=0)
    model_max = f.integer("max_position_embeddings", 8192, high=LIMITS["max_len"])
    if window > model_max:
        raise CheckpointError(f"{path}: sliding_window {window:,} is larger than the model's "
                              f"context (max_position_embeddings {model_max:,})")
    layer_types = llama.stated_layer_types(f, num_layers)
    if generation == 3 and layer_types is None:
        pattern = f.integer("sliding_window_pattern", GEMMA3_PATTERN)
        layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                       for i in range(num_layers)]
    parameters = f.mapping("rope_parameters")
    rope = f.mapping("rope_scaling") if not parameters else \
        parameters.get("full_attention", parameters)
    theta = f.number("rope_theta", 10000.0, low=0)
    if parameters:  # transformers 5.x: per attention kind {rope_type, rope_theta, ...}
        theta = Fields(path, rope, CheckpointError, "rope_parameters.").number(
            "rope_theta", theta, low=0)
    local = parameters.get("sliding_attention") if parameters else None
    local_theta = Fields(path, local, CheckpointError, "rope_parameters.").number(
        "rope_theta", 10000.0, low=0) if isinstance(local, dict) else \
        f.number("rope_local_base_freq", 10000.0, low=0)
    caps = (f.number("attn_logit_softcapping", 0, low=0, low_open=False) or None,
            f.number("final_logit_softcapping", 0, low=0, low_open=False) or None)
    head_dim = f.integer("head_dim", d_model // heads or 1, high=LIMITS["head_size"])
    try:
        return ModelConfig(
            vocab_size=f.integer("vocab_size", low=2, high=LIMITS["vocab_size"]),
            num_layers=num_layers, d_model=d_model, num_heads=heads,
            ffn_dim=f.integer("intermediate_size", high=LIMITS["ffn_dim"]),
            max_len=context, dropout=0.0, causal=True, norm_first=True,
            layer_norm_epsilon=f.number("rms_norm_eps", 1e-6, low=0, high=0.5),
            tokenizer="bpe",
            num_kv_heads=f.integer("num_key_value_heads", heads, high=LIMITS["num_kv_heads"]),
            head_size=head_dim, position_embedding="rope", rope_theta=theta,
            rope_scaling=llama.rope_scaling_of(path, rope), norm="rmsnorm", ffn="gated",
            qkv_bias=f.boolean("attention_bias", False),
            proj_bias=False,
            **generation_fields(generation, num_layers, window, context,
                                f.number("query_pre_attn_scalar", head_dim, low=0)
                                if generation >= 2 else None, caps, local_theta,
                                layer_types))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


class _Renamed(Mapping):
    """A checkpoint's tensors under text-model names ("model.layers...") whatever prefix
    the file uses for its language model."""

    def __init__(self, raw, names: dict[str, str]):
        self.raw, self.names = raw, names

    def __getitem__(self, name):
        return self.raw[self.names[name]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def read_weights(checkpoint: str, cfg: ModelConfig) -> tuple[Mapping, list[str]]:
    """`(the language model's tensors by text-model name, names of skipped tensors)`,
    checked against the config; an image-text checkpoint's vision tower and projector are
    the skipped ones."""
    path, raw = read_safetensors(checkpoint)
    prefix = next((p for p in _PREFIXES if p + "embed_tokens.weight" in raw.shapes), None)
    if prefix is None:
        raise CheckpointError(f"{path} holds no language model (no embed_tokens.weight under "
                              f"{', '.join(_PREFIXES)}); a vision tower alone cannot be "
                              "imported")
    names = {"model." + k[len(prefix):]: k for k in raw.shapes if k.startswith(prefix)}
    skipped = sorted(k for k in raw.shapes if not k.startswith(prefix) and
                     not k.endswith("lm_head.weight"))
    shapes = {k: raw.shapes[v] for k, v in names.items()
              if not k.endswith(".rotary_emb.inv_freq")}
    check_tensors(path, shapes, llama.expected_shapes(cfg))
    return _Renamed(raw, names), skipped


def import_gemma(checkpoint: str, out: str, overwrite: bool = False,
                 max_len: int | None = None, dtype: str = "float32") -> str:
    """Import a gemma / gemma2 / gemma3_text / gemma3 checkpoint into the run `out`.

    Args:
        checkpoint: a directory with config.json, safetensors and tokenizer files.
        out: the run directory to write (an existing run only with `overwrite`).
        max_len: the context (KV cache) length; default min(model's, 2048).
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_gemma("downloads/gemma-3-270m", "runs/gemma3")  # doctest: +SKIP
    """
    from tfllm import runs
    from tfllm.checkpoints.common import build_deferred, write_imported_run

    llama.check_dtype(dtype)
    output = runs.new_run(out, overwrite, [checkpoint], "import-hf")
    cfg = read_config(checkpoint, max_len)
    model_type = text_config(checkpoint)[2]
    entry, files = llama.tokenizer_entry(checkpoint)
    entry.setdefault("chat_template", CHAT_TEMPLATE)
    llama.check_tokenizer_fits(entry, files, cfg)
    weights, skipped = read_weights(checkpoint, cfg)
    if skipped:
        print(f"import-hf: {model_type}: imported the language model; skipped "
              f"{len(skipped):,} tensors of the vision tower and projector", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        if entry["type"] == "sentencepiece":
            # Turn markers as Hugging Face reads them in text (see sentencepiece_vocab).
            keep = {i for i in (entry.get("bos_id"), entry.get("pad_id")) if i is not None}
            with open(files["tokenizer.model"], "rb") as f:
                proto = readable_controls(f.read(), keep)
            files = {"tokenizer.model": os.path.join(tmp, "tokenizer.model")}
            with open(files["tokenizer.model"], "wb") as f:
                f.write(proto)
        model = build_deferred(lambda: llama.build_model(cfg, dtype))
        pairs = llama.llama_weights(model, cfg, weights, llama.numpy_dtype(dtype), NORM_OFFSET)
        return write_imported_run(output, model, pairs, {
            "model": cfg.to_dict(), "preset": model_type, "objective": "clm", "data": None,
            "training": None, "dtype": dtype,
            "imported_from": {"format": f"huggingface-{model_type}",
                              "path": os.path.abspath(checkpoint)},
            "tokenizer": entry,
        }, files)


# -- the inverse: a run written back as a Hugging Face checkpoint (export/hf.py) --------------

def hf_model_type(cfg: ModelConfig) -> str | None:
    """"gemma", "gemma2" or "gemma3_text" for a Gemma-architecture run; None otherwise."""
    gemma_like = (cfg.position_embedding == "rope" and cfg.norm == "rmsnorm" and
                  cfg.ffn == "gated" and cfg.activation == "gelu" and cfg.norm_first and
                  cfg.causal and cfg.scale_embeddings and cfg.tie_embeddings and
                  not cfg.proj_bias)
    if not gemma_like:
        return None
    if cfg.qk_norm:
        return "gemma3_text"
    if cfg.post_norms:
        return "gemma2"
    if cfg.sliding_window is not None or cfg.query_pre_attn_scalar is not None:
        raise CheckpointError("a Gemma run with sliding windows or query_pre_attn_scalar "
                              "but no post-norms has no transformers counterpart")
    return "gemma"


def hf_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The run's weights under Gemma's Hugging Face names (norms as stored `w`)."""
    return llama.hf_tensors(model, cfg, NORM_OFFSET)


def hf_weights(model, cfg: ModelConfig, tensors: dict) -> list[tuple]:
    """`llama_weights` of tensors `hf_tensors` wrote (the exporter's round-trip check)."""
    return llama.llama_weights(model, cfg, tensors, np.float32, NORM_OFFSET)


def hf_config(cfg: ModelConfig, model_type: str, bos, eos, dtype: str) -> dict:
    """config.json of the written checkpoint (`eos`: one id or a list)."""
    arch = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
            "gemma3_text": "Gemma3ForCausalLM"}[model_type]
    types = cfg.attention_types
    out = {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
           "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": cfg.max_len,
           "rms_norm_eps": cfg.layer_norm_epsilon, "rope_theta": cfg.rope_theta,
           "rope_scaling": llama.hf_rope_scaling(cfg.rope_scaling),
           "attention_bias": cfg.qkv_bias, "attention_dropout": 0.0,
           "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": eos,
           "pad_token_id": 0, "torch_dtype": dtype}
    if model_type != "gemma":
        out.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                   # A window as long as the context is what full attention is.
                   sliding_window=cfg.sliding_window or cfg.max_len, layer_types=types,
                   attn_logit_softcapping=cfg.attn_logit_softcap,
                   final_logit_softcapping=cfg.final_logit_softcap)
    if model_type == "gemma3_text":
        out.update(rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta,
                   sliding_window_pattern=GEMMA3_PATTERN)
    return out
