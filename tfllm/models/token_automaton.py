"""Constrained decoding: a regular expression or a JSON schema compiled into a token-level
automaton stored as arrays, which the decoding loop follows in-graph.

outlines-core compiles the pattern (a JSON schema through its regex) into a DFA over bytes
and walks every token of the vocabulary through it: each state lists the tokens that keep
the output a prefix of a match and the state each leads to. We keep that as three arrays,
so that the XLA decoding loop, the SavedModel and any runtime hold the same automaton:

    allowed   int32 (states, ceil(vocab / 32)): bit t % 32 of word t // 32 set where token t
              may follow (a bitmask: 6 KB a state for a 49,152-token vocabulary)
    keys      int64 (transitions,): state * vocab + token, sorted
    targets   int32 (transitions,): the state `keys[i]` leads to
    final     bool (states,): a complete match; only there may an end token follow
    distance  int32 (states,): the fewest tokens, the end token included, to a complete
              match; `closer` (states,) the first token of such a path (an end token in
              final states). A row whose budget would not let it finish takes `closer`
              instead of its choice, so every output is complete within max_new_tokens.

Why outlines-core: of the three PyPI engines the issue names, it is the one whose compiled
form is a plain token automaton (llguidance and xgrammar run a parser per step, which a
graph cannot hold); it is Apache-2.0 Rust with wheels for every platform tfllm supports.

Example:
    >>> automaton = TokenAutomaton.from_regex(r"(yes|no)", tokenizer)  # doctest: +SKIP
    >>> model.generate("Is it?", constraint=automaton)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading

import numpy as np

from tfllm.config import TfllmError
from tfllm.untrusted import parse_json

# Compiling walks every token through the DFA: a bound on the automaton we keep in memory
# and in a SavedModel (transitions x 12 bytes).
MAX_TRANSITIONS = 50_000_000
# The compile runs in a child process (tfllm/models/automaton_worker.py) killed past this
# many seconds, its address space capped at COMPILE_MEMORY_BYTES: a pattern is untrusted
# input (a request's response_format) and outlines-core's Rust cannot be stopped in-thread.
COMPILE_TIME_LIMIT_S = 120.0
COMPILE_MEMORY_BYTES = 6 << 30
# One compile at a time per process: a server's concurrent requests cannot add up to more
# than one child's memory (they wait their turn instead).
_COMPILING = threading.Lock()
# The longest regular expression compiled, a JSON schema's included (the docs' schemas and
# tools come to a few kB).
MAX_REGEX_CHARS = 1 << 20
# The deepest nesting of objects and lists in a JSON schema (the validators recurse).
MAX_SCHEMA_DEPTH = 64


class ConstraintError(TfllmError, ValueError):
    """A regular expression or JSON schema that cannot constrain decoding."""


@dataclasses.dataclass
class TokenAutomaton:
    """A token-level automaton (see the module docstring for the arrays)."""

    allowed: np.ndarray
    keys: np.ndarray
    targets: np.ndarray
    final: np.ndarray
    distance: np.ndarray
    closer: np.ndarray
    initial: int  # or, for per-row constraints (`union`), an int32 array: each row's start
    vocab_size: int
    end_ids: tuple
    pattern: str

    @property
    def num_states(self) -> int:
        return int(self.final.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what a SavedModel stores)."""
        return sum(int(a.nbytes) for a in (self.allowed, self.keys, self.targets, self.final,
                                           self.distance, self.closer))

    @classmethod
    def from_regex(cls, regex: str, tokenizer) -> "TokenAutomaton":
        """The automaton of outputs that match `regex` in full (tokens of `tokenizer`).

        Args:
            regex: a regular expression (Rust `regex` syntax: no look-around, no
                back-references) the whole output must match.
            tokenizer: a tfllm tokenizer (`token_bytes()`, `eos_ids`).
        """
        if not isinstance(regex, str) or not regex:
            raise ConstraintError(f"a regular expression must be a non-empty string, got "
                                  f"{regex!r}")
        return cls._compile(tokenizer, regex=regex)

    @classmethod
    def from_json_schema(cls, schema, tokenizer) -> "TokenAutomaton":
        """The automaton of JSON texts valid under `schema` (a dict or JSON text).

        Args:
            schema: a JSON schema: objects (properties, required), arrays (items,
                minItems/maxItems), strings (enum, const, pattern, minLength/maxLength,
                format), numbers, integers, booleans, null, anyOf/oneOf/allOf, $ref.
            tokenizer: a tfllm tokenizer.
        """
        if isinstance(schema, str):
            try:
                schema = parse_json(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from None
        check_schema(schema)
        return cls._compile(tokenizer, schema=json.dumps(schema))

    @classmethod
    def _compile(cls, tokenizer, regex=None, schema=None) -> "TokenAutomaton":
        """`regex` (or the JSON text `schema`, through its regex) compiled in a child
        process (tfllm/models/automaton_worker.py), within the limits above."""
        pieces = tokenizer.token_bytes()
        vocab_size = len(pieces)
        end_ids = tuple(int(i) for i in tokenizer.eos_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for i, piece in enumerate(pieces):
            if piece and i not in end_ids:
                by_bytes.setdefault(piece, []).append(i)
        # outlines-core marks a complete match by its end token: we give it one id past the
        # vocabulary (the worker leaves it out of the transitions); the model's end tokens
        # follow the final states instead.
        what = f"the constraint {_excerpt(regex)}" if regex is not None else "the JSON schema"
        answer = _compile_in_child({"regex": regex, "schema": schema, "vocab_size": vocab_size,
                                    "by_bytes": by_bytes}, what)
        kind, error = answer.get("kind"), answer.get("error")
        regex = answer.get("regex", regex)
        if kind == "estimate":
            states, seconds = error
            raise ConstraintError(
                f"{what} needs about {states:,} automaton states over a {vocab_size:,}-token "
                f"vocabulary, about {seconds:,.0f} s to compile, past the "
                f"{COMPILE_TIME_LIMIT_S:g} s limit: lower its repetition counts (a string's "
                "maxLength, an array's maxItems, {m,n} in a pattern)")
        if kind == "size":
            raise ConstraintError(f"{what} compiles to {error} token transitions, more than "
                                  f"{MAX_TRANSITIONS:,}: simplify it (shorter alternatives, "
                                  "bounded repetition)")
        if kind == "memory":
            raise ConstraintError(f"compiling {what} needed more than "
                                  f"{COMPILE_MEMORY_BYTES >> 20:,} MiB: simplify it")
        if error is not None:
            missing = re.search(r"following characters: (\[.*?\])", error)
            if missing:  # the vocabulary cannot spell a character every answer needs
                raise ConstraintError(f"the model's vocabulary has no token for any of "
                                      f"{missing.group(1)}, which {_excerpt(regex)} needs "
                                      "there: no output of this model can match it")
            raise ConstraintError(f"the regular expression {_excerpt(regex)} cannot be used: "
                                  f"{error} (no look-around or back-references)")
        allowed, keys, targets, final, initial = answer["ok"]
        distance, closer = _distances(keys, targets, final, vocab_size, end_ids[0])
        if distance[initial] < 0:
            raise ConstraintError(f"no text of this vocabulary matches {_excerpt(regex)}")
        return cls(allowed, keys, targets, final, distance, closer, initial, vocab_size,
                   end_ids, regex)

    # -- following it, in Python (the graph does the same on tensors) -----------------------
    def allowed_tokens(self, state: int) -> np.ndarray:
        """Ids allowed in `state` (the end tokens where it is final)."""
        bits = np.unpackbits(self.allowed[state].view(np.uint8), bitorder="little")
        ids = np.flatnonzero(bits[:self.vocab_size])
        return np.concatenate([ids, list(self.end_ids)]) if self.final[state] else ids

    def next_state(self, state: int, token: int) -> int | None:
        """The state after `token`, or None when the token is not allowed."""
        key = state * self.vocab_size + token
        i = int(np.searchsorted(self.keys, key))
        return int(self.targets[i]) if i < len(self.keys) and self.keys[i] == key else None

    def shortest_completion(self) -> int:
        """The fewest tokens (the end token included) from the start to a complete match
        (of the longest row's, for per-row starts)."""
        return int(np.max(self.distance[self.initial]))

    @classmethod
    def union(cls, parts: list["TokenAutomaton"], rows: list[int]) -> "TokenAutomaton":
        """One automaton holding `parts` side by side (state numbers offset, the arrays
        concatenated), whose `initial` is an array: row r starts in `parts[rows[r]]`'s
        initial state, so one decoding loop follows a different constraint per row.

        Args:
            parts: automata over the same vocabulary and end tokens.
            rows: for each row, the index of its automaton in `parts`.
        """
        if len({(p.vocab_size, p.end_ids) for p in parts}) != 1:
            raise ConstraintError("per-row constraints must share one vocabulary")
        offsets = np.cumsum([0] + [p.num_states for p in parts[:-1]])
        vocab = parts[0].vocab_size
        join = np.concatenate
        return cls(join([p.allowed for p in parts]),
                   join([p.keys + int(o) * vocab for p, o in zip(parts, offsets)]),
                   join([p.targets + int(o) for p, o in zip(parts, offsets)]).astype(np.int32),
                   join([p.final for p in parts]), join([p.distance for p in parts]),
                   join([p.closer for p in parts]),
                   np.array([offsets[i] + parts[i].initial for i in rows], np.int32),
                   vocab, parts[0].end_ids, " | ".join(p.pattern for p in parts))


def regex_of_schema(schema) -> str:
    """The regular expression outlines-core writes for the JSON schema `schema` (checked
    first), built in the child process too: nesting can multiply its length.

    Example:
        >>> regex_of_schema({"type": "boolean"})
        '(true|false)'
    """
    check_schema(schema)
    return _compile_in_child({"schema": json.dumps(schema), "regex_only": True},
                             "the JSON schema")["regex"]


def _compile_in_child(request: dict, what: str) -> dict:
    """The answer of tfllm/models/automaton_worker.py to `request` (the limits added), run in
    a child process killed past COMPILE_TIME_LIMIT_S; ConstraintError when it is, when it
    dies (its memory cap), or when a schema cannot be used or its regex is too long."""
    import os
    import pickle
    import subprocess
    import sys

    request = {"regex": None, "max_transitions": MAX_TRANSITIONS,
               "max_regex_chars": MAX_REGEX_CHARS, "time_limit": COMPILE_TIME_LIMIT_S,
               "memory_bytes": COMPILE_MEMORY_BYTES, **request}
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "automaton_worker.py")
    try:
        with _COMPILING:
            done = subprocess.run([sys.executable, "-I", worker], input=pickle.dumps(request),
                                  capture_output=True, timeout=COMPILE_TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise ConstraintError(f"compiling {what} took longer than {COMPILE_TIME_LIMIT_S:g} s "
                              "(its automaton blows up, or its repetition counts are large); "
                              "it was stopped: simplify it") from None
    if done.returncode != 0 or not done.stdout:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        # Killed by a signal, or Rust's "memory allocation of N bytes failed" (an abort),
        # or Python's MemoryError: the address-space cap.
        if done.returncode < 0 or any("memory allocation" in s or "MemoryError" in s
                                      for s in said[-3:]):
            raise ConstraintError(f"compiling {what} needed more than "
                                  f"{COMPILE_MEMORY_BYTES >> 20:,} MiB (its automaton blows up, "
                                  "or its repetition counts are large): simplify it")
        raise ConstraintError(f"compiling {what} failed in its worker process: "
                              f"{said[-1] if said else f'exit status {done.returncode}'}")
    answer = pickle.loads(done.stdout)  # our own child's answer
    kind, error = answer.get("kind"), answer.get("error")
    if kind == "schema":
        raise ConstraintError(f"the JSON schema cannot be used: {error}")
    if kind == "long":
        raise ConstraintError(
            f"{what} becomes a regular expression of {error} characters, more than "
            f"{MAX_REGEX_CHARS:,}: each optional or bounded part is written once per way it "
            "can appear, so nesting multiplies it; flatten the schema or drop bounds")
    return answer


def _distances(keys, targets, final, vocab_size, end_id):
    """(distance, closer) of every state: a breadth-first search backwards from the final
    states over the transitions (-1 where no match can be reached)."""
    states = final.shape[0]
    sources = (keys // vocab_size).astype(np.int64)
    tokens = (keys % vocab_size).astype(np.int32)
    by_target = np.argsort(targets, kind="stable")
    starts = np.searchsorted(targets[by_target], np.arange(states + 1))
    distance = np.full(states, -1, np.int32)
    closer = np.full(states, end_id, np.int32)
    frontier = np.flatnonzero(final)
    distance[frontier] = 1
    level = 1
    while len(frontier):
        level += 1
        incoming = np.concatenate([by_target[starts[s]:starts[s + 1]] for s in frontier])
        new = []
        for i in incoming:
            s = sources[i]
            if distance[s] < 0:
                distance[s], closer[s] = level, tokens[i]
                new.append(s)
        frontier = np.asarray(new, np.int64)
    return distance, closer


def read_schema_file(path: str, what: str | None = None) -> dict:
    """The JSON schema in the file `path`, checked (`check_schema`); ConstraintError starts
    with `what` (default "--json-schema PATH") when it cannot be read or used."""
    return read_checked_json(path, what or f"--json-schema {path}", check_schema,
                             ConstraintError)


def read_checked_json(path: str, what: str, check, error=ConstraintError):
    """The JSON value in the file `path`, passed to `check` (which raises `error`, or
    returns a value to use instead); every failure an `error` starting with `what`."""
    try:
        with open(path, encoding="utf-8") as f:
            value = parse_json(f.read())
    except OSError as e:
        raise error(f"{what}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise error(f"{what} is not valid JSON: {reason}") from None
    try:
        checked = check(value)
    except error as e:
        raise error(f"{what}: {e}") from None
    return value if checked is None else checked


def check_schema(schema) -> None:
    """Raise ConstraintError unless `schema` is a valid JSON schema (Draft 2020-12) whose
    keywords outlines-core understands."""
    import jsonschema

    if not isinstance(schema, dict):
        raise ConstraintError(f"a JSON schema must be an object, got {type(schema).__name__}")
    depth, level = 0, [schema]
    while level:  # breadth first: the check itself must not recurse
        depth += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise ConstraintError(f"the JSON schema nests more than {MAX_SCHEMA_DEPTH} levels "
                                  "of objects and lists: flatten it")
        level = [v for node in level for v in (node.values() if isinstance(node, dict)
                                               else node) if isinstance(v, (dict, list))]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        raise ConstraintError(f"invalid JSON schema at {where}: {e.message}") from None
    for path, key in _keywords(schema):
        if key in UNSUPPORTED_KEYWORDS:
            raise ConstraintError(f"the JSON schema keyword {key!r} (at {path or 'the top'}) "
                                  "is not supported by constrained decoding")


# Keywords whose meaning a regular language cannot hold, which outlines-core would drop
# silently: refused by name instead.
UNSUPPORTED_KEYWORDS = ("not", "if", "then", "else", "dependentSchemas", "dependentRequired",
                        "patternProperties", "propertyNames", "uniqueItems", "contains",
                        "multipleOf", "unevaluatedProperties", "unevaluatedItems")


def _keywords(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            # Property names are data, not keywords; so are enum and const values.
            if key != "properties":
                yield path, key
            if key in ("enum", "const", "default", "examples"):
                continue
            if key in ("properties", "$defs", "definitions"):
                for name, sub in (value.items() if isinstance(value, dict) else ()):
                    yield from _keywords(sub, f"{path}/{key}/{name}")
            else:
                yield from _keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _keywords(item, f"{path}/{i}")


def _excerpt(text: str, limit: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")
