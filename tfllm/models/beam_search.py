"""Beam search as a `tf.while_loop` over any step function: graph-only, XLA-compilable.

The rules are Hugging Face's `BeamSearchScorer` (what translation users compare with):
each step keeps the `2 * num_beams` best continuations of the live beams; one that ends
with the end token joins the finished hypotheses when it ranks among the first
`num_beams`, scored `sum log p / length ** length_penalty`; the best `num_beams` others
stay live. A row is done once it has `num_beams` finished hypotheses and its best live
beam cannot beat the worst of them at the current length; rows still live at the length
limit add their live beams to the finished ones. With `num_beams=1` this is greedy
decoding.
"""

from __future__ import annotations

import tensorflow as tf

_NEG_INF = -1e9


def _length_penalty(length, alpha):
    return tf.pow(tf.cast(length, tf.float32), alpha)


def beam_search(step_fn, state, start_token, batch_size, num_beams, max_steps, end_id,
                length_penalty=1.0, max_len=None):
    """Search for each row's best sequence under `step_fn`'s log-probabilities.

    Args:
        step_fn: `(tokens (batch*beams,), state, step) -> (logits (batch*beams, vocab),
            new state)`; `state` is a nested structure of tensors whose first axis is
            batch*beams (beam b of row r at index r * beams + b). Logits are turned into
            log-probabilities here.
        state: the initial state (every beam of a row the same).
        start_token: int scalar, the first input token (BOS).
        batch_size: rows (a scalar, may be a tensor).
        num_beams: beams per row (may be a tensor outside XLA).
        max_steps: generate at most this many tokens (int scalar tensor).
        end_id: the end token.
        length_penalty: the exponent alpha of the length normalization.
        max_len: static size of the output buffers (>= max_steps); default max_steps.

    Returns:
        `(tokens (batch, max_len) int32, lengths (batch,) int32, scores (batch,))`: each
        row's best hypothesis, its length including the end token (when it has one), and
        its normalized score. Slots past the length hold `end_id`.
    """
    max_len = max_len or max_steps
    k, b = num_beams, batch_size
    end = tf.constant(end_id, tf.int32)
    alpha = tf.cast(length_penalty, tf.float32)
    # Only beam 0 is live at the start: its copies would fill the beam with duplicates.
    alive_logp = tf.tile(tf.concat([[0.0], tf.fill([k - 1], _NEG_INF)], 0)[None], [b, 1])
    alive_seq = tf.fill([b, k, max_len], end)
    fin_seq = tf.fill([b, k, max_len], end)
    fin_score = tf.fill([b, k], tf.constant(_NEG_INF, tf.float32))
    fin_len = tf.zeros([b, k], tf.int32)
    done = tf.zeros([b], tf.bool)
    tokens = tf.fill([b * k], tf.cast(start_token, tf.int32))
    rows = tf.range(b)[:, None]  # (batch, 1)

    def cond(step, tokens, state, alive_seq, alive_logp, fin_seq, fin_score, fin_len, done):
        return tf.logical_and(step < max_steps, tf.logical_not(tf.reduce_all(done)))

    def body(step, tokens, state, alive_seq, alive_logp, fin_seq, fin_score, fin_len, done):
        logits, state = step_fn(tokens, state, step)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        vocab = tf.shape(logp)[-1]
        cand = alive_logp[:, :, None] + tf.reshape(logp, [b, k, vocab])  # (batch, k, vocab)
        top_logp, top_idx = tf.math.top_k(tf.reshape(cand, [b, k * vocab]), 2 * k)
        src_beam, token = top_idx // vocab, top_idx % vocab  # (batch, 2k)
        seqs = tf.gather(alive_seq, src_beam, batch_dims=1)  # (batch, 2k, max_len)
        at_step = tf.one_hot(step, max_len, on_value=True, off_value=False, dtype=tf.bool)
        seqs = tf.where(at_step[None, None, :], token[:, :, None], seqs)
        is_end = tf.equal(token, end)
        length = step + 1
        # Finished: ends with the end token and ranks among the first k (HF's rule).
        rank_ok = tf.range(2 * k)[None, :] < k
        real = top_logp > _NEG_INF / 2  # not a continuation of an empty start beam
        new_fin = tf.logical_and(tf.logical_and(is_end, rank_ok),
                                 tf.logical_and(real, tf.logical_not(done)[:, None]))
        new_score = tf.where(new_fin, top_logp / _length_penalty(length, alpha), _NEG_INF)
        all_score = tf.concat([fin_score, new_score], 1)  # (batch, 3k)
        all_seq = tf.concat([fin_seq, seqs], 1)
        all_len = tf.concat([fin_len, tf.fill(tf.shape(new_score), length)], 1)
        fin_score, keep = tf.math.top_k(all_score, k)
        fin_seq = tf.gather(all_seq, keep, batch_dims=1)
        fin_len = tf.gather(all_len, keep, batch_dims=1)
        # Live: the best k continuations that do not end.
        live_logp = tf.where(is_end, _NEG_INF, top_logp)
        alive_logp, pick = tf.math.top_k(live_logp, k)  # (batch, k)
        alive_seq = tf.gather(seqs, pick, batch_dims=1)
        beam_from = tf.gather(src_beam, pick, batch_dims=1)  # (batch, k)
        flat = tf.reshape(rows * k + beam_from, [-1])  # (batch*k,)
        state = tf.nest.map_structure(lambda x: tf.gather(x, flat), state)
        tokens = tf.reshape(tf.gather(token, pick, batch_dims=1), [-1])
        # Done: k finished, and the best live beam cannot beat the worst of them.
        full = tf.reduce_all(fin_score > _NEG_INF / 2, axis=1)
        best_live = alive_logp[:, 0] / _length_penalty(length, alpha)
        done = tf.logical_or(done, tf.logical_and(full, fin_score[:, -1] >= best_live))
        return step + 1, tokens, state, alive_seq, alive_logp, fin_seq, fin_score, fin_len, done

    step, _, _, alive_seq, alive_logp, fin_seq, fin_score, fin_len, done = tf.while_loop(
        cond, body, (tf.constant(0), tokens, state, alive_seq, alive_logp, fin_seq, fin_score,
                     fin_len, done), maximum_iterations=max_len)
    # Rows still live at the limit: their live beams compete with the finished ones.
    live_score = tf.where(done[:, None], _NEG_INF,
                          alive_logp / _length_penalty(tf.maximum(step, 1), alpha))
    live_score = tf.where(alive_logp > _NEG_INF / 2, live_score, _NEG_INF)
    all_score = tf.concat([fin_score, live_score], 1)
    all_seq = tf.concat([fin_seq, alive_seq], 1)
    all_len = tf.concat([fin_len, tf.fill(tf.shape(live_score), step)], 1)
    best = tf.argmax(all_score, axis=1, output_type=tf.int32)
    return (tf.gather(all_seq, best, batch_dims=1), tf.gather(all_len, best, batch_dims=1),
            tf.gather(all_score, best, batch_dims=1))
