"""Importers of published checkpoints, one module per source family, keyed by `model_type`.

    gpt2                         Hugging Face GPT-2 (safetensors + vocab.json/merges.txt)
    llama, mistral, qwen2, qwen3 Llama-family decoders (safetensors + tokenizer.json or
                                 tokenizer.model)
    gemma, gemma2, gemma3_text,  Gemma decoders (gemma3: the language model of the
    gemma3                       image-text checkpoint)
    bert                         BERT encoders (safetensors + tokenizer.json or vocab.txt)
    gguf                         llama.cpp GGUF files (llama, qwen2, qwen3, gemma, gemma2,
                                 gemma3; byte-level BPE or SentencePiece vocabularies)

`import_hf` reads a checkpoint's `config.json` and hands it to the importer registered for
its `model_type`; `common` holds the reading and mismatch reporting they share. The
families a run can be written back as (`tfllm export hf`) also hold the inverse map:
`hf_model_type(cfg)`, `hf_tensors(model, cfg)`, `hf_config(...)` and `hf_weights(...)`
(the round-trip check); `hf_family` picks the one a run's architecture matches.
"""

from __future__ import annotations

from tfllm import runs
from tfllm.checkpoints import gemma, gpt2, llama
from tfllm.checkpoints.common import CheckpointError, read_hf_config
from tfllm.checkpoints.bert import import_bert
from tfllm.checkpoints.gemma import import_gemma
from tfllm.checkpoints.gpt2 import import_gpt2
from tfllm.checkpoints.llama import DTYPES, import_llama
from tfllm.untrusted import excerpt

# model_type (config.json) -> importer(checkpoint, out, overwrite, max_len, dtype) -> out
IMPORTERS = {"gpt2": import_gpt2, "llama": import_llama, "mistral": import_llama,
             "qwen2": import_llama, "qwen3": import_llama, "bert": import_bert,
             **{t: import_gemma for t in gemma.MODEL_TYPES}}
# model_type -> the family's name in messages
FAMILY_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2",
                "qwen3": "Qwen3", "bert": "BERT", "gemma": "Gemma", "gemma2": "Gemma 2",
                "gemma3_text": "Gemma 3", "gemma3": "Gemma 3"}


def import_hf(checkpoint: str, out: str, overwrite: bool = False, max_len: int | None = None,
              dtype: str = "float32") -> str:
    """Import a Hugging Face checkpoint directory into the run directory `out`.

    Args:
        checkpoint: a directory with `config.json`, weights and tokenizer files.
        out: the run directory to write (an existing run only with `overwrite`).
        overwrite: replace an existing run in `out`, once the new one is complete.
        max_len: the context (KV cache) length of a decoder, the longest input of an
            encoder; default min(the model's, 2048).
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_hf("downloads/gpt2", "runs/gpt2")  # doctest: +SKIP
    """
    runs.new_run(out, overwrite, [checkpoint])  # before any reading: a bad --out fails at once
    return IMPORTERS[model_type_of(checkpoint)](checkpoint, out, overwrite, max_len, dtype)


# Families with an inverse map, tried in order by `hf_family`.
HF_EXPORTERS = (gemma, llama, gpt2)


def hf_family(cfg):
    """`(family module, model_type)` a run of ModelConfig `cfg` is written back as; a
    CheckpointError naming what has no counterpart."""
    for family in HF_EXPORTERS:
        model_type = family.hf_model_type(cfg)
        if model_type:
            return family, model_type
    raise CheckpointError(
        "this run's architecture has no transformers counterpart that export.hf writes: "
        f"position_embedding={cfg.position_embedding}, norm={cfg.norm}, ffn={cfg.ffn}, "
        f"activation={cfg.activation}, norm_first={cfg.norm_first}, causal={cfg.causal}; "
        "supported: Llama-style (rope, rmsnorm, gated silu), Gemma-style (rope, rmsnorm, "
        "gated gelu, scaled tied embeddings) and GPT-2-style (learned positions, layernorm, "
        "plain gelu, biases, tied embeddings)")


def model_type_of(checkpoint: str) -> str:
    """The checkpoint's `model_type`, checked against the importers there are."""
    path, cfg = read_hf_config(checkpoint)
    # GPT-2 configs written before model_type existed have none.
    model_type = cfg.get("model_type", "gpt2")
    if not isinstance(model_type, str) or model_type not in IMPORTERS:
        raise CheckpointError(f"{path}: model_type {excerpt(model_type)} is not supported; "
                              f"supported: {', '.join(sorted(IMPORTERS))}")
    return model_type


__all__ = ["CheckpointError", "DTYPES", "IMPORTERS", "FAMILY_NAMES", "HF_EXPORTERS",
           "hf_family", "import_hf",
           "import_bert", "import_gemma", "import_gpt2", "import_llama", "model_type_of"]
