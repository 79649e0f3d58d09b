"""The child process that compiles a constraint into a token automaton, with limits no
pattern can lift.

A JSON schema or a regular expression comes from whoever sends a request (an OpenAI
client's `response_format`, a `--json-schema` file). outlines-core compiles it to a DFA and
walks every token through every state, in Rust code a Python thread cannot stop: a string's
`maxLength` of 2,000 over SmolLM2's 49,152 tokens took 40 s and ~1 GB here, and a pattern
whose DFA blows up (`[ab]*a[ab]{30}`: 2^30 states) would take hours and all the memory. So
`tfllm.models.token_automaton` runs the compile here, in a child whose address space is
capped (`memory_bytes` of the request), and kills it past its time limit.

This file imports only the standard library, NumPy and outlines-core (not tfllm, whose
package imports TensorFlow), and runs as a script: one pickled request on stdin, one
pickled answer on stdout.

    {"regex": str} or {"schema": JSON text}, and "vocab_size": int, "by_bytes":
    {bytes: [ids]}, "memory_bytes": int, "time_limit": seconds, "max_transitions": int,
    "max_regex_chars": int, "regex_only": bool (a schema's regex alone: {"regex": ...})
        -> {"ok": (allowed, keys, targets, final, initial), "regex": the pattern}
           or {"error": "one line", "kind": "schema" | "regex" | "long" | "estimate" |
               "size" | "memory", "regex": the pattern where there is one}

A JSON schema becomes its regular expression here too: outlines-core writes a bounded or
optional part once per way it can appear, so each level of nesting can double it (20
levels of `{"type": "array", "items": ..., "maxItems": 1}`: 78 MB of pattern).
"""

from __future__ import annotations

import pickle
import re
import sys


class _TooLarge(Exception):
    """More transitions than the caller keeps."""


def estimated_states(regex: str) -> int | None:
    """An upper bound on the positions of `regex` with its counted repetitions written out
    (`a{3}` is 3, `(ab){2,5}` 10, `x*` 2): about the states of its DFA when none blows up.
    None where Python's parser does not read the pattern (Rust's syntax differs in places);
    the compile's time limit still holds then.

    Example:
        >>> estimated_states("[a-z ]{0,1000}")
        1000
    """
    try:  # CPython's own parser (private: a Python that moves it gets no estimate)
        import re._constants as c
        import re._parser as parser
    except ImportError:
        return None
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


def compile_seconds(states: int, vocab_size: int) -> float:
    """About how long a pattern of `states` states compiles over `vocab_size` tokens here
    (2 cores), fitted to: SmolLM2's 49,152 tokens, `[a-z ]{0,1000}` (1,001 states) 32 s; a
    65-token vocabulary, `a{10000}` 0.9 s and `a{100000}` 83 s (the states' own cost grows
    with their square). A pattern estimated past twice the time limit is refused at once."""
    return states * vocab_size * 7e-7 + states ** 2 * 8e-9


def arrays_of_index(index, vocab_size: int, max_transitions: int):
    """(allowed, keys, targets, final, initial) of an outlines-core `Index`: the arrays
    `TokenAutomaton` holds (its module docstring), states numbered 0.. in sorted order."""
    import numpy as np

    transitions = index.get_transitions()  # {state: {token: next state}}
    finals = index.get_final_states()
    states = sorted(transitions.keys() | finals | {index.get_initial_state()})
    number = {s: n for n, s in enumerate(states)}
    total = sum(len(t) for t in transitions.values())
    if total > max_transitions:
        raise _TooLarge(total)
    words = -(-vocab_size // 32)
    allowed = np.zeros((len(states), words), np.uint32)
    keys = np.empty(total, np.int64)
    targets = np.empty(total, np.int32)
    final = np.zeros(len(states), bool)
    at = 0
    for state, moves in transitions.items():
        n = number[state]
        tokens = np.fromiter((t for t in moves if t < vocab_size), np.int64)
        nexts = np.fromiter((number[moves[t]] for t in moves if t < vocab_size), np.int32)
        np.bitwise_or.at(allowed[n], tokens // 32, (1 << (tokens % 32)).astype(np.uint32))
        keys[at:at + len(tokens)] = n * vocab_size + tokens
        targets[at:at + len(tokens)] = nexts
        at += len(tokens)
    for state in finals:
        final[number[state]] = True
    order = np.argsort(keys[:at], kind="stable")
    return (allowed.view(np.int32), keys[:at][order], targets[:at][order], final,
            number[index.get_initial_state()])


def compile_request(request: dict) -> dict:
    """The answer to one request (see the module docstring)."""
    from outlines_core import Index, Vocabulary

    regex = request.get("regex")
    if regex is None:
        from outlines_core.json_schema import build_regex_from_schema

        try:
            regex = build_regex_from_schema(request["schema"])
        except (ValueError, RuntimeError, TypeError) as e:
            return {"error": str(e), "kind": "schema"}
    if len(regex) > request["max_regex_chars"]:
        return {"error": f"{len(regex):,}", "kind": "long", "regex": regex[:200]}
    if request.get("regex_only"):
        return {"regex": regex}
    states = estimated_states(regex)
    if states is not None:
        seconds = compile_seconds(states, request["vocab_size"])
        if seconds > 2 * request["time_limit"]:
            return {"error": (states, seconds), "kind": "estimate", "regex": regex}
    try:
        vocabulary = Vocabulary(request["vocab_size"], request["by_bytes"])
        index = Index(regex, vocabulary)
        return {"ok": arrays_of_index(index, request["vocab_size"],
                                      request["max_transitions"]), "regex": regex}
    except _TooLarge as e:
        return {"error": f"{e.args[0]:,}", "kind": "size", "regex": regex}
    except MemoryError:
        return {"error": "out of memory", "kind": "memory", "regex": regex}
    except (ValueError, RuntimeError) as e:
        return {"error": str(e), "kind": "regex", "regex": regex}


def main() -> None:
    import resource

    request = pickle.load(sys.stdin.buffer)
    limit = request["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answer = compile_request(request)
    pickle.dump(answer, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
