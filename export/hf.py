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

from .options import error_prog, prog

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
from tfllm.checkpoints import CheckpointError, hf_family  # noqa: E402
from tfllm.config import ModelConfig  # noqa: E402
from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.publish import Output  # noqa: E402


class HFExportError(TfllmError):
    """The run cannot be written as a Hugging Face checkpoint, or the copy differs."""


def family_of(cfg: ModelConfig):
    """`(family module, model_type)` a run's config is written as (`tfllm.checkpoints.
    hf_family`); an HFExportError naming what has no counterpart."""
    try:
        return hf_family(cfg)
    except CheckpointError as e:
        raise HFExportError(str(e)) from None


def architecture(cfg: ModelConfig) -> str:
    """The Hugging Face model_type a run's config maps to: "llama", "qwen2", "qwen3" or
    "gpt2"."""
    return family_of(cfg)[1]


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
    family, model_type = family_of(cfg)
    tensors = family.hf_tensors(model, cfg)
    with output.staging() as staging:
        tok_fields = tokenizer_files(run_dir, staging, model.tokenizer)
        chat = task.chat_config(config, model.tokenizer)
        if chat:
            tok_fields["chat_template"] = chat["template"]
        special = config.get("tokenizer") if isinstance(config.get("tokenizer"), dict) else {}
        tok = {"bos_id": getattr(model.tokenizer, "bos_id", None),
               "eos_ids": list(getattr(model.tokenizer, "eos_ids",
                                       [model.tokenizer.eos_id])), **special}
        eos = tok.get("eos_ids") or []
        hf = family.hf_config(cfg, model_type, tok.get("bos_id"),
                              eos[0] if len(eos) == 1 else eos, dtype)
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
        diff = _check_roundtrip(staging, model, cfg, family, check_ids, dtype)
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


def _check_roundtrip(folder, model, cfg, family, ids, dtype):
    """Load the written tensors into a fresh model with tfllm's importers' name mappings
    (the family's `hf_weights`); its logits must equal the run's."""
    from safetensors.numpy import load_file

    from tfllm.checkpoints.llama import build_model

    ids = np.array([[i % cfg.vocab_size for i in ids]], np.int32)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    back = build_model(cfg)
    back(ids)  # builds its variables
    for variable, make in family.hf_weights(back, cfg, tensors):
        variable.assign(make())
    diff = float(np.abs(back(ids).numpy() - model(ids).numpy()).max())
    bound = 1e-4 if dtype == "float32" else 0.5
    if not np.isfinite(diff) or diff > bound:
        raise HFExportError(f"the written {family.hf_model_type(cfg)} checkpoint's logits "
                            f"differ from the run's by {diff:.3g} (more than {bound})")
    return diff


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(error_prog("hf"), _main, args)


def _main(args):
    report = export_hf(args.run, args.out, args.dtype, args.overwrite)
    print(f"Hugging Face {report['model_type']} checkpoint written to {report['path']} "
          f"({report['tensors']} tensors, {report['bytes'] / 1e6:.1f} MB)")
    print(f"imported back by tfllm: logits within {report['max_logit_diff']:.2e} of the run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
