"""GPT-2's byte-level BPE from `vocab.json` + `merges.txt` (imported GPT-2 runs)."""

from __future__ import annotations

import json

import tensorflow as tf

from tfllm.errors import TokenizerError
from tfllm.tokenizers.hf_bpe import GPT2_PATTERN, HFBytePairTokenizer


class BytePairTokenizer(HFBytePairTokenizer):
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, in-graph.

    `<|endoftext|>` is GPT-2's start, stop and padding token.

    Args:
        vocabulary_path: a GPT-2 `vocab.json` (token -> id).
        merges_path: a GPT-2 `merges.txt`.
        end_token: the special token that starts and ends documents.

    Example:
        >>> tok = BytePairTokenizer("gpt2/vocab.json", "gpt2/merges.txt")  # doctest: +SKIP
        >>> tok.decode(tok.encode("The quick brown fox"))  # doctest: +SKIP
        'The quick brown fox'
    """

    def __init__(self, vocabulary_path: str, merges_path: str, end_token="<|endoftext|>"):
        for path in (vocabulary_path, merges_path):
            if not tf.io.gfile.exists(path):
                raise TokenizerError(f"tokenizer file {path} does not exist")
        try:
            with open(vocabulary_path, encoding="utf-8") as f:
                vocabulary = json.load(f)
            with open(merges_path, encoding="utf-8") as f:
                merges = [m for m in f.read().split("\n") if m and not m.startswith("#version")]
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read the BPE vocabulary/merges: {e}") from e
        if end_token not in vocabulary:
            raise TokenizerError(f"{vocabulary_path} has no {end_token!r} token")
        self.vocabulary_path, self.merges_path = vocabulary_path, merges_path
        end = int(vocabulary[end_token])
        super().__init__(vocabulary, merges, GPT2_PATTERN, added_tokens=[end_token],
                         bos_id=end, eos_ids=[end], pad_id=end)


def gpt2_tokenizer_json(vocabulary_path: str, merges_path: str,
                        end_token="<|endoftext|>") -> dict:
    """GPT-2's `vocab.json` + `merges.txt` as one Hugging Face `tokenizer.json` (what the
    LiteRT-LM runtime's tokenizer reads)."""
    with open(vocabulary_path, encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        merges = [m for m in f.read().split("\n") if m and not m.startswith("#version")]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": vocabulary[end_token], "content": end_token,
                              "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True}],
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "vocab": vocabulary,
                      "merges": merges}}
