"""Labeled text (sentiment, topics, intents) from local tables or TFDS, for classification.

A labeled data spec names the source:
    tsv:PATH | csv:PATH   a table with a header row
    jsonl:PATH            one JSON object per line
    tfds:NAME[:SPLIT]     a TFDS dataset with a text feature and a label feature

`--text-column` / `--label-column` pick the fields (defaults: the first of text, sentence,
content, review; label). Rows with empty text are skipped and counted. Files have no
validation split of their own: a seeded 10% of the rows is held out.
"""

from __future__ import annotations

import csv
import json
import os
import random

from tfllm.errors import DataError

FILE_KINDS = ("tsv", "csv", "jsonl")
TEXT_COLUMNS = ("text", "sentence", "content", "review")
LABEL_COLUMN = "label"
VAL_FRACTION = 0.1


def is_labeled_spec(spec: str) -> bool:
    return spec.partition(":")[0] in FILE_KINDS


def _read_rows(kind: str, path: str) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts of strings)."""
    if not os.path.isfile(path):
        raise DataError(f"labeled data file {path} does not exist")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if kind == "jsonl":
                rows = []
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {n} is not JSON: {e.msg}") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path} line {n} is not a JSON object")
                    rows.append(row)
                columns = list(dict.fromkeys(k for r in rows for k in r))
            else:
                # TSV exports (GLUE) do not quote; quotes are ordinary characters there.
                reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",",
                                        quoting=csv.QUOTE_NONE if kind == "tsv"
                                        else csv.QUOTE_MINIMAL)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not rows:
        raise DataError(f"{path} has no rows")
    return columns, rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def sort_labels(labels) -> list[str]:
    """Class names in a stable order: numerically when all are integers, else alphabetically."""
    labels = set(labels)
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


class LabeledData:
    """Rows of (text, label name) from a labeled data spec, split into train and validation.

    Args:
        spec: `tsv:PATH`, `csv:PATH`, `jsonl:PATH` or `tfds:NAME[:SPLIT]`.
        text_column: field holding the text (default: the first of TEXT_COLUMNS present).
        label_column: field holding the label (default "label"); with `require_labels=False`
            a missing label column is fine (pretraining reads only the text).
        require_labels: raise DataError for a missing label column or empty labels.
        seed: seed of the held-out split of files.
        tfds_manual_dir, tfds_data_dir: as for `tfllm.data.Corpus`.

    Attributes:
        train, val: lists of (text, label) pairs (label "" when not required).
        skipped_empty: rows skipped because their text was empty.

    Example:
        >>> data = LabeledData("tsv:../shared/data/sst2/train.tsv")  # doctest: +SKIP
        >>> data.class_names()  # doctest: +SKIP
        ['0', '1']
    """

    def __init__(self, spec, text_column=None, label_column=None, require_labels=True,
                 seed=0, tfds_manual_dir=None, tfds_data_dir=None):
        self.spec = spec
        self.kind, _, rest = spec.partition(":")
        self.require_labels = require_labels
        self.skipped_empty = 0
        self.class_vocabulary = None  # TFDS ClassLabel names, when the dataset has them
        if not rest or self.kind not in FILE_KINDS + ("tfds",):
            raise DataError(f"bad labeled data spec {spec!r}: use tsv:PATH, csv:PATH, "
                            "jsonl:PATH or tfds:NAME[:SPLIT]")
        if self.kind == "tfds":
            self._init_tfds(rest, text_column, label_column, tfds_manual_dir, tfds_data_dir)
            return
        self.path = os.path.expanduser(rest)
        columns, rows = _read_rows(self.kind, self.path)
        self.text_column, self.label_column = self._columns(columns, text_column, label_column)
        pairs = self._pairs(rows)
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(len(pairs) * VAL_FRACTION)) if len(pairs) > 1 else 0
        self.val = [pairs[i] for i in order[:n_val]]
        self.train = [pairs[i] for i in order[n_val:]]
        self.all = pairs

    def _columns(self, columns, text_column, label_column):
        where = self.path if self.kind != "tfds" else f"TFDS dataset {self.name!r}"
        if text_column is None:
            text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
            if text_column is None:
                raise DataError(f"{where} has no text column ({', '.join(TEXT_COLUMNS)}); "
                                f"columns: {columns}; pick one with --text-column")
        elif text_column not in columns:
            raise DataError(f"{where} has no column {text_column!r} (--text-column); "
                            f"columns: {columns}")
        label_column = label_column or LABEL_COLUMN
        if label_column not in columns:
            if self.require_labels:
                raise DataError(f"{where} has no label column {label_column!r}; columns: "
                                f"{columns}; pick one with --label-column")
            label_column = None
        return text_column, label_column

    def _pairs(self, rows):
        pairs, empty_labels = [], []
        for n, row in enumerate(rows, 1):
            text = _cell(row.get(self.text_column)).strip()
            label = _cell(row.get(self.label_column)).strip() if self.label_column else ""
            if not text:
                self.skipped_empty += 1
                continue
            if self.require_labels and not label:
                empty_labels.append(n)
                continue
            pairs.append((text, label))
        if empty_labels:
            shown = ", ".join(map(str, empty_labels[:10]))
            raise DataError(f"{len(empty_labels)} row(s) of {self.spec} have an empty "
                            f"{self.label_column!r} label (rows {shown}"
                            f"{', ...' if len(empty_labels) > 10 else ''}); fill or remove them")
        if not pairs:
            raise DataError(f"{self.spec} has no rows with text in column {self.text_column!r}")
        return pairs

    # -- TFDS ------------------------------------------------------------------------------
    def _init_tfds(self, rest, text_column, label_column, manual_dir, data_dir):
        import tensorflow_datasets as tfds

        from tfllm.data import Corpus, DataSpec

        self.name, _, split = rest.partition(":")
        # Corpus prepares the dataset offline and resolves the text feature and splits.
        corpus = Corpus(DataSpec("tfds", self.name, split or None), text_column,
                        manual_dir, data_dir)
        features = corpus._builder.info.features
        self.text_column, self.label_column = self._columns(
            list(features), corpus.text_feature, label_column)
        feature = features[self.label_column] if self.label_column else None
        if isinstance(feature, tfds.features.ClassLabel):
            self.class_vocabulary = list(feature.names)

        def read(split_name):
            rows = []
            for ex in tfds.as_numpy(corpus._builder.as_dataset(split=split_name)):
                label = ex[self.label_column] if self.label_column else ""
                # GLUE test splits carry label -1: no label.
                if self.class_vocabulary is not None:
                    label = self.class_vocabulary[label] if label >= 0 else ""
                rows.append({self.text_column: ex[self.text_column], self.label_column: label})
            return self._pairs(rows)

        self.train = read(corpus.train_split)
        self.val = read(corpus.val_split)
        self.all = self.train

    # -- public ----------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """The classes of the training rows; DataError when there are fewer than two."""
        if self.class_vocabulary is not None:
            names = list(self.class_vocabulary)
        else:
            names = sort_labels(label for _, label in self.train)
        seen = {label for _, label in self.train}
        if len(seen) < 2:
            raise DataError(f"{self.spec} has a single class ({sorted(seen)}) in column "
                            f"{self.label_column!r}; a classifier needs at least two")
        return names

    def describe(self) -> dict:
        return {"spec": self.spec, "text_column": self.text_column,
                "label_column": self.label_column, "train_rows": len(self.train),
                "val_rows": len(self.val), "skipped_empty": self.skipped_empty}
