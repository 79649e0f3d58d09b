"""Text corpora for language-model training: train and validation text of a data spec.

Sources (see `tfllm.data.spec`): TFDS datasets (`tfllm.data.tfds_source`), local text
files (the last 10% of the text is the validation split) and the text column of a table
(`tfllm.data.tables`).
"""

from __future__ import annotations

import glob as globlib
import os
from typing import Iterator

import tensorflow as tf

from tfllm.data.spec import VAL_FRACTION, parse_data_spec
from tfllm.data.tables import read_table
from tfllm.data.tfds_source import TfdsSource
from tfllm.errors import DataError


class Corpus:
    """Train and validation text of a data spec, as tf.data datasets of scalar strings.

    Args:
        spec: a `DataSpec` or spec string.
        text_feature: TFDS feature or table column holding the text (default: the only
            text feature; for tables the first of text, sentence, content, review).
        tfds_manual_dir: directory with manually downloaded files (default: $TFDS_MANUAL_DIR).
        tfds_data_dir: where TFDS prepares datasets (default: $TFDS_DATA_DIR or TFDS's own).

    Example:
        >>> corpus = Corpus("text:notes/*.txt")
        >>> next(iter(corpus.train_texts()))  # doctest: +SKIP
    """

    def __init__(self, spec, text_feature=None, tfds_manual_dir=None, tfds_data_dir=None):
        self.spec = parse_data_spec(spec) if isinstance(spec, str) else spec
        self.text_feature = text_feature
        self.tfds_manual_dir = tfds_manual_dir or os.environ.get("TFDS_MANUAL_DIR") or None
        self.tfds_data_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or None
        if self.spec.kind == "tfds":
            self._init_tfds()
        elif self.spec.kind == "text":
            self._init_text()
        else:
            self._init_table()

    # -- tables (their text only) ---------------------------------------------------------
    def _init_table(self):
        table = read_table(str(self.spec), self.text_feature, require_labels=False)
        self.text_feature = table.text_column
        self._train = [t for t, _ in table.train]
        self._val = [t for t, _ in table.val]
        if not self._val:
            raise DataError(f"{self.spec} has too few rows to hold some out for validation")

    # -- local files -------------------------------------------------------------------
    def _init_text(self):
        paths = sorted(p for p in globlib.glob(os.path.expanduser(self.spec.name),
                                               recursive=True) if os.path.isfile(p))
        if not paths:
            raise DataError(f"no files match {self.spec.name!r} (data spec {self.spec})")
        chunks = []
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    chunks.append(f.read())
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
        text = "".join(chunks)
        if not text.strip():
            raise DataError(f"the corpus {self.spec} is empty ({len(paths)} file(s))")
        cut = int(len(text) * (1 - VAL_FRACTION))
        self._train, self._val = text[:cut], text[cut:]
        self.files = paths

    # -- TFDS ----------------------------------------------------------------------------
    def _init_tfds(self):
        self._source = TfdsSource(self.spec.name, self.spec.split, self.text_feature,
                                  self.tfds_manual_dir, self.tfds_data_dir)
        self.text_feature = self._source.text_feature
        self.train_split, self.val_split = self._source.train_split, self._source.val_split

    # -- public --------------------------------------------------------------------------
    def train_texts(self) -> tf.data.Dataset:
        if self.spec.kind == "tfds":
            return self._source.texts(self.train_split)
        if self.spec.kind == "text":
            return tf.data.Dataset.from_tensors(self._train)
        return tf.data.Dataset.from_tensor_slices(tf.constant(self._train, tf.string))

    def val_texts(self) -> tf.data.Dataset:
        if self.spec.kind == "tfds":
            return self._source.texts(self.val_split)
        if self.spec.kind == "text":
            return tf.data.Dataset.from_tensors(self._val)
        return tf.data.Dataset.from_tensor_slices(tf.constant(self._val, tf.string))

    def sample_texts(self, max_chars: int = 50_000_000) -> Iterator[str]:
        """Training texts as Python strings, up to `max_chars` (for tokenizer training)."""
        seen = 0
        for t in self.train_texts().as_numpy_iterator():
            text = t.decode("utf-8", errors="replace")
            yield text[: max_chars - seen]
            seen += len(text)
            if seen >= max_chars:
                return

    def describe(self) -> dict:
        out = {"spec": str(self.spec)}
        if self.spec.kind == "tfds":
            out.update(text_feature=self.text_feature, train_split=self.train_split,
                       val_split=self.val_split)
        elif self.spec.kind != "text":
            out.update(text_feature=self.text_feature)
        return out
