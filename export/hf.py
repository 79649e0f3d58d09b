"""Write a run back as a Hugging Face checkpoint that `transformers` loads.

    python -m export.hf --run runs/NAME --out DIR [--dtype float32|bfloat16]

DIR gets `config.json`, `generation_config.json`, `model.safetensors` and the tokenizer
files (`tokenizer.json` for byte-level BPE runs, `tokenizer.model` for SentencePiece,
`vocab.json` + `merges.txt` for GPT-2's BPE) with a `tokenizer_config.json` that carries
the special tokens, whether BOS is added, and the run's chat template. Llama-style runs
(rotary positions, RMSNorm, SwiGLU: every imported Llama / Mistral / Qwen2 / Qwen3 /
SmolLM2 and its fine-tunes, LoRA runs merged) become `LlamaForCausalLM` (Qwen2's Q/K/V
biases: `Qwen2ForCausalLM`; QK-norm: `Qwen3ForCausalLM`); GPT-2-style runs (learned
positions, LayerNorm, GELU) become `GPT2LMHeadModel`. From there the rest of the ecosystem
takes the model: vLLM, llama.cpp's `convert_hf_to_gguf.py`, litert-torch.

Before it reports success the exporter loads the written tensors back through tfllm's
importers' name mappings and checks that the logits equal the run's (max abs difference
<= 1e-4 in float32); tests/export/test_hf_export.py compares with `transformers` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from .options import prog

DTYPES = ("float32", "bfloat16")


def build_parser():
    parser = argparse.ArgumentParser(prog=prog("hf"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow)")
    parser.add_argument("--run", required=True, help="run directory (LoRA runs are merged)")
    parser.add_argument("--out", required=True, help="output directory (must not exist, or "
                        "be empty, unless --overwrite)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="dtype of the stored weights (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

import numpy as np  # noqa: E402

from tfllm import runs, tasks  # noqa: E402
from tfllm.config import ModelConfig  # noqa: E402
from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.publish import Output  # noqa: E402


class HFExportError(TfllmError):
    """The run cannot be written as a Hugging Face checkpoint, or the copy differs."""


def architecture(cfg: ModelConfig) -> str:
    """The Hugging Face model_type a run's config maps to: "llama", "qwen2", "qwen3" or
    "gpt2"; an error naming what has no counterpart."""
    llama_like = (cfg.position_embedding == "rope" and cfg.norm == "rmsnorm"
                  and cfg.ffn == "gated" and cfg.activation == "silu" and cfg.norm_first)
    if llama_like and cfg.causal:
        if cfg.qk_norm:
            if cfg.qkv_bias or cfg.proj_bias:
                raise HFExportError("QK-norm with projection biases has no transformers "
                                    "counterpart")
            return "qwen3"
        if cfg.qkv_bias and not cfg.proj_bias:
            return "qwen2"
        return "llama"
    gpt2_like = (cfg.position_embedding == "learned" and cfg.norm == "layernorm"
                 and cfg.ffn == "plain" and cfg.activation == "gelu" and cfg.norm_first
                 and cfg.qkv_bias and cfg.proj_bias and cfg.tie_embeddings and cfg.causal
                 and cfg.kv_heads == cfg.num_heads and cfg.head_dim * cfg.num_heads
                 == cfg.d_model and not cfg.rope_scaling)
    if gpt2_like:
        return "gpt2"
    raise HFExportError(
        "this run's architecture has no transformers counterpart that export.hf writes: "
        f"position_embedding={cfg.position_embedding}, norm={cfg.norm}, ffn={cfg.ffn}, "
        f"activation={cfg.activation}, norm_first={cfg.norm_first}, causal={cfg.causal}; "
        "supported: Llama-style (rope, rmsnorm, gated silu) and GPT-2-style (learned "
        "positions, layernorm, plain gelu, biases, tied embeddings)")


def _np(variable):
    return np.asarray(variable.numpy(), np.float32)


def llama_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The run's weights under Hugging Face Llama names ([out, in] projections); the
    inverse of `tfllm.checkpoints.llama.llama_weights`."""
    bb = model.backbone
    q, kv = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    t = {"model.embed_tokens.weight": _np(bb.embedding.token_embeddings),
         "model.norm.weight": _np(bb.norm.scale)}
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
            t[a + "q_norm.weight"] = _np(att.q_norm.scale)
            t[a + "k_norm.weight"] = _np(att.k_norm.scale)
        t[p + "input_layernorm.weight"] = _np(block.norm1.scale)
        t[p + "post_attention_layernorm.weight"] = _np(block.norm2.scale)
        for name in ("gate", "up", "down"):
            layer = getattr(block.ffn, name)
            t[p + f"mlp.{name}_proj.weight"] = np.ascontiguousarray(_np(layer.kernel).T)
            if cfg.proj_bias:
                t[p + f"mlp.{name}_proj.bias"] = _np(layer.bias)
        if cfg.proj_bias:
            t[a + "o_proj.bias"] = _np(att.out.bias)
    return t


