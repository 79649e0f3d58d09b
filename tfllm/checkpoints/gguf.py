"""Import llama.cpp GGUF files (architectures llama, qwen2, qwen3, gemma, gemma2, gemma3):
the header read by `tfllm.checkpoints.gguf_file`, the tensors dequantized by the `gguf`
package.

Tensors of any type the `gguf` package dequantizes (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
Q4_K, Q5_K, Q6_K, ...) become float weights. llama.cpp's converter permutes the Q and K
rows of `llama` models into Meta's interleaved rotary order; they are permuted back to
the half-split order here (qwen2/qwen3 files are stored unpermuted). Hyper-parameters come
from the metadata (Gemma's fixed choices, which llama.cpp does not store, from
`tfllm.checkpoints.gemma`: layer pattern, local rotary base, query scaling; the file's norm
weights already hold Gemma's `1 + w`). A byte-level BPE tokenizer is rebuilt as a Hugging
Face `tokenizer.json` (vocabulary, merges, added tokens, the pre-tokenizer llama.cpp
names), a SentencePiece one as a `tokenizer.model` (`sentencepiece_vocab`), so a GGUF run
is used exactly like an imported Hugging Face run. The chat template is kept (Gemma's
files carry none: the family's is used).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from tfllm.checkpoints import gemma
from tfllm.checkpoints.common import CheckpointError, check_tensors
from tfllm.checkpoints.llama import (build_model, check_dtype, check_tokenizer_fits,
                                     choose_max_len, expected_shapes, llama_weights,
                                     numpy_dtype)
from tfllm.checkpoints.sentencepiece_vocab import build_proto
from tfllm.config import LIMITS, ConfigError, ModelConfig
from tfllm.untrusted import Fields, excerpt

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
# Gemma generation of each Gemma architecture; llama.cpp's layer count of the 27B models,
# which scale queries by hidden_size / heads instead of head_dim.
_GEMMA = {"gemma": 1, "gemma2": 2, "gemma3": 3}
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# Gemma 3's sliding layers' rotary base (llama.cpp's too: not in the file).
_GEMMA3_LOCAL_THETA = 10000.0
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
_NO_REGEX = {**_BYTE_LEVEL, "use_regex": False}
# tokenizer.ggml.pre (llama.cpp's name of the split rule) -> (normalizer, pre_tokenizer)
PRE_TOKENIZERS = {
    "default": (None, _BYTE_LEVEL), "gpt-2": (None, _BYTE_LEVEL),
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]}),
    "llama-bpe": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated",
         "invert": False}, _NO_REGEX]}),
    "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated",
         "invert": False}, _NO_REGEX]}),
}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-bpe"]
# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 2/3 name their four block norms so; "ffn_norm" is then the feed-forward's input.
_POST_NORM_NAMES = {"ffn_norm.weight": "pre_feedforward_layernorm.weight",
                    "post_attention_norm.weight": "post_attention_layernorm.weight",
                    "post_ffw_norm.weight": "post_feedforward_layernorm.weight"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def open_gguf(path: str):
    """A `GGUFFile` of `path` (its metadata and tensor table), or CheckpointError."""
    from tfllm.checkpoints.gguf_file import GGUFFile, GGUFFormatError

    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        return GGUFFile(path)
    except (GGUFFormatError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file: {e}") from e


def read_config(path: str, meta: dict, max_len: int | None) -> tuple[ModelConfig, str]:
    """(ModelConfig, architecture) of a GGUF's metadata, every value type-checked and
    bounded before anything is built."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {excerpt(arch)} is not supported; "
                              f"supported: {', '.join(ARCHITECTURES)}")
    f = Fields(path, {k[len(arch) + 1:]: v for k, v in meta.items()
                      if k.startswith(arch + ".")}, CheckpointError, arch + ".")
    heads = f.integer("attention.head_count", high=LIMITS["num_heads"])
    d_model = f.integer("embedding_length", high=LIMITS["d_model"])
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = f.integer("vocab_size", len(tokens) if isinstance(tokens, list) else 0, low=2,
                      high=LIMITS["vocab_size"])
    scaling = f.text("rope.scaling.type", "none", choices=("none", "linear"))
    rope_scaling = {"type": "linear", "factor": f.number("rope.scaling.factor", low=0)} \
        if scaling == "linear" else None
    model_max = f.integer("context_length", high=LIMITS["max_len"])
    context = choose_max_len(model_max, max_len, "this model")
    num_layers = f.integer("block_count", high=LIMITS["num_layers"])
    head_dim = f.integer("attention.key_length", d_model // heads or 1,
                         high=LIMITS["head_size"])
    family = {}
    if arch in _GEMMA:
        window = f.integer("attention.sliding_window", 0, low=0)
        if window > model_max:
            raise CheckpointError(f"{path}: {arch}.attention.sliding_window {window:,} is "
                                  f"larger than the model's context ({model_max:,})")
        big = num_layers == _GEMMA_27B_LAYERS.get(arch)
        scalar = (d_model / heads if big else head_dim) if _GEMMA[arch] >= 2 else None
        caps = (f.number("attn_logit_softcapping", 0, low=0, low_open=False) or None,
                f.number("final_logit_softcapping", 0, low=0, low_open=False) or None)
        family = gemma.generation_fields(_GEMMA[arch], num_layers, window, context,
                                         scalar, caps, _GEMMA3_LOCAL_THETA)
    try:
        return ModelConfig(
            vocab_size=vocab, num_layers=num_layers, d_model=d_model, num_heads=heads,
            ffn_dim=f.integer("feed_forward_length", high=LIMITS["ffn_dim"]),
            max_len=context, dropout=0.0, causal=True, norm_first=True,
            layer_norm_epsilon=f.number("attention.layer_norm_rms_epsilon", 1e-6, low=0,
                                        high=0.5),
            tokenizer="bpe",
            num_kv_heads=f.integer("attention.head_count_kv", heads,
                                   high=LIMITS["num_kv_heads"]),
            head_size=head_dim,
            position_embedding="rope", rope_theta=f.number("rope.freq_base", 10000.0, low=0),
            rope_scaling=rope_scaling, norm="rmsnorm", ffn="gated", qkv_bias=arch == "qwen2",
            proj_bias=False, **{"activation": "silu", "qk_norm": arch == "qwen3",
                                "tie_embeddings": False, **family}), arch
    except ConfigError as e:  # an inconsistent shape, a model too large
        raise CheckpointError(f"{path}: {e}") from None


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs -> half split)."""
    # (heads, head_dim/2, 2, in) -> (heads, 2, head_dim/2, in)
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def read_tensors(path: str, reader, cfg: ModelConfig, arch: str) -> dict[str, np.ndarray]:
    """The GGUF tensors under Hugging Face names, dequantized to float32 when read."""
    raw = {}
    block_names = {**_BLOCK_NAMES, **(_POST_NORM_NAMES if cfg.post_norms else {})}
    for t in reader.tensors:
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        elif t.name.startswith("blk.") and t.name.split(".", 2)[2] in block_names:
            _, layer, rest = t.name.split(".", 2)
            name = f"model.layers.{layer}.{block_names[rest]}"
        elif t.name == "rope_freqs.weight":
            raise CheckpointError(f"{path} scales RoPE with a rope_freqs tensor (Llama 3.1+ "
                                  "GGUF), which tfllm does not read; import the Hugging Face "
                                  "checkpoint (its config states the llama3 scaling) instead")
        else:
            name = t.name  # reported as unexpected by check_tensors
        raw[name] = t
    if "lm_head.weight" not in raw:  # a tied model stores no output.weight
        cfg.tie_embeddings = True
    shapes = expected_shapes(cfg)
    # GGUF lists dimensions fastest-first; Hugging Face's [out, in] is the reverse.
    check_tensors(path, {k: tuple(int(d) for d in reversed(t.shape)) for k, t in raw.items()},
                  shapes)
    return _Dequantized(path, raw, shapes, arch, cfg)


class _Dequantized:
    """Tensors by Hugging Face name, dequantized (and un-permuted) when read: the importer
    holds one float32 tensor at a time, not the whole file."""

    def __init__(self, path, raw, shapes, arch, cfg):
        self.path, self.raw, self.shapes, self.arch, self.cfg = path, raw, shapes, arch, cfg

    def __contains__(self, name):
        return name in self.raw

    def __getitem__(self, name):
        from gguf.quants import dequantize

        t = self.raw[name]
        shape = self.shapes[name]
        data = t.data
        # Row blocks of ~8 MB: the package's dequantizers hold several float copies of
        # their input, which for a whole embedding table was the import's peak.
        rows = data.shape[0] if data.ndim == 2 else 1
        step = max(1, (8 << 20) // max(1, int(np.prod(shape)) * 4 // rows))
        w = np.empty((rows, int(np.prod(shape)) // rows), np.float32)
        try:
            for i in range(0, rows, step):
                w[i:i + step] = np.reshape(dequantize(data[i:i + step] if data.ndim == 2
                                                      else data, t.tensor_type),
                                           (-1, w.shape[1]))
        except NotImplementedError as e:
            raise CheckpointError(f"{self.path}: tensor {t.name} has the type "
                                  f"{t.tensor_type.name}, which cannot be dequantized") from e
        w = w.reshape(shape)
        if self.arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            w = unpermute(w, self.cfg.num_heads)
        elif self.arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            w = unpermute(w, self.cfg.kv_heads)
        return w


def _token_id(meta: dict, key: str) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}")
    return int(value) if isinstance(value, (int, np.integer)) else None


def tokenizer_file(path: str, meta: dict, arch: str) -> tuple[str, bytes, dict]:
    """`(file name, content, run tokenizer entry)` of a GGUF's tokenizer: a Hugging Face
    tokenizer.json for byte-level BPE ("gpt2"), a SentencePiece tokenizer.model for
    SentencePiece vocabularies ("llama": Llama 2, Gemma)."""
    model = meta.get("tokenizer.ggml.model")
    if model == "gpt2":
        spec, entry = tokenizer_json(path, meta)
        return "tokenizer.json", json.dumps(spec, ensure_ascii=False).encode("utf-8"), entry
    if model != "llama":
        raise CheckpointError(f"{path}: tokenizer model {excerpt(model)} is not supported; "
                              "tfllm reads byte-level BPE ('gpt2') and SentencePiece ('llama') "
                              "GGUF tokenizers")
    tokens = meta.get("tokenizer.ggml.tokens")
    special = {"unk_id": _token_id(meta, "unknown_token_id"),
               "bos_id": _token_id(meta, "bos_token_id"),
               "eos_id": _token_id(meta, "eos_token_id"),
               "pad_id": _token_id(meta, "padding_token_id")}
    proto = build_proto(path, tokens, meta.get("tokenizer.ggml.scores"),
                        meta.get("tokenizer.ggml.token_type"), special,
                        by_position=arch in _GEMMA,
                        dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    entry = {"type": "sentencepiece", "file": "tokenizer.model", "bos_id": special["bos_id"],
             "eos_ids": _eos_ids(path, meta, tokens), "pad_id": special["pad_id"],
             "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", True))}
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        entry["chat_template"] = template
    elif arch in _GEMMA:
        entry["chat_template"] = gemma.CHAT_TEMPLATE
    return "tokenizer.model", proto, entry


def _eos_ids(path: str, meta: dict, tokens) -> list[int]:
    """Every id that ends generation: EOS, EOT, EOM, and Gemma's `<end_of_turn>` (which
    llama.cpp also stops at)."""
    ids = [_token_id(meta, k) for k in ("eos_token_id", "eot_token_id", "eom_token_id")]
    if isinstance(tokens, list) and "<end_of_turn>" in tokens:
        ids.append(tokens.index("<end_of_turn>"))
    ids = list(dict.fromkeys(i for i in ids if i is not None))  # unique, in order
    if not ids:
        raise CheckpointError(f"{path} names no EOS token (tokenizer.ggml.eos_token_id)")
    return ids


def tokenizer_json(path: str, meta: dict) -> tuple[dict, dict]:
    """(tokenizer.json content, run tokenizer entry) from a GGUF's byte-level BPE
    tokenizer metadata."""
    pre = meta.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: pre-tokenizer {excerpt(pre)} is not supported; "
                              f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise CheckpointError(f"{path} lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) and
            isinstance(merges, list) and all(isinstance(m, str) for m in merges) and
            isinstance(types, list) and len(types) == len(tokens) and
            all(isinstance(k, int) for k in types)):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens, merges and token_type must be "
                              "lists of strings, strings and integers (one type a token)")
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": kind == 3}
             for i, (tok, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)]
    normalizer, pre_tokenizer = PRE_TOKENIZERS[pre]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": pre in (
                          "llama-bpe", "llama3"),
                      "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": merges}}

    entry = {"type": "hf-bpe", "file": "tokenizer.json",
             "bos_id": _token_id(meta, "bos_token_id"), "eos_ids": _eos_ids(path, meta, tokens),
             "pad_id": _token_id(meta, "padding_token_id"),
             "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        entry["chat_template"] = template
    return spec, entry


def import_gguf(gguf_path: str, out: str, overwrite: bool = False,
                max_len: int | None = None, dtype: str = "float32") -> str:
    """Import a GGUF file into the run directory `out`; returns `out`.

    Args:
        gguf_path: a llama / qwen2 / qwen3 `.gguf` file.
        out: the run directory to write (an existing run only with `overwrite`).
        max_len: the context (KV cache) length; default min(model's, 2048).
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2")  # doctest: +SKIP
    """
    from tfllm import runs
    from tfllm.checkpoints.common import build_deferred, write_imported_run

    check_dtype(dtype)
    output = runs.new_run(out, overwrite, [gguf_path], "import-gguf")
    reader = open_gguf(gguf_path)
    meta = reader.fields
    cfg, arch = read_config(gguf_path, meta, max_len)
    tok_name, tok_bytes, entry = tokenizer_file(gguf_path, meta, arch)
    tensors = read_tensors(gguf_path, reader, cfg, arch)
    source = {"format": f"gguf-{arch}", "path": os.path.abspath(gguf_path),
              "file_type": meta.get("general.file_type"), "name": meta.get("general.name")}
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = os.path.join(tmp, tok_name)
        with open(tok_path, "wb") as f:
            f.write(tok_bytes)
        files = {tok_name: tok_path}
        check_tokenizer_fits(entry, files, cfg)
        # The metadata (token and merge lists) is no longer needed: freed before the model
        # exists, it does not add to the import's peak.
        reader.fields.clear()
        del meta, tok_bytes
        model = build_deferred(lambda: build_model(cfg, dtype))
        weights = llama_weights(model, cfg, tensors, numpy_dtype(dtype))
        return write_imported_run(output, model, weights, {
            "model": cfg.to_dict(), "preset": arch, "objective": "clm", "data": None,
            "training": None, "dtype": dtype, "imported_from": source, "tokenizer": entry,
        }, files)
