"""Reading local tables (tsv, csv, jsonl) into (text, label) rows, with a held-out split.
Both LM corpora (their text) and labeled data (text and label) read tables here.

A row's text is a string, or a `(text, pair)` tuple where a pair column is given
(sentence-pair tasks: NLI, paraphrase, QA relevance).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random

from tfllm.data.spec import HOLDOUTS, LABEL_COLUMN, MAX_LONGEST_VAL, TEXT_COLUMNS, VAL_FRACTION
from tfllm.errors import DataError
from tfllm.untrusted import parse_json


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
                        row = parse_json(line)
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


def pick_columns(where: str, columns, text_column, label_column, require_labels: bool,
                 pair_column=None):
    """(text column, label column or None), checked against `columns` of `where` (and
    `pair_column`, when given)."""
    if pair_column is not None and pair_column not in columns:
        raise DataError(f"{where} has no column {pair_column!r} (--pair-column); "
                        f"columns: {columns}")
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


def text_label_pairs(spec: str, rows, text_column, label_column, require_labels: bool,
                     pair_column=None):
    """((text, label) pairs, rows skipped for empty text); empty labels are an error when
    labels are required. With `pair_column` each text is a `(text, pair)` tuple, and a row
    with either side empty is skipped."""
    pairs, empty_labels, skipped = [], [], 0
    for n, row in enumerate(rows, 1):
        text = cell(row.get(text_column)).strip()
        label = cell(row.get(label_column)).strip() if label_column else ""
        if pair_column is not None:
            second = cell(row.get(pair_column)).strip()
            if not text or not second:
                skipped += 1
                continue
            text = (text, second)
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
    """A table's rows as (text, label) pairs, with a held-out validation share."""

    path: str
    text_column: str
    label_column: str | None
    train: list
    val: list
    all: list
    skipped_empty: int
    pair_column: str | None = None
    # Training rows dropped by holdout "longest" because they occur inside a held-out row.
    dropped_contained: int = 0


def _words(text) -> list[str]:
    return " ".join(text).split() if isinstance(text, tuple) else text.split()


def split_rows(pairs, holdout="random", seed=0):
    """(train, val, dropped): the held-out split of (text, label) rows.

    "random": a seeded 10% of the rows. "longest": the longest 10% of the rows (by words,
    at most MAX_LONGEST_VAL), and no training row that occurs, as a word sequence, inside a
    held-out one. Datasets that hold every phrase of their sentences (GLUE SST-2) leak under
    a random split: 87% of randomly held-out SST-2 rows occur verbatim inside a training
    row, so its accuracy is not what unseen sentences get.

    Example:
        >>> split_rows([("a fine film", "1"), ("fine", "1"), ("dull", "0")], "longest")
        ([('dull', '0')], [('a fine film', '1')], 1)
    """
    if holdout not in HOLDOUTS:
        raise DataError(f"unknown --holdout {holdout!r}; choose one of {', '.join(HOLDOUTS)}")
    n_val = max(1, int(len(pairs) * VAL_FRACTION)) if len(pairs) > 1 else 0
    if holdout == "random":
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]], 0
    n_val = min(n_val, MAX_LONGEST_VAL)
    order = sorted(range(len(pairs)), key=lambda i: (-len(_words(pairs[i][0])), i))
    val = [pairs[i] for i in order[:n_val]]
    # Every word n-gram of the held-out rows: a row "occurs inside" one when it is among
    # them (word boundaries, so "a" is not found inside "cat").
    inside = set()
    for text, _ in val:
        for side in (text if isinstance(text, tuple) else (text,)):
            words = side.split()
            for a in range(len(words)):
                for b in range(a + 1, len(words) + 1):
                    inside.add(" ".join(words[a:b]))
    train, dropped = [], 0
    for i in sorted(order[n_val:]):
        text = pairs[i][0]
        sides = text if isinstance(text, tuple) else (text,)
        if all(" ".join(side.split()) in inside for side in sides):
            dropped += 1
        else:
            train.append(pairs[i])
    return train, val, dropped


def read_table(spec: str, text_column=None, label_column=None, require_labels=True,
               seed=0, pair_column=None, holdout="random") -> Table:
    """Read `tsv:PATH`, `csv:PATH` or `jsonl:PATH` into a `Table`.

    Args:
        pair_column: the second text of sentence-pair rows (texts become tuples).
        holdout: how validation rows are held out: "random" or "longest" (`split_rows`).

    Example:
        >>> table = read_table("tsv:data/sst2/train.tsv")  # doctest: +SKIP
    """
    kind, _, rest = spec.partition(":")
    path = os.path.expanduser(rest)
    columns, rows = read_rows(kind, path)
    text_column, label_column = pick_columns(path, columns, text_column, label_column,
                                             require_labels, pair_column)
    pairs, skipped = text_label_pairs(spec, rows, text_column, label_column, require_labels,
                                      pair_column)
    train, val, dropped = split_rows(pairs, holdout, seed)
    return Table(path, text_column, label_column, train=train, val=val, all=pairs,
                 skipped_empty=skipped, pair_column=pair_column, dropped_contained=dropped)
