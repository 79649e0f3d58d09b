"""Tokenizers, one module per kind, each applied in-graph (so exports tokenize in TF Serving).

    sentencepiece  SentencePiece models: trained by tfllm, or imported (Llama 2, Mistral)
    hf_bpe         Hugging Face tokenizer.json byte-level BPE (SmolLM2, Qwen, Llama 3)
    byte_bpe       GPT-2's byte-level BPE from vocab.json + merges.txt
    wordpiece      BERT's WordPiece (tokenizer.json or vocab.txt)

`load_tokenizer` reads the one a run's config.json names.
"""

from __future__ import annotations

import os

from tfllm.errors import TokenizerError
from tfllm.tokenizers.byte_bpe import BytePairTokenizer
from tfllm.tokenizers.hf_bpe import HFBytePairTokenizer
from tfllm.tokenizers.sentencepiece import (BOS_ID, EOS_ID, MASK_PIECE, PAD_ID, UNK_ID,
                                            SentencePieceTokenizer)
from tfllm.tokenizers.wordpiece import WordPieceTokenizer


def load_tokenizer(run_dir: str, spec):
    """The tokenizer a run's config.json names.

    Args:
        run_dir: the run directory.
        spec: config["tokenizer"]: "tokenizer.model" (trained by tfllm), or
            {"type": "gpt2-bpe", "vocabulary": "vocab.json", "merges": "merges.txt"}, or
            {"type": "hf-bpe" | "sentencepiece", "file": ..., "bos_id", "eos_ids",
            "pad_id", "add_bos"} (imported checkpoints), or {"type": "wordpiece", "file":
            "tokenizer.json" | "vocab.txt", "lowercase"} (BERT).
    """
    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "wordpiece":
            path = os.path.join(run_dir, spec["file"])
            if path.endswith(".json"):
                return WordPieceTokenizer.from_tokenizer_json(path)
            return WordPieceTokenizer.from_vocab_txt(path, lowercase=spec.get("lowercase", True))
        if kind == "gpt2-bpe":
            return BytePairTokenizer(os.path.join(run_dir, spec["vocabulary"]),
                                     os.path.join(run_dir, spec["merges"]))
        if kind in ("hf-bpe", "sentencepiece"):
            path = os.path.join(run_dir, spec["file"])
            special = {k: spec.get(k) for k in ("bos_id", "eos_ids", "pad_id")}
            if kind == "sentencepiece":
                return SentencePieceTokenizer.load(path, special, spec.get("add_bos", False))
            return HFBytePairTokenizer.from_tokenizer_json(path, add_bos=spec.get("add_bos"),
                                                           **special)
    except (KeyError, TypeError) as e:
        raise TokenizerError(f"incomplete tokenizer entry in {run_dir}/config.json: "
                             f"{spec!r}") from e
    if isinstance(spec, str):
        return SentencePieceTokenizer.load(os.path.join(run_dir, spec))
    raise TokenizerError(f"unknown tokenizer entry in {run_dir}/config.json: {spec!r}")


# A text longer than this many bytes per context token cannot fit the context (beyond the
# longest token, Unicode normalization may shrink a character to a quarter of its bytes).
_NORMALIZATION_SHRINK = 4
MIN_TEXT_BYTES = 16 << 10


def max_text_bytes(tokenizer, max_len: int) -> int:
    """The byte limit of one text given to a model of `max_len` tokens: `max_len` times the
    longest token's bytes (at least 4), times 4 for normalization, and at least 16 KiB.
    Served graphs refuse (or cut) longer strings before tokenizing them, so a huge request
    costs milliseconds; whitespace runs that normalization collapses count in full."""
    per_token = max(int(getattr(tokenizer, "max_token_bytes", 4)), 4)
    return max(max_len * per_token * _NORMALIZATION_SHRINK, MIN_TEXT_BYTES)


def tokenizer_files(spec) -> list[str]:
    """The file names (in the run directory) of a run's tokenizer entry."""
    if isinstance(spec, str):
        return [spec]
    if spec.get("type") == "gpt2-bpe":
        return [spec["vocabulary"], spec["merges"]]
    return [spec["file"]]


__all__ = ["max_text_bytes", "tokenizer_files", "SentencePieceTokenizer", "BytePairTokenizer", "HFBytePairTokenizer", "WordPieceTokenizer",
           "load_tokenizer", "PAD_ID", "UNK_ID",
           "BOS_ID", "EOS_ID", "MASK_PIECE"]
