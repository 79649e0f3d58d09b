"""Data specs, the bottom of tfllm's data: what a `--data` value names and the defaults
every reader shares.

    tfds:NAME[:SPLIT]   any TFDS dataset with a text feature (offline via a manual dir)
    text:GLOB           local UTF-8 files; the last 10% of the text is the validation split
    tsv:PATH | csv:PATH | jsonl:PATH
                        a table (header row / one JSON object per line); a seeded 10% of the
                        rows is the validation split
"""

from __future__ import annotations

import dataclasses
import glob
import os

from tfllm.errors import DataError

FILE_KINDS = ("tsv", "csv", "jsonl")
TEXT_COLUMNS = ("text", "sentence", "content", "review")
LABEL_COLUMN = "label"
# Held out for validation where a source has no split of its own.
VAL_FRACTION = 0.1
# How labeled tables hold rows out (tfllm.data.tables.split_rows); "longest" holds out at
# most this many rows.
HOLDOUTS = ("random", "longest")
MAX_LONGEST_VAL = 1000


@dataclasses.dataclass
class DataSpec:
    """A parsed `--data` value; `str(spec)` gives it back."""

    kind: str  # "tfds", "text", or a labeled-table kind (tsv, csv, jsonl)
    name: str  # dataset name or glob
    split: str | None = None

    def __str__(self):
        if self.kind == "tfds":
            return f"tfds:{self.name}" + (f":{self.split}" if self.split else "")
        return f"{self.kind}:{self.name}"


def spec_hint(spec: str, kinds=("text",) + FILE_KINDS) -> str:
    """"; did you mean KIND:PATH?" for a bare path whose extension names one of `kinds` of
    `--data` (`train.jsonl` -> `jsonl:train.jsonl`, `input.txt` -> `text:input.txt`), else "".

    Example:
        >>> spec_hint("data/train.tsv")
        '; did you mean tsv:data/train.tsv?'
    """
    extension = os.path.splitext(spec)[1].lower().lstrip(".")
    kind = {"txt": "text", "text": "text"}.get(extension, extension)
    return f"; did you mean {kind}:{spec}?" if kind in kinds else ""


def parse_data_spec(spec: str) -> DataSpec:
    """Parse `tfds:NAME[:SPLIT]`, `text:GLOB`, or `tsv:|csv:|jsonl:PATH`.

    Example:
        >>> parse_data_spec("tfds:tiny_shakespeare").name
        'tiny_shakespeare'
    """
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("tfds", "text") + FILE_KINDS:
        raise DataError(f"bad data spec {spec!r}: use tfds:NAME[:SPLIT], text:GLOB, "
                        f"tsv:PATH, csv:PATH or jsonl:PATH{spec_hint(spec)}")
    if kind == "tfds":
        name, _, split = rest.partition(":")
        return DataSpec("tfds", name, split or None)
    return DataSpec(kind, rest)


def is_labeled_spec(spec: str) -> bool:
    """True for the table kinds (tsv, csv, jsonl)."""
    return spec.partition(":")[0] in FILE_KINDS


def data_paths(spec: str, tfds_manual_dir: str | None = None,
               tfds_data_dir: str | None = None) -> list[str]:
    """The local paths a `--data` value reads (an output may not overlap them): the files
    of `text:GLOB`, a table's file, a TFDS dataset's manual and data directories."""
    try:
        parsed = parse_data_spec(spec)
    except DataError:
        return []  # the reader reports it
    if parsed.kind == "text":
        return sorted(glob.glob(os.path.expanduser(parsed.name), recursive=True))
    if parsed.kind in FILE_KINDS:
        return [os.path.expanduser(parsed.name)]
    return [d for d in (tfds_manual_dir or os.environ.get("TFDS_MANUAL_DIR"),
                        tfds_data_dir or os.environ.get("TFDS_DATA_DIR")) if d]
