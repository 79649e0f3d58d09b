"""Tokenizers, one module per kind, each applied in-graph (so exports tokenize in TF Serving).

    sentencepiece  SentencePiece models trained by tfllm (char, BPE, unigram)
    byte_bpe       GPT-2's byte-level BPE (imported checkpoints)

`load_tokenizer` reads the one a run's config.json names.
"""

from __future__ import annotations

import os

from tfllm.errors import TokenizerError
from tfllm.tokenizers.byte_bpe import BytePairTokenizer
from tfllm.tokenizers.sentencepiece import (BOS_ID, EOS_ID, MASK_PIECE, PAD_ID, UNK_ID,
                                            SentencePieceTokenizer)


def load_tokenizer(run_dir: str, spec):
    """The tokenizer a run's config.json names: a SentencePiece file or a GPT-2 BPE pair.

    Args:
        run_dir: the run directory.
        spec: config["tokenizer"]: "tokenizer.model", or
            {"type": "gpt2-bpe", "vocabulary": "vocab.json", "merges": "merges.txt"}.
    """
    if isinstance(spec, dict) and spec.get("type") == "gpt2-bpe":
        return BytePairTokenizer(os.path.join(run_dir, spec["vocabulary"]),
                                 os.path.join(run_dir, spec["merges"]))
    if isinstance(spec, str):
        return SentencePieceTokenizer.load(os.path.join(run_dir, spec))
    raise TokenizerError(f"unknown tokenizer entry in {run_dir}/config.json: {spec!r}")


__all__ = ["SentencePieceTokenizer", "BytePairTokenizer", "load_tokenizer", "PAD_ID", "UNK_ID",
           "BOS_ID", "EOS_ID", "MASK_PIECE"]
