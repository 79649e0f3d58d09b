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

import numpy as np

from tfllm.config import TfllmError

# Compiling walks every token through the DFA: a bound on the automaton we keep in memory
# and in a SavedModel (transitions x 12 bytes).
MAX_TRANSITIONS = 50_000_000
# The compile runs in a child process (tfllm/models/automaton_worker.py) killed past this
# many seconds, its address space capped at COMPILE_MEMORY_BYTES: a pattern is untrusted
# input (a request's response_format) and outlines-core's Rust cannot be stopped in-thread.
COMPILE_TIME_LIMIT_S = 120.0
COMPILE_MEMORY_BYTES = 6 << 30


def compile_seconds(states: int, vocab_size: int) -> float:
    """About how long a pattern of `states` states compiles over `vocab_size` tokens here
    (2 cores), fitted to: SmolLM2's 49,152 tokens, `[a-z ]{0,1000}` (1,001 states) 32 s; a
    65-token vocabulary, `a{10000}` 0.9 s and `a{100000}` 83 s (the states' own cost grows
    with their square). A pattern estimated past twice the time limit is refused at once."""
    return states * vocab_size * 7e-7 + states ** 2 * 8e-9


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
        pieces = tokenizer.token_bytes()
        vocab_size = len(pieces)
        end_ids = tuple(int(i) for i in tokenizer.eos_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for i, piece in enumerate(pieces):
            if piece and i not in end_ids:
                by_bytes.setdefault(piece, []).append(i)
        states = estimated_states(regex)
        if states is not None and \
                compile_seconds(states, vocab_size) > 2 * COMPILE_TIME_LIMIT_S:
            raise ConstraintError(
                f"the constraint {_excerpt(regex)} needs about {states:,} automaton states "
                f"over a {vocab_size:,}-token vocabulary, about "
                f"{compile_seconds(states, vocab_size):,.0f} s to compile, past the "
                f"{COMPILE_TIME_LIMIT_S:g} s limit: lower its repetition counts (a string's "
                "maxLength, an array's maxItems, {m,n} in a pattern)")
        # outlines-core marks a complete match by its end token: we give it one id past the
        # vocabulary and map it to the model's end tokens below.
        answer = _compile_in_child({"regex": regex, "vocab_size": vocab_size,
                                    "by_bytes": by_bytes, "max_transitions": MAX_TRANSITIONS,
                                    "memory_bytes": COMPILE_MEMORY_BYTES}, regex)
        if answer.get("kind") == "size":
            raise ConstraintError(f"the constraint {_excerpt(regex)} compiles to "
                                  f"{answer['error']} token transitions, more than "
                                  f"{MAX_TRANSITIONS:,}: simplify it (shorter alternatives, "
                                  "bounded repetition)")
        if "error" in answer:
            missing = re.search(r"following characters: (\[.*?\])", answer["error"])
            if missing:  # the vocabulary cannot spell a character every answer needs
                raise ConstraintError(f"the model's vocabulary has no token for any of "
                                      f"{missing.group(1)}, which {_excerpt(regex)} needs "
                                      "there: no output of this model can match it")
            raise ConstraintError(f"the regular expression {_excerpt(regex)} cannot be used: "
                                  f"{answer['error']} (no look-around or back-references)")
        allowed, keys, targets, final, initial = answer["ok"]
        distance, closer = _distances(keys, targets, final, vocab_size, end_ids[0])
        if distance[initial] < 0:
            raise ConstraintError(f"no text of this vocabulary matches {_excerpt(regex)}")
        return cls(allowed, keys, targets, final, distance, closer, initial, vocab_size,
                   end_ids, regex)

    @classmethod
    def from_json_schema(cls, schema, tokenizer) -> "TokenAutomaton":
        """The automaton of JSON texts valid under `schema` (a dict or JSON text).

        Args:
            schema: a JSON schema: objects (properties, required), arrays (items,
                minItems/maxItems), strings (enum, const, pattern, minLength/maxLength,
                format), numbers, integers, booleans, null, anyOf/oneOf/allOf, $ref.
            tokenizer: a tfllm tokenizer.
        """
        from outlines_core.json_schema import build_regex_from_schema

        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from None
        check_schema(schema)
        try:
            regex = build_regex_from_schema(json.dumps(schema))
        except (ValueError, RuntimeError, TypeError) as e:
            raise ConstraintError(f"the JSON schema cannot be used: {e}") from None
        return cls.from_regex(regex, tokenizer)

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


def estimated_states(regex: str) -> int | None:
    """An upper bound on the positions of `regex` with its counted repetitions written out
    (`a{3}` is 3, `(ab){2,5}` 10, `x*` 2): about the states of its DFA when none blows up.
    None where Python's parser does not read the pattern (Rust's syntax differs in places);
    the compile's time limit still holds then.

    Example:
        >>> estimated_states("[a-z ]{0,1000}")
        1000
    """
    import re._constants as c
    import re._parser as parser

    try:
        tree = parser.parse(regex)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None

    def size(items) -> int:
        total = 0
        for op, arg in items:
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                low, high, sub = arg
                total += size(sub) * (high if high != c.MAXREPEAT else low + 1)
            elif op is c.SUBPATTERN:
                total += size(arg[-1])
            elif op is c.BRANCH:
                total += sum(size(branch) for branch in arg[1])
            elif op is c.ATOMIC_GROUP:
                total += size(arg)
            else:
                total += 1
        return total

    try:
        return size(tree)
    except RecursionError:
        return None


def _compile_in_child(request: dict, pattern: str) -> dict:
    """The answer of tfllm/models/automaton_worker.py to `request`, run in a child process
    killed past COMPILE_TIME_LIMIT_S; ConstraintError when it is, or dies (its memory cap)."""
    import os
    import pickle
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "automaton_worker.py")
    try:
        done = subprocess.run([sys.executable, "-I", worker], input=pickle.dumps(request),
                              capture_output=True, timeout=COMPILE_TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise ConstraintError(f"compiling the constraint {_excerpt(pattern)} took longer than "
                              f"{COMPILE_TIME_LIMIT_S:g} s (its automaton blows up, or its "
                              "repetition counts are large); it was stopped: simplify it") \
            from None
    if done.returncode != 0 or not done.stdout:
        raise ConstraintError(f"compiling the constraint {_excerpt(pattern)} needed more than "
                              f"{COMPILE_MEMORY_BYTES >> 20:,} MiB (its automaton blows up, or "
                              "its repetition counts are large): simplify it")
    answer = pickle.loads(done.stdout)  # our own child's answer
    if answer.get("kind") == "memory":
        raise ConstraintError(f"compiling the constraint {_excerpt(pattern)} needed more than "
                              f"{COMPILE_MEMORY_BYTES >> 20:,} MiB: simplify it")
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
            value = json.load(f)
    except OSError as e:
        raise error(f"{what}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} is not valid JSON: {e}") from None
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
