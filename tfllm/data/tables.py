"""Reading local tables (tsv, csv, jsonl) into (text, label) rows, with a seeded held-out
split. Both LM corpora (their text) and labeled data (text and label) read tables here."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random

from tfllm.data.spec import LABEL_COLUMN, TEXT_COLUMNS, VAL_FRACTION
from tfllm.errors import DataError


def read_rows(kind: str, path: str) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of a tsv, csv or jsonl file."""
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


def cell(value) -> str:
    """A table or TFDS value as text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def pick_columns(where: str, columns, text_column, label_column, require_labels: bool):
    """(text column, label column or None), checked against `columns` of `where`."""
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
        if require_labels:
            raise DataError(f"{where} has no label column {label_column!r}; columns: "
                            f"{columns}; pick one with --label-column")
        label_column = None
    return text_column, label_column


def text_label_pairs(spec: str, rows, text_column, label_column, require_labels: bool):
    """((text, label) pairs, rows skipped for empty text); empty labels are an error when
    labels are required."""
    pairs, empty_labels, skipped = [], [], 0
    for n, row in enumerate(rows, 1):
        text = cell(row.get(text_column)).strip()
        label = cell(row.get(label_column)).strip() if label_column else ""
        if not text:
            skipped += 1
            continue
        if require_labels and not label:
            empty_labels.append(n)
            continue
        pairs.append((text, label))
    if empty_labels:
        shown = ", ".join(map(str, empty_labels[:10]))
        raise DataError(f"{len(empty_labels)} row(s) of {spec} have an empty "
                        f"{label_column!r} label (rows {shown}"
                        f"{', ...' if len(empty_labels) > 10 else ''}); fill or remove them")
    if not pairs:
        raise DataError(f"{spec} has no rows with text in column {text_column!r}")
    return pairs, skipped


@dataclasses.dataclass
class Table:
    """A table's rows as (text, label) pairs, with a seeded held-out validation share."""

    path: str
    text_column: str
    label_column: str | None
    train: list
    val: list
    all: list
    skipped_empty: int


def read_table(spec: str, text_column=None, label_column=None, require_labels=True,
               seed=0) -> Table:
    """Read `tsv:PATH`, `csv:PATH` or `jsonl:PATH` into a `Table`.

    Example:
        >>> table = read_table("tsv:../shared/data/sst2/train.tsv")  # doctest: +SKIP
    """
    kind, _, rest = spec.partition(":")
    path = os.path.expanduser(rest)
    columns, rows = read_rows(kind, path)
    text_column, label_column = pick_columns(path, columns, text_column, label_column,
                                             require_labels)
    pairs, skipped = text_label_pairs(spec, rows, text_column, label_column, require_labels)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(pairs) * VAL_FRACTION)) if len(pairs) > 1 else 0
    return Table(path, text_column, label_column, train=[pairs[i] for i in order[n_val:]],
                 val=[pairs[i] for i in order[:n_val]], all=pairs, skipped_empty=skipped)
