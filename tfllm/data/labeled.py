"""Labeled text (sentiment, topics, intents) from local tables or TFDS, for classification.

A labeled data spec names the source:
    tsv:PATH | csv:PATH   a table with a header row
    jsonl:PATH            one JSON object per line
    tfds:NAME[:SPLIT]     a TFDS dataset with a text feature and a label feature

`--text-column` / `--label-column` pick the fields (defaults: the first of text, sentence,
content, review; label); `--pair-column` names a second text for sentence-pair tasks.
Rows with empty text are skipped and counted. Files have no validation split of their
own: a seeded 10% of the rows is held out, or with `holdout="longest"` the longest rows
and no training row that occurs inside one (`tfllm.data.tables.split_rows`).
"""

from __future__ import annotations

import os

from tfllm.data.spec import FILE_KINDS
from tfllm.data.tables import pick_columns, read_table, text_label_pairs
from tfllm.data.tfds_source import TfdsSource
from tfllm.errors import DataError


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
        pair_column: field holding the second text of sentence pairs; texts are then
            `(text, pair)` tuples.
        holdout: "random" or "longest" (files only: TFDS datasets have their own split).

    Attributes:
        train, val: lists of (text, label) pairs (label "" when not required).
        skipped_empty: rows skipped because their text (or pair) was empty.
        dropped_contained: training rows dropped by holdout "longest".

    Example:
        >>> data = LabeledData("tsv:data/sst2/train.tsv")  # doctest: +SKIP
        >>> data.class_names()  # doctest: +SKIP
        ['0', '1']
    """

    def __init__(self, spec, text_column=None, label_column=None, require_labels=True,
                 seed=0, tfds_manual_dir=None, tfds_data_dir=None, pair_column=None,
                 holdout="random"):
        self.spec = spec
        self.kind, _, rest = spec.partition(":")
        self.require_labels = require_labels
        self.pair_column = pair_column
        self.holdout = holdout
        self.skipped_empty = 0
        self.dropped_contained = 0
        self.class_vocabulary = None  # TFDS ClassLabel names, when the dataset has them
        if not rest or self.kind not in FILE_KINDS + ("tfds",):
            raise DataError(f"bad labeled data spec {spec!r}: use tsv:PATH, csv:PATH, "
                            "jsonl:PATH or tfds:NAME[:SPLIT]")
        if self.kind == "tfds":
            if holdout != "random":
                raise DataError(f"--holdout {holdout} applies to tsv/csv/jsonl files; TFDS "
                                "datasets are validated on their own validation split")
            self._init_tfds(rest, text_column, label_column, tfds_manual_dir, tfds_data_dir)
            return
        table = read_table(spec, text_column, label_column, require_labels, seed,
                           pair_column, holdout)
        self.path, self.text_column, self.label_column = (table.path, table.text_column,
                                                          table.label_column)
        self.train, self.val, self.all = table.train, table.val, table.all
        self.skipped_empty = table.skipped_empty
        self.dropped_contained = table.dropped_contained

    # -- TFDS ------------------------------------------------------------------------------
    def _init_tfds(self, rest, text_column, label_column, manual_dir, data_dir):
        import tensorflow_datasets as tfds

        self.name, _, split = rest.partition(":")
        # Prepared offline, text feature and splits resolved as for LM corpora.
        source = TfdsSource(self.name, split or None, text_column,
                            manual_dir or os.environ.get("TFDS_MANUAL_DIR") or None,
                            data_dir or os.environ.get("TFDS_DATA_DIR") or None)
        features = source.builder.info.features
        self.text_column, self.label_column = pick_columns(
            f"TFDS dataset {self.name!r}", list(features), source.text_feature, label_column,
            self.require_labels, self.pair_column)
        feature = features[self.label_column] if self.label_column else None
        if isinstance(feature, tfds.features.ClassLabel):
            self.class_vocabulary = list(feature.names)

        def read(split_name):
            rows = []
            for ex in tfds.as_numpy(source.builder.as_dataset(split=split_name)):
                label = ex[self.label_column] if self.label_column else ""
                # GLUE test splits carry label -1: no label.
                if self.class_vocabulary is not None:
                    label = self.class_vocabulary[label] if label >= 0 else ""
                row = {self.text_column: ex[self.text_column], self.label_column: label}
                if self.pair_column:
                    row[self.pair_column] = ex[self.pair_column]
                rows.append(row)
            pairs, skipped = text_label_pairs(self.spec, rows, self.text_column,
                                              self.label_column, self.require_labels,
                                              self.pair_column)
            self.skipped_empty += skipped
            return pairs

        self.train = read(source.train_split)
        self.val = read(source.val_split)
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
        """What a run's config.json records of its data (evaluation re-reads it from here)."""
        info = {"spec": self.spec, "text_column": self.text_column,
                "label_column": self.label_column, "train_rows": len(self.train),
                "val_rows": len(self.val), "skipped_empty": self.skipped_empty}
        # Written only when set, so configs of single-text, random-split runs are unchanged.
        if self.pair_column:
            info["pair_column"] = self.pair_column
        if self.holdout != "random":
            info.update(holdout=self.holdout, dropped_contained=self.dropped_contained)
        return info
