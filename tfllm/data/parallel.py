"""Parallel text (source -> target pairs, e.g. English -> French) for encoder-decoders.

A parallel data spec names the source:
    tsv:PATH | csv:PATH   a table with a header row
    jsonl:PATH            one JSON object per line
    tfds:NAME[:SPLIT]     a TFDS translation dataset (features named by language, e.g.
                          wmt14_translate/fr-en's `en` and `fr`), prepared offline

`--source-column` / `--target-column` name the two sides. Rows where either side is empty
are skipped and counted. Files have no validation split of their own: a seeded 10% of the
rows is held out; TFDS datasets use their validation split.
"""

from __future__ import annotations

import os

from tfllm.data.spec import FILE_KINDS
from tfllm.data.tables import cell, read_rows, split_rows
from tfllm.errors import DataError


class ParallelData:
    """(source, target) string pairs from a parallel data spec, split into train and val.

    Args:
        spec: `tsv:PATH`, `csv:PATH`, `jsonl:PATH` or `tfds:NAME[:SPLIT]`.
        source_column: the field holding the source text (e.g. "en").
        target_column: the field holding the target text (e.g. "fr"); None reads sources
            only (translating a file).
        seed: seed of the held-out split of files.
        tfds_manual_dir, tfds_data_dir: as for `tfllm.data.Corpus`.

    Attributes:
        train, val: lists of (source, target) pairs.
        all: every kept pair of the file (TFDS: the named split, else validation).
        skipped_empty: rows skipped because a side was empty.

    Example:
        >>> data = ParallelData("tsv:data/en-fr/train.tsv", "en", "fr")  # doctest: +SKIP
        >>> data.train[0]  # doctest: +SKIP
        ('Invalid request descriptor', 'Descripteur de requête invalide')
    """

    def __init__(self, spec, source_column, target_column, seed=0, tfds_manual_dir=None,
                 tfds_data_dir=None):
        self.spec = spec
        self.kind, _, rest = spec.partition(":")
        self.source_column, self.target_column = source_column, target_column
        self.skipped_empty = 0
        if not source_column:
            raise DataError("parallel data needs --source-column (e.g. en)")
        if not rest or self.kind not in FILE_KINDS + ("tfds",):
            raise DataError(f"bad parallel data spec {spec!r}: use tsv:PATH, csv:PATH, "
                            "jsonl:PATH or tfds:NAME[:SPLIT]")
        if self.kind == "tfds":
            self._init_tfds(rest, tfds_manual_dir, tfds_data_dir)
            return
        self.path = os.path.expanduser(rest)
        columns, rows = read_rows(self.kind, self.path)
        self._check_columns(self.path, columns)
        self.all = self._pairs(rows)
        self.train, self.val, _ = split_rows(self.all, "random", seed)

    def _check_columns(self, where, columns):
        for option, name in (("--source-column", self.source_column),
                             ("--target-column", self.target_column)):
            if name is not None and name not in columns:
                raise DataError(f"{where} has no column {name!r} ({option}); columns: "
                                f"{list(columns)}")

    def _pairs(self, rows):
        pairs = []
        for row in rows:
            source = cell(row.get(self.source_column)).strip()
            target = cell(row.get(self.target_column)).strip() if self.target_column else ""
            if not source or (self.target_column and not target):
                self.skipped_empty += 1
                continue
            pairs.append((source, target))
        if not pairs:
            raise DataError(f"{self.spec} has no rows with both {self.source_column!r} and "
                            f"{self.target_column!r} non-empty")
        return pairs

    def _init_tfds(self, rest, manual_dir, data_dir):
        import tensorflow_datasets as tfds

        from tfllm.data.tfds_source import TfdsSource

        self.name, _, split = rest.partition(":")
        source = TfdsSource(self.name, split or None, None,
                            manual_dir or os.environ.get("TFDS_MANUAL_DIR") or None,
                            data_dir or os.environ.get("TFDS_DATA_DIR") or None,
                            require_text=False)
        features = source.builder.info.features
        # Translation features nest the languages one level down (wmt: {"en", "fr"}).
        columns = list(features)
        nested = None
        if len(columns) == 1 and hasattr(features[columns[0]], "keys"):
            nested, columns = columns[0], list(features[columns[0]].keys())
        self._check_columns(f"TFDS dataset {self.name!r}", columns)

        def read(split_name):
            rows = []
            for ex in tfds.as_numpy(source.builder.as_dataset(split=split_name)):
                rows.append(ex[nested] if nested else ex)
            return self._pairs(rows)

        self.train = read(source.train_split)
        self.val = read(source.val_split)
        self.all = read(split) if split else self.val

    def describe(self) -> dict:
        """What a run records of its data (enough to read it again)."""
        return {"spec": self.spec, "source_column": self.source_column,
                "target_column": self.target_column, "skipped_empty": self.skipped_empty}