def gpt2_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The run's weights under Hugging Face GPT-2 names (Conv1D kernels are [in, out], as
    Keras stores them); the inverse of `tfllm.checkpoints.gpt2`."""
    bb = model.backbone
    t = {"transformer.wte.weight": _np(bb.embedding.token_embeddings),
         "transformer.wpe.weight": _np(bb.embedding.position_embeddings),
         "transformer.ln_f.weight": _np(bb.norm.gamma),
         "transformer.ln_f.bias": _np(bb.norm.beta)}
    for i, block in enumerate(bb.blocks):
        p, att = f"transformer.h.{i}.", block.attention
        t.update({p + "ln_1.weight": _np(block.norm1.gamma), p + "ln_1.bias": _np(block.norm1.beta),
                  p + "ln_2.weight": _np(block.norm2.gamma), p + "ln_2.bias": _np(block.norm2.beta),
                  p + "attn.c_attn.weight": _np(att.qkv.kernel),
                  p + "attn.c_attn.bias": _np(att.qkv.bias),
                  p + "attn.c_proj.weight": _np(att.out.kernel),
                  p + "attn.c_proj.bias": _np(att.out.bias),
                  p + "mlp.c_fc.weight": _np(block.ffn.inner.kernel),
                  p + "mlp.c_fc.bias": _np(block.ffn.inner.bias),
                  p + "mlp.c_proj.weight": _np(block.ffn.outer.kernel),
                  p + "mlp.c_proj.bias": _np(block.ffn.outer.bias)})
    return t


def hf_config(cfg: ModelConfig, model_type: str, tokenizer: dict, dtype: str) -> dict:
    """config.json of the checkpoint."""
    bos, eos = tokenizer.get("bos_id"), tokenizer.get("eos_ids") or []
    eos = eos[0] if len(eos) == 1 else eos
    if model_type == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len,
                "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
                "n_inner": cfg.ffn_dim, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.layer_norm_epsilon, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
                "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": dtype}
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}[model_type]
    out = {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
           "hidden_act": "silu", "max_position_embeddings": cfg.max_len,
           "rms_norm_eps": cfg.layer_norm_epsilon, "rope_theta": cfg.rope_theta,
           "rope_scaling": _rope_scaling(cfg.rope_scaling),
           "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
           "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": dtype}
    if model_type == "llama":
        out.update(attention_bias=cfg.proj_bias, mlp_bias=cfg.proj_bias)
    if model_type in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None)
    if model_type == "qwen3":
        out["attention_bias"] = False
    return out


def _rope_scaling(scaling):
    if not scaling:
        return None
    return {"rope_type": scaling["type"], **{k: v for k, v in scaling.items() if k != "type"}}


def _id_to_token(kind: str, path: str) -> dict:
    """id -> token string of a tokenizer file (tokenizer.json, a SentencePiece model, or
    GPT-2's vocab.json)."""
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        return {i: sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    vocab = spec["model"]["vocab"] if kind == "hf-bpe" else spec
    out = {i: t for t, i in vocab.items()}
    out.update({t["id"]: t["content"] for t in spec.get("added_tokens", [])}
               if kind == "hf-bpe" else {})
    return out


def _adds_dummy_prefix(path: str) -> bool:
    """Whether a SentencePiece model puts "▁" before the first word (tfllm's own do not:
    they round-trip text byte for byte); LlamaTokenizer must be told the same."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _add_bos_processor(path: str, bos: str, bos_id: int) -> None:
    """Make tokenizer.json prepend BOS where tfllm's run does: fast tokenizers add special
    tokens only by their post-processor (add_bos_token alone changes nothing)."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    post = spec.get("post_processor")
    if post and bos in json.dumps(post):
        return  # Llama 3's own tokenizer.json already adds it
    template = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    spec["post_processor"] = (template if not post else
                              {"type": "Sequence", "processors": [post, template]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)


def tokenizer_files(run_dir: str, out: str, tokenizer) -> dict:
    """Copy the run's tokenizer files into `out`; returns tokenizer_config.json's fields."""
    spec = runs.read_run_config(run_dir).get("tokenizer", runs.TOKENIZER)
    spec = {"type": "sentencepiece", "file": spec} if isinstance(spec, str) else spec
    kind = spec.get("type")
    copies = {"hf-bpe": {"tokenizer.json": spec.get("file")},
              "sentencepiece": {"tokenizer.model": spec.get("file")},
              "gpt2-bpe": {"vocab.json": spec.get("vocabulary"),
                           "merges.txt": spec.get("merges")}}.get(kind)
    if copies is None:
        raise HFExportError(f"this run's tokenizer ({kind!r}) has no Hugging Face form")
    for name, source in copies.items():
        shutil.copy(os.path.join(run_dir, source), os.path.join(out, name))
    names = _id_to_token(kind, os.path.join(out, next(iter(copies))))
    bos = getattr(tokenizer, "bos_id", None)
    if kind == "hf-bpe" and getattr(tokenizer, "add_bos", False) and bos is not None:
        _add_bos_processor(os.path.join(out, "tokenizer.json"), names[bos], bos)

    def token(i):
        return names.get(i) if isinstance(i, int) and i >= 0 else None

    eos_ids = list(getattr(tokenizer, "eos_ids", [tokenizer.eos_id]))
    fields = {"tokenizer_class": {"hf-bpe": "PreTrainedTokenizerFast",
                                  "sentencepiece": "LlamaTokenizer",
                                  "gpt2-bpe": "GPT2Tokenizer"}[kind],
              "bos_token": token(getattr(tokenizer, "bos_id", None)),
              "eos_token": token(eos_ids[0]) if eos_ids else None,
              "pad_token": token(getattr(tokenizer, "pad_id", None)),
              "add_bos_token": bool(getattr(tokenizer, "add_bos", False)),
              "add_eos_token": False, "clean_up_tokenization_spaces": False}
    if kind == "sentencepiece":
        fields.update(legacy=False, unk_token=token(getattr(tokenizer, "unk_id", 0)),
                      add_prefix_space=_adds_dummy_prefix(os.path.join(out, "tokenizer.model")))
    return fields


def export_hf(run_dir: str, out: str, dtype: str = "float32", overwrite: bool = False,
              check_ids=(1, 5, 9, 2, 7, 3)) -> dict:
    """Write `run_dir` as a Hugging Face checkpoint at `out`; returns a report.

    Example:
        >>> export_hf("runs/smollm2-fr", "hf/smollm2-fr")  # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise HFExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = runs.read_run_config(run_dir)
    output = Output(out, "hf-checkpoint", overwrite, runs.inputs_of(run_dir),
                    command="export hf")
    output.check()
    task = tasks.of_config(config)
    if not task.causal:
        raise HFExportError(f"export.hf writes causal LMs; this run is {task.summary} "
                            f"({task.name})")
    model = runs.load(run_dir)
    cfg = ModelConfig.from_dict(model_config_of(model, config))
    model_type = architecture(cfg)
    tensors = (gpt2_tensors if model_type == "gpt2" else llama_tensors)(model, cfg)
    with output.staging() as staging:
        tok_fields = tokenizer_files(run_dir, staging, model.tokenizer)
        chat = task.chat_config(config, model.tokenizer)
        if chat:
            tok_fields["chat_template"] = chat["template"]
        special = config.get("tokenizer") if isinstance(config.get("tokenizer"), dict) else {}
        tok = {"bos_id": getattr(model.tokenizer, "bos_id", None),
               "eos_ids": list(getattr(model.tokenizer, "eos_ids",
                                       [model.tokenizer.eos_id])), **special}
        hf = hf_config(cfg, model_type, tok, dtype)
        _write_json(staging, "config.json", hf)
        generation = {"bos_token_id": tok.get("bos_id"), "eos_token_id": hf["eos_token_id"]}
        if getattr(model.tokenizer, "pad_id", None) is not None:
            generation["pad_token_id"] = model.tokenizer.pad_id
        _write_json(staging, "generation_config.json", generation)
        _write_json(staging, "tokenizer_config.json", tok_fields)
        if dtype == "bfloat16":
            import ml_dtypes

            tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
        save_file(tensors, os.path.join(staging, "model.safetensors"),
                  metadata={"format": "pt"})  # transformers reads "pt" checkpoints
        diff = _check_roundtrip(staging, model, cfg, model_type, check_ids, dtype)
    return {"path": out, "model_type": model_type, "tensors": len(tensors),
            "bytes": os.path.getsize(os.path.join(out, "model.safetensors")),
            "max_logit_diff": diff}


def model_config_of(model, config: dict) -> dict:
    """The run's model config with the loaded model's context (`runs.load` may change it)."""
    return {**config["model"], "max_len": model.backbone.max_len}


def _write_json(folder, name, value):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in value.items() if v is not None}, f, indent=2,
                  ensure_ascii=False)


def _check_roundtrip(folder, model, cfg, model_type, ids, dtype):
    """Load the written tensors into a fresh model with tfllm's importers' name mappings
    (`llama_weights`, `gpt2_weights`); its logits must equal the run's."""
    from safetensors.numpy import load_file

    from tfllm.checkpoints.gpt2 import gpt2_weights
    from tfllm.checkpoints.llama import build_model, llama_weights

    ids = np.array([[i % cfg.vocab_size for i in ids]], np.int32)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    back = build_model(cfg)
    back(ids)  # builds its variables
    if model_type == "gpt2":
        plain = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        pairs = gpt2_weights(back, plain, np.float32)
    else:
        pairs = llama_weights(back, cfg, tensors, np.float32)
    for variable, make in pairs:
        variable.assign(make())
    diff = float(np.abs(back(ids).numpy() - model(ids).numpy()).max())
    bound = 1e-4 if dtype == "float32" else 0.5
    if not np.isfinite(diff) or diff > bound:
        raise HFExportError(f"the written {model_type} checkpoint's logits differ from the "
                            f"run's by {diff:.3g} (more than {bound})")
    return diff


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main("export.hf", _main, args)


def _main(args):
    report = export_hf(args.run, args.out, args.dtype, args.overwrite)
    print(f"Hugging Face {report['model_type']} checkpoint written to {report['path']} "
          f"({report['tensors']} tensors, {report['bytes'] / 1e6:.1f} MB)")
    print(f"imported back by tfllm: logits within {report['max_logit_diff']:.2e} of the run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
