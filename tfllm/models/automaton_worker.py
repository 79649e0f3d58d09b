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

    {"regex": str, "vocab_size": int, "by_bytes": {bytes: [ids]}, "memory_bytes": int,
     "max_transitions": int}
        -> {"ok": (allowed, keys, targets, final, initial)}
           or {"error": "one line", "kind": "regex" | "size" | "memory"}
"""

from __future__ import annotations

import pickle
import sys


class _TooLarge(Exception):
    """More transitions than the caller keeps."""


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

    try:
        vocabulary = Vocabulary(request["vocab_size"], request["by_bytes"])
        index = Index(request["regex"], vocabulary)
        return {"ok": arrays_of_index(index, request["vocab_size"],
                                      request["max_transitions"])}
    except _TooLarge as e:
        return {"error": f"{e.args[0]:,}", "kind": "size"}
    except MemoryError:
        return {"error": "out of memory", "kind": "memory"}
    except (ValueError, RuntimeError) as e:
        return {"error": str(e), "kind": "regex"}


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
