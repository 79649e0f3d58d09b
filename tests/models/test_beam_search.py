"""Beam search against a brute-force search over a fixed next-token table."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tfllm.models.beam_search import beam_search


def _table_step(table):
    """A step function whose next-token log-probabilities depend on the whole prefix:
    logits = table[hash(prefix)], the prefix kept in the state."""
    table = tf.constant(table, tf.float32)
    buckets = table.shape[0]

    def step(tokens, state, t):
        prefix = state * 7 + tokens + 1  # a running code of the prefix
        return tf.gather(table, prefix % buckets), prefix
    return step


def _brute_force(table, vocab, end, steps, alpha):
    best, best_seq = -math.inf, None
    for length in range(1, steps + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if end in seq[:-1] or (length < steps and seq[-1] != end):
                continue
            code, logp = 0, 0.0
            prev = 0
            for tok in seq:
                code = code * 7 + prev + 1
                row = table[code % len(table)]
                logp += float(row[tok] - np.log(np.exp(row).sum()))
                prev = tok
            score = logp / length ** alpha
            if score > best:
                best, best_seq = score, list(seq)
    return best_seq, best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_finds_the_brute_force_best(alpha):
    vocab, end, steps = 4, 3, 4
    rng = np.random.RandomState(7)
    table = rng.randn(997, vocab).astype("float32") * 2.0
    step = _table_step(table)
    # Wide enough to keep every prefix: the search is then exhaustive.
    out, lengths, score = beam_search(step, tf.zeros([128], tf.int32), 0, 1, 128,
                                      tf.constant(steps), end, alpha, max_len=steps)
    got = out.numpy()[0, :int(lengths[0])].tolist()
    want, want_score = _brute_force(table, vocab, end, steps, alpha)
    assert got == want and float(score[0]) == pytest.approx(want_score, abs=1e-4)
    # A narrower beam searches less, but its answer is never better than the best.
    _, _, narrow = beam_search(step, tf.zeros([2], tf.int32), 0, 1, 2, tf.constant(steps),
                               end, alpha, max_len=steps)
    assert float(narrow[0]) <= want_score + 1e-5
