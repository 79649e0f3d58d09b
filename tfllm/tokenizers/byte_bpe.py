"""Byte-level BPE (GPT-2's) from `vocab.json` + `merges.txt`, applied in-graph by keras-hub."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from tfllm.errors import TokenizerError


class BytePairTokenizer:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, in-graph via keras-hub.

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
        import keras_hub

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
        self._vocab_size = max(vocabulary.values()) + 1
        self.eos_id = self.bos_id = self.pad_id = int(vocabulary[end_token])
        self.unk_id = None
        self._layer = keras_hub.tokenizers.BytePairTokenizer(
            vocabulary=vocabulary, merges=merges, unsplittable_tokens=[end_token])
        self._layer.build(None)  # it has no weights; exporters refuse unbuilt layers

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def tf_tokenizer(self):
        """The keras-hub layer (tracked by exporters; `tokenize`/`detokenize` in-graph)."""
        return self._layer

    def tokenize(self, text):
        return self._layer.tokenize(text)

    def detokenize(self, ids):
        return self._layer.detokenize(ids)

    def encode(self, text: str) -> list[int]:
        # keras-hub hands eager results back as NumPy; graph callers get tensors.
        return [int(i) for i in np.asarray(self._layer.tokenize(tf.constant(text)))]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        text = self._layer.detokenize(tf.constant(ids, tf.int32))
        text = text.numpy() if hasattr(text, "numpy") else text
        if isinstance(text, np.ndarray):
            text = text.item()
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
