"""Samplers and the cached decoding loop: graph-only, from token ids to token ids.

Prompts are left-padded to a common length so that every row writes its next token into
the same KV-cache slot (one dynamic-update-slice per layer and step, the write the
on-device runtime also uses); each row gets its own position ids and a slot mask that
hides its padding. The prompt is processed in one prefill call, then a `tf.while_loop`
decodes one token per step until every row has stopped or `max_new_tokens` is reached.

Every argument that may change between calls is a tensor, so one traced (XLA-compiled)
function serves each (batch bucket, prompt bucket) pair and is never retraced. The
functions a server's continuous batching runs on prompts of any number and length
(`prefill`, `prefill_rows`) are plain graphs of unknown shape instead, traced once.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import weakref
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tfllm.errors import TfllmError

_NEG_INF = -1e9
_MIN_PROMPT_BUCKET = 8


class GenerationError(TfllmError, ValueError):
    """Bad generation arguments (the message names the value and its limit)."""


def fits(prompt_tokens, max_new_tokens, max_len):
    """Whether a prompt of `prompt_tokens` tokens and `max_new_tokens` new ones fit a
    context of `max_len` tokens: the one rule of every generation path (Python ints here,
    int32 tensors in the exported graphs, where subtracting keeps a huge `max_new_tokens`
    from wrapping around).

    Example:
        >>> fits(30, 2, 32), fits(31, 2, 32)
        (True, False)
    """
    return max_new_tokens <= max_len - prompt_tokens


def prompt_room(max_len, max_new_tokens):
    """How many prompt tokens fit beside `max_new_tokens` new ones (see `fits`)."""
    return max_len - max_new_tokens


def new_token_room(max_len, prompt_tokens):
    """How many new tokens fit after a prompt of `prompt_tokens` tokens (see `fits`)."""
    return max_len - prompt_tokens


def check_fits(prompt_tokens: int, max_new_tokens: int, max_len: int,
               option: str = "max_new_tokens", also: str = "") -> None:
    """GenerationError unless a prompt of `prompt_tokens` tokens (at least one, BOS) and
    `max_new_tokens` new ones fit a context of `max_len` tokens; the message names the
    numbers and the fixes (`option`: the argument's name for the caller, `also`: a further
    fix, e.g. " or pass --truncate left")."""
    if not fits(1, max_new_tokens, max_len):
        raise GenerationError(f"{option} {max_new_tokens} leaves no room for a prompt in the "
                              f"model's context of {max_len} tokens; give at most "
                              f"{max_len - 1}")
    if not fits(prompt_tokens, max_new_tokens, max_len):
        lower = (f"lower {option} to {max_len - prompt_tokens}, "
                 if prompt_tokens < max_len else "")
        raise GenerationError(f"prompt length {prompt_tokens} + {max_new_tokens} new tokens "
                              f"exceeds the model's context of {max_len} tokens; {lower}"
                              f"shorten the prompt to {prompt_room(max_len, max_new_tokens)} "
                              f"tokens{also}")


# -- samplers -------------------------------------------------------------------------------

def filter_top_k(logits, top_k):
    """Keep each row's `top_k` largest logits (others -> -inf); `top_k <= 0` keeps all.

    Args:
        logits: float (batch, vocab).
        top_k: int (batch,).
    """
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_desc = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth = tf.gather(sorted_desc, k - 1, axis=-1, batch_dims=1)[:, None]
    return tf.where(logits >= kth, logits, _NEG_INF)


def filter_top_p(logits, top_p):
    """Nucleus filter: keep the smallest set of tokens whose probability reaches `top_p`.

    The most likely token is always kept; `top_p >= 1` keeps all.

    Args:
        logits: float (batch, vocab).
        top_p: float (batch,) in (0, 1].
    """
    sorted_desc = tf.sort(logits, axis=-1, direction="DESCENDING")
    probs = tf.nn.softmax(sorted_desc, axis=-1)
    # Mass strictly before each sorted token: keep it while that mass is below top_p.
    before = tf.cumsum(probs, axis=-1, exclusive=True)
    keep = before < top_p[:, None]
    # The smallest kept logit is the row's threshold; never above the top logit (a top_p
    # that underflows to 0 in float32, 1e-300 from a request, keeps no token otherwise).
    threshold = tf.minimum(
        tf.reduce_min(tf.where(keep, sorted_desc, np.float32(np.inf)), axis=-1),
        sorted_desc[:, 0])
    filtered = tf.where(logits >= threshold[:, None], logits, _NEG_INF)
    return tf.where((top_p >= 1.0)[:, None], logits, filtered)


def _hash32(x):
    """lowbias32 (C. Wellons): a well-mixed uint32 -> uint32 hash from plain integer ops."""
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
        x = x * tf.constant(mult, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _row_uniform(seeds, step, vocab):
    """Uniform noise (batch, vocab) in (0, 1), row b a pure function of (seeds[b], step)
    (`step`: a scalar, or one per row).

    Integer hashing, not tf.random's stateless ops: those draw other numbers under XLA than
    in TensorFlow's kernels (whatever `alg`), so one seed sampled different tokens in the
    XLA loop, a --no-jit SavedModel and the TFLite runner. These ops agree everywhere.
    """
    row = _hash32(tf.cast(seeds, tf.uint32)[:, None])  # (batch, 1)
    row = _hash32(row + tf.reshape(tf.cast(step, tf.uint32), [-1, 1]))
    x = _hash32(row + tf.cast(tf.range(vocab), tf.uint32)[None, :])  # (batch, vocab)
    # The top 24 bits, centred in their interval: exact in float32, never 0 or 1.
    return (tf.cast(tf.bitwise.right_shift(x, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))


def row_seeds(seed, rows):
    """Per-row sampling seeds, int32 (rows,): row r of a batch generated with `seed`.

    `seed=None` draws one at random. `row_sampler` uses the same rule for its one row,
    so a seeded run in the TFLite and ONNX runners samples what `CausalLM.generate` samples.
    """
    base = seed if seed is not None else np.random.randint(0, 2**31 - 1)
    return ((base + np.arange(rows, dtype=np.int64) * 1_000_003) % (2**31 - 1)).astype(np.int32)


def sample_next(logits, temperature, top_k, top_p, seeds, step):
    """Next token per row: greedy where temperature == 0, else top-k/top-p sampling.

    A pure function of its arguments: a row's choice depends only on its own logits,
    parameters, seed and the step, never on the other rows of the batch.

    Args:
        logits: float (batch, vocab).
        temperature: float (batch,); 0 means greedy.
        top_k: int (batch,); <= 0 disables.
        top_p: float (batch,); 1.0 disables.
        seeds: int (batch,) per-row seeds.
        step: int scalar or (batch,): the row's decoding step, its index among its own
            new tokens (varies the noise between steps).

    Returns:
        int32 (batch,).
    """
    logits = tf.cast(logits, tf.float32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled():
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        scaled = filter_top_p(filter_top_k(scaled, top_k), top_p)
        # Gumbel-max: argmax(logits + Gumbel noise) samples softmax(logits).
        u = _row_uniform(tf.cast(seeds, tf.int32), tf.cast(step, tf.int32),
                         tf.shape(logits)[-1])
        choice = tf.argmax(scaled - tf.math.log(-tf.math.log(u)), axis=-1,
                           output_type=tf.int32)
        return tf.where(temperature > 0, choice, greedy)

    # All-greedy batches (the default) skip the sort and the noise entirely.
    return tf.cond(tf.reduce_any(temperature > 0), sampled, lambda: greedy)


def constrain_logits(logits, fsm, constraint, end_ids):
    """`logits` (batch, vocab) with every token the rows' automaton states `fsm` (batch,)
    do not allow set to -inf (end tokens only in final states): see
    `tfllm.models.token_automaton`."""
    logits = tf.cast(logits, tf.float32)
    vocab = tf.shape(logits)[-1]
    ids = tf.range(vocab)
    words = tf.gather(constraint["allowed"], fsm)  # (batch, ceil(vocab / 32))
    bits = tf.bitwise.right_shift(tf.gather(words, ids // 32, axis=1), ids % 32)
    ok = tf.equal(tf.bitwise.bitwise_and(bits, 1), 1)  # (batch, vocab)
    is_end = tf.reduce_any(tf.equal(ids[:, None], tf.constant(end_ids, tf.int32)[None]), 1)
    ok = tf.logical_or(ok, tf.logical_and(is_end[None, :],
                                          tf.gather(constraint["final"], fsm)[:, None]))
    return tf.where(ok, logits, tf.constant(-np.inf, tf.float32))


def follow_constraint(token, fsm, remaining, constraint, vocab):
    """(token, next states) after the rows chose `token` in states `fsm`: a choice whose
    shortest completion would not fit the `remaining` budget (tokens, this one included)
    becomes the state's `closer`, so every row ends in a complete match."""

    def lookup(tok):
        key = tf.cast(fsm, tf.int64) * tf.cast(vocab, tf.int64) + tf.cast(tok, tf.int64)
        keys = constraint["keys"]
        at = tf.searchsorted(keys[None, :], key[None, :])[0]
        at = tf.minimum(at, tf.shape(keys, out_type=at.dtype)[0] - 1)
        found = tf.equal(tf.gather(keys, at), key)
        return tf.where(found, tf.gather(constraint["targets"], at), fsm), found

    nxt, found = lookup(token)
    fits_budget = tf.gather(constraint["distance"], nxt) <= remaining - 1
    ends = tf.reduce_any(tf.equal(token[:, None], constraint["end_ids"][None, :]), axis=1)
    # An end token where a match is complete, or an allowed token that can still finish.
    keep = tf.logical_or(tf.logical_and(found, fits_budget),
                         tf.logical_and(ends, tf.gather(constraint["final"], fsm)))
    token = tf.where(keep, token, tf.gather(constraint["closer"], fsm))
    nxt = tf.where(keep, nxt, lookup(token)[0])
    return token, nxt


# -- the decoding loop ----------------------------------------------------------------------

def row_sampler(params: "GenerationParams"):
    """`sample(logits, step) -> token` for one row: `CausalLM.generate`'s draw for row 0.

    For runners that decode one sequence outside TensorFlow (the TFLite and ONNX runners):
    fed the same logits, a seeded sampler picks the tokens `CausalLM.generate(..., seed=)`
    picks. Greedy (argmax) when `params.temperature` is 0.

    Args:
        params: a `GenerationParams` (temperature, top_k, top_p, seed are used).

    Example:
        >>> sample = row_sampler(GenerationParams(8, temperature=0.8, top_k=5, seed=1))
        >>> token = sample(np.zeros(65, np.float32), 0)
    """
    if params.temperature <= 0:
        return lambda logits, step: int(np.argmax(logits))
    args = dict(temperature=tf.constant([params.temperature], tf.float32),
                top_k=tf.constant([params.top_k or 0], tf.int32),
                top_p=tf.constant([params.top_p or 1.0], tf.float32),
                seeds=tf.constant(row_seeds(params.seed, 1)))

    def sample(logits, step):
        return int(sample_next(tf.constant(np.asarray(logits, np.float32)[None]),
                               step=tf.constant(step), **args).numpy()[0])
    return sample


def _bucket(n, minimum, maximum):
    b = minimum
    while b < n:
        b *= 2
    return min(b, maximum)


@dataclasses.dataclass
class GenerationParams:
    """Validated per-call sampling parameters."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_at_end: bool = True

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be a positive integer, "
                                  f"got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float, np.number)) or \
                not math.isfinite(self.temperature) or self.temperature < 0:
            raise GenerationError(f"temperature must be a finite number >= 0 (0 = greedy), "
                                  f"got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, (int, np.integer)) or
                                       self.top_k < 1):
            raise GenerationError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p!r}")


class Generator:
    """Cached, XLA-compiled generation for a `CausalLM` (token ids in, token ids out).

    Args:
        model: a `CausalLM`.
        end_token_id: the token that ends a row (the tokenizer's EOS), or a list of them
            (every one ends a row; the first fills finished rows).
        jit_compile: compile the loop with XLA (measured faster on CPU).

    Example:
        >>> gen = Generator(lm, end_token_id=3)  # doctest: +SKIP
        >>> ids, n = gen.generate_ids([[5, 6, 7]], GenerationParams(max_new_tokens=20))  # doctest: +SKIP
    """

    def __init__(self, model, end_token_id, jit_compile: bool = True):
        self.model = model
        ids = [end_token_id] if isinstance(end_token_id, (int, np.integer)) else end_token_id
        # Every id that ends a row (a checkpoint may list several: Llama 3's <|eot_id|> and
        # <|end_of_text|>); the first also fills finished rows.
        self.end_token_ids = tuple(int(i) for i in ids)
        self.end_token_id = self.end_token_ids[0]
        self.max_len = int(model.backbone.max_len)
        self.jit_compile = jit_compile
        self._generate = tf.function(self._generate_graph, jit_compile=jit_compile,
                                     reduce_retracing=False)
        self._generate_constrained = tf.function(self._constrained_graph,
                                                 jit_compile=jit_compile)
        self._prefill = tf.function(self._prefill_graph, jit_compile=jit_compile)
        self._decode = tf.function(self._decode_graph, jit_compile=jit_compile)
        # The joining path's functions (`prefill`, `prefill_rows`), traced once with
        # unknown rows and slots: a server's prompts come in any number and length, and
        # an XLA function compiles once per shape (4-6 s each for SmolLM2-135M on 2
        # cores, a stall in some request's first token), while one graph serves every
        # shape, 5-35% slower than XLA for that shape (benchmarks/README). Built on first
        # use: their signatures follow the model's caches.
        self._joining = None

    # The graph functions. Shapes: ids (batch, P) left-padded, lengths (batch,).
    def _prefill_graph(self, ids, lengths):
        batch, prompt_len = tf.shape(ids)[0], tf.shape(ids)[1]
        pad = prompt_len - lengths  # (batch,) leading pad slots per row
        slots = tf.range(self.max_len)[None, :]
        valid = slots >= pad[:, None]  # (batch, max_len): a row's pad slots stay hidden
        positions = tf.maximum(tf.range(prompt_len)[None, :] - pad[:, None], 0)
        caches = self.model.backbone.empty_caches(batch, dtype=self.model.backbone.compute_dtype)
        logits, caches = self.model.call_with_cache(ids, caches, 0, padding_mask=valid,
                                                    positions=positions, last_only=True)
        return logits[:, -1, :], caches, valid, pad

    def _decode_graph(self, logits, caches, valid, pad, slot, step, max_new, done, out,
                      n_gen, temperature, top_k, top_p, seeds, stop_at_end, n_steps,
                      constraint=None, fsm=None):
        """Run up to `n_steps` decoding steps from the state; returns the new state.

        `max_new` is a scalar or per-row (batch,) budget; a row is done when it has used
        its budget or (with `stop_at_end`) emitted the end token. With a `constraint` (the
        arrays of a `TokenAutomaton`), `fsm` (batch,) holds each row's automaton state,
        the last element of the returned state.
        """
        end = tf.constant(self.end_token_id, tf.int32)
        ends = tf.constant(self.end_token_ids, tf.int32)
        max_new = tf.broadcast_to(max_new, tf.shape(done))
        stop_step = tf.minimum(step + n_steps, tf.reduce_max(max_new))

        def cond(logits, caches, slot, step, done, out, n_gen, fsm):
            return tf.logical_and(step < stop_step, tf.logical_not(tf.reduce_all(done)))

        def body(logits, caches, slot, step, done, out, n_gen, fsm):
            if constraint is not None:
                logits = constrain_logits(logits, fsm, constraint, self.end_token_ids)
            # Each row's noise follows its own token count (equal to `step` for a row
            # that started with the loop), so a row that joins a running loop
            # (`DecodeBatch`) samples what it samples alone.
            token = sample_next(logits, temperature, top_k, top_p, seeds, n_gen)
            if constraint is not None:
                token, fsm = follow_constraint(token, fsm, max_new - n_gen, constraint,
                                               tf.shape(logits)[-1])
            token = tf.where(done, end, token)
            out = tf.tensor_scatter_nd_update(
                out, tf.stack([tf.range(tf.shape(out)[0]), tf.fill(tf.shape(done), step)], 1),
                token)
            n_gen = n_gen + tf.cast(tf.logical_not(done), tf.int32)
            done = tf.logical_or(done, tf.logical_and(
                stop_at_end, tf.reduce_any(tf.equal(token[:, None], ends[None, :]), axis=1)))
            done = tf.logical_or(done, n_gen >= max_new)
            positions = (slot - pad)[:, None]  # (batch, 1)
            new_logits, caches = self.model.call_with_cache(token[:, None], caches, slot,
                                                            padding_mask=valid,
                                                            positions=positions)
            return new_logits[:, -1, :], caches, slot + 1, step + 1, done, out, n_gen, fsm

        if fsm is None:  # unconstrained: a placeholder the loop carries unchanged
            fsm = tf.zeros_like(n_gen)
        logits, caches, slot, step, done, out, n_gen, fsm = tf.while_loop(
            cond, body, (logits, caches, slot, step, done, out, n_gen, fsm),
            maximum_iterations=self.max_len)
        state = (logits, caches, slot, step, done, out, n_gen)
        return state + (fsm,) if constraint is not None else state

    def _generate_graph(self, ids, lengths, max_new, temperature, top_k, top_p, seeds,
                        stop_at_end):
        return self._prefill_and_decode(ids, lengths, max_new, temperature, top_k, top_p,
                                        seeds, stop_at_end)

    def _constrained_graph(self, ids, lengths, max_new, temperature, top_k, top_p, seeds,
                           constraint):
        """`_generate_graph` following a token automaton from its initial state (every
        row's output matches it; the rows stop at its end)."""
        return self._prefill_and_decode(ids, lengths, max_new, temperature, top_k, top_p,
                                        seeds, tf.constant(True), constraint)

    def _prefill_and_decode(self, ids, lengths, max_new, temperature, top_k, top_p, seeds,
                            stop_at_end, constraint=None):
        """(out (batch, max_len), n_gen (batch,)) of the whole loop; with a `constraint`,
        every row starts in its `initial` state (a scalar, or one state per row)."""
        logits, caches, valid, pad = self._prefill_graph(ids, lengths)
        batch = tf.shape(ids)[0]
        out = tf.fill([batch, self.max_len], tf.constant(self.end_token_id, tf.int32))
        fsm = None if constraint is None else \
            tf.broadcast_to(constraint["initial"], [batch])
        state = self._decode_graph(
            logits, caches, valid, pad, tf.shape(ids)[1], tf.constant(0), max_new,
            tf.zeros([batch], tf.bool), out, tf.zeros([batch], tf.int32), temperature, top_k,
            top_p, seeds, stop_at_end, tf.reduce_max(max_new), constraint, fsm)
        return state[5], state[6]

    def graph_generate(self, ids, lengths, max_new, temperature, top_k, top_p, seeds,
                       constraint=None):
        """The whole decoding loop on tensors, for graphs that embed it (the SavedModel
        signatures): `(out (batch, max_len), n_gen (batch,))` after left-padded prompts
        `ids` (batch, P) of `lengths`, rows stopping at an end token; `constraint`: the
        tensors of a token automaton (`constraint_tensors`) every row follows."""
        if constraint is None:
            return self._generate(ids, lengths, max_new, temperature, top_k, top_p, seeds,
                                  tf.constant(True))
        return self._generate_constrained(ids, lengths, max_new, temperature, top_k, top_p,
                                          seeds, constraint)

    # -- host side ----------------------------------------------------------------------
    def _pack(self, prompts: Sequence[Sequence[int]], params: GenerationParams):
        if len(prompts) == 0:
            raise GenerationError("no prompts given")
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        if min(lengths) < 1:
            raise GenerationError("empty prompt: give at least one token (e.g. BOS)")
        prompt_len = self.prompt_bucket(longest, params.max_new_tokens)
        batch = 1 << (len(prompts) - 1).bit_length()  # batch bucket: next power of two
        ids = np.zeros((batch, prompt_len), np.int32)
        lens = np.ones((batch,), np.int32)
        for i, p in enumerate(prompts):
            ids[i, prompt_len - len(p):] = p
            lens[i] = len(p)
        for i in range(len(prompts), batch):  # filler rows: copies of row 0
            ids[i], lens[i] = ids[0], lens[0]
        args = dict(
            max_new=tf.constant(params.max_new_tokens, tf.int32),
            temperature=tf.fill([batch], tf.constant(float(params.temperature), tf.float32)),
            top_k=tf.fill([batch], tf.constant(int(params.top_k or 0), tf.int32)),
            top_p=tf.fill([batch], tf.constant(float(params.top_p or 1.0), tf.float32)),
            seeds=tf.constant(row_seeds(params.seed, batch)),
            stop_at_end=tf.constant(bool(params.stop_at_end)),
        )
        return tf.constant(ids), tf.constant(lens), args

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: GenerationParams,
                     constraint=None):
        """Generate for token-id prompts; returns a list of generated-id lists (no prompt).

        With `stop_at_end`, a row's list ends before its end token. `constraint`: a
        `TokenAutomaton` every row's output must match (its end stops the row).
        """
        ids, lens, args = self._pack(prompts, params)
        if constraint is None:
            out, n_gen = self._generate(ids, lens, **args)
        else:
            check_constraint(constraint, params)
            args.pop("stop_at_end")
            rows = np.ndim(constraint.initial) and len(constraint.initial)
            if rows and rows != len(prompts):
                raise GenerationError(f"{rows} per-row constraints for {len(prompts)} prompts")
            out, n_gen = self._generate_constrained(
                ids, lens, **args, constraint=constraint_tensors(constraint, ids.shape[0]))
        out, n_gen = out.numpy(), n_gen.numpy()
        results = []
        for i in range(len(prompts)):
            row = out[i, :n_gen[i]].tolist()
            if params.stop_at_end and row and row[-1] in self.end_token_ids:
                row = row[:-1]
            results.append(row)
        return results

    def stream_ids(self, prompt: Sequence[int], params: GenerationParams,
                   chunk: int = 4, constraint=None,
                   first_chunk: int | None = None) -> Iterator[list[int]]:
        """Generate for one prompt, yielding new token ids `chunk` at a time (`constraint`:
        a `TokenAutomaton` the output must match, as in `generate_ids`; `first_chunk`: the
        size of the first, e.g. 1 for the shortest time to the first token)."""
        for rows, _ in self.stream_rows([prompt], [params], chunk, constraint, first_chunk):
            if rows[0]:
                yield rows[0]

    def stream_rows(self, prompts: Sequence[Sequence[int]], params: Sequence[GenerationParams],
                    chunk: int = 4, constraint=None, first_chunk: int | None = None):
        """Generate for several prompts in one decoding loop, each row with its own
        sampling and budget (`params`, one per prompt; `stop_at_end` is one flag of the
        loop, so all rows must agree on it), yielding per chunk `(new ids, finished)`: a list
        per prompt of its new token ids (the end token left out) and whether it is done.
        A row samples what `stream_ids` samples for it alone (its own seeds).

        Example:
            >>> for new, done in gen.stream_rows([a, b], [p, p]): ...  # doctest: +SKIP
        """
        n = len(prompts)
        if len(params) != n:
            raise GenerationError(f"{len(params)} parameter sets for {n} prompts")
        if len({bool(p.stop_at_end) for p in params}) > 1:
            raise GenerationError("rows of one loop share stop_at_end: give every row the "
                                  "same value, or decode them in separate calls")
        budget = max(p.max_new_tokens for p in params)
        ids, lens, args = self._pack(prompts, dataclasses.replace(params[0],
                                                                  max_new_tokens=budget))
        batch = ids.shape[0]
        rows = list(params) + [params[0]] * (batch - n)  # filler rows: row 0's
        args.update(
            max_new=tf.constant([p.max_new_tokens for p in rows], tf.int32),
            temperature=tf.constant([float(p.temperature) for p in rows], tf.float32),
            top_k=tf.constant([int(p.top_k or 0) for p in rows], tf.int32),
            top_p=tf.constant([float(p.top_p or 1.0) for p in rows], tf.float32),
            seeds=tf.constant([row_seeds(p.seed, 1)[0] for p in rows], tf.int32))
        logits, caches, valid, pad = self._prefill(ids, lens)
        state = (logits, caches, tf.constant(ids.shape[1]), tf.constant(0),
                 tf.zeros([batch], tf.bool),
                 tf.fill([batch, self.max_len], tf.constant(self.end_token_id, tf.int32)),
                 tf.zeros([batch], tf.int32))
        follow = {}
        if constraint is not None:
            for p in params:
                check_constraint(constraint, p)
            follow = {"constraint": constraint_tensors(constraint, batch)}
            state += (tf.broadcast_to(follow["constraint"]["initial"], [batch]),)
        emitted, steps = [0] * n, first_chunk or chunk
        stop_at_end = params[0].stop_at_end
        while True:
            logits, caches, slot, step, done, out, n_gen = state[:7]
            if constraint is not None:
                follow["fsm"] = state[7]
            state = self._decode(logits, caches, valid, pad, slot, step, args["max_new"], done,
                                 out, n_gen, args["temperature"], args["top_k"], args["top_p"],
                                 args["seeds"], args["stop_at_end"], tf.constant(steps),
                                 **follow)
            steps = chunk
            counts, done = state[6].numpy()[:n], state[4].numpy()[:n]
            out = state[5].numpy()
            news = []
            for r in range(n):
                new = out[r, emitted[r]:counts[r]].tolist()
                if stop_at_end and new and new[-1] in self.end_token_ids:
                    new = new[:-1]
                news.append(new)
                emitted[r] = int(counts[r])
            finished = [bool(d) or int(c) >= p.max_new_tokens
                        for d, c, p in zip(done, counts, params)]
            yield news, finished
            if all(finished) or int(state[3]) >= budget:
                return

    def prompt_bucket(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """The slots a prompt is left-padded to in the compiled loop: buckets bound the
        number of compiled shapes, and the bucket must leave room for the new tokens."""
        check_fits(prompt_tokens, max_new_tokens, self.max_len)
        return max(prompt_tokens, min(_bucket(prompt_tokens, _MIN_PROMPT_BUCKET, self.max_len),
                                      prompt_room(self.max_len, max_new_tokens)))

    # -- for loops that rows join (`tfllm.models.decode_batch.DecodeBatch`) -------------
    def _joining_functions(self):
        """(prefill, prefill_tail): graph functions of any rows and slots."""
        if self._joining is None:
            ids, rows = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)
            self._joining = (
                tf.function(self._prefill_graph, input_signature=[ids, rows]),
                tf.function(self._prefill_tail_graph, input_signature=[
                    ids, cache_signature(self.model.backbone, True), rows, rows,
                    tf.TensorSpec([], tf.int32)]))
        return self._joining

    def prefill(self, prompts: Sequence[Sequence[int]], prompt_len: int):
        """`(logits (batch, vocab), caches)` after prompts left-padded to `prompt_len`
        slots (the prefill `generate_ids` runs, in a graph of any shape)."""
        ids = np.zeros((len(prompts), prompt_len), np.int32)
        for i, p in enumerate(prompts):
            ids[i, prompt_len - len(p):] = p
        logits, caches, _, _ = self._joining_functions()[0](
            tf.constant(ids), tf.constant([len(p) for p in prompts], tf.int32))
        return logits, caches

    def _prefill_tail_graph(self, ids, prefix, shifts, pad, offset):
        """The slots from `offset` of a prefill whose earlier slots are `prefix`'s (caches
        cut to their first slots, row r's moved `shifts[r]` slots later): rows left-padded
        (`pad` slots each), all ending at the same slot."""
        caches = [tuple(widen_cache(x, self.max_len, shifts) for x in kv) for kv in prefix]
        slots = offset + tf.range(tf.shape(ids)[1])[None, :]  # (1, count)
        positions = tf.maximum(slots - pad[:, None], 0)  # (batch, count)
        valid = tf.range(self.max_len)[None, :] >= pad[:, None]  # (batch, max_len)
        logits, caches = self.model.call_with_cache(ids, caches, offset, padding_mask=valid,
                                                    positions=positions, last_only=True)
        return logits[:, -1, :], caches

    def prefill_rows(self, prompts: Sequence[Sequence[int]], prompt_len: int, prefixes,
                     count: int):
        """`(logits (batch, vocab), caches)` after prompts left-padded to `prompt_len`
        slots, as `prefill` gives them (to rounding), computing only the last `count`
        slots: a row's earlier slots come from `prefixes[r]`, `(caches, pad)` of an
        earlier prompt that began with the same tokens (its batch-1 caches cut to its
        own slots, where it began at slot `pad`; they must cover the row's slots up to
        the last `count`). Only for models without ring caches (a ring may have dropped
        the shared tokens).

        Example:
            >>> logits, caches = gen.prefill_rows([ids], 64, [(kept, 20)], 16)  # doctest: +SKIP
        """
        if count >= prompt_len:
            return self.prefill(prompts, prompt_len)
        backbone = self.model.backbone
        if min(backbone.cache_lengths()) < self.max_len:
            raise GenerationError("prefill_rows with prefixes needs full-length caches "
                                  "(this model keeps rings)")
        start = prompt_len - count  # the first slot computed
        ids = np.zeros((len(prompts), count), np.int32)
        pads = np.array([prompt_len - len(p) for p in prompts], np.int32)
        shifts = np.zeros((len(prompts),), np.int32)
        sources, which = [], []  # the distinct prefixes (usually one), each row's
        for r, (prompt, (caches, pad)) in enumerate(zip(prompts, prefixes)):
            tail = list(prompt)[max(0, start - int(pads[r])):]  # its tokens in slots start..
            ids[r, count - len(tail):] = tail
            if not any(caches is s for s in sources):
                sources.append(caches)
            which.append(next(i for i, s in enumerate(sources) if s is caches))
            shifts[r] = int(pads[r]) - pad
        # (rows, kv_heads, the longest prefix's slots, head_dim) per layer.
        width = max(s[0][0].shape[2] for s in sources)
        stacked = []
        for i in range(len(sources[0])):
            layer = []
            for j in (0, 1):
                parts = [s[i][j] if s[i][j].shape[2] == width else tf.pad(
                    s[i][j], [[0, 0], [0, 0], [0, width - s[i][j].shape[2]], [0, 0]])
                    for s in sources]
                layer.append(tf.gather(tf.concat(parts, 0) if len(parts) > 1 else parts[0],
                                       which))
            stacked.append(tuple(layer))
        return self._joining_functions()[1](tf.constant(ids), stacked, tf.constant(shifts),
                                            tf.constant(pads), tf.constant(start, tf.int32))

    def decode_steps(self, logits, caches, pad, slot, max_new, done, n_gen, temperature,
                     top_k, top_p, seeds, n_steps, stop_at_end=True):
        """Up to `n_steps` steps of the compiled decoding loop on a batch's state, every
        row writing at `slot` (its positions: `slot - pad`; slots before `pad` hidden).
        Per-row arrays: `pad`, `max_new` (budget), `done`, `n_gen` (tokens so far),
        sampling. Returns `(logits, caches, slot', new (batch, n) ids: row r's tokens of
        these steps in its first `n_gen' - n_gen` columns, n_gen', done')`."""
        batch = len(pad)
        pad = tf.constant(pad, tf.int32)
        valid = tf.range(self.max_len)[None, :] >= pad[:, None]  # (batch, max_len)
        state = self._decode(
            logits, caches, valid, pad, tf.constant(slot, tf.int32), tf.constant(0),
            tf.constant(max_new, tf.int32), tf.constant(done, tf.bool),
            tf.fill([batch, self.max_len], tf.constant(self.end_token_id, tf.int32)),
            tf.constant(n_gen, tf.int32), tf.constant(temperature, tf.float32),
            tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32),
            tf.constant(seeds, tf.int32), tf.constant(bool(stop_at_end)),
            tf.constant(n_steps))
        logits, caches, slot, _, done, out, n_gen = state
        return (logits, caches, int(slot), out.numpy()[:, :n_steps], n_gen.numpy(),
                done.numpy())

    def tracing_count(self) -> int:
        """How many times the whole-generation function has been traced (for tests)."""
        return self._generate.experimental_get_tracing_count()

    def joining_traces(self) -> int:
        """Traces of what `DecodeBatch` runs: the XLA decoding loop (one per batch size,
        each a compile) and the joining path's graphs (for tests)."""
        return self._decode.experimental_get_tracing_count() + sum(
            f.experimental_get_tracing_count() for f in self._joining or ())


def check_constraint(constraint, params: GenerationParams) -> None:
    """GenerationError unless a `TokenAutomaton`'s shortest output fits the parameters'
    max_new_tokens (and rows stop at its end)."""
    need = constraint.shortest_completion()
    if need > params.max_new_tokens:
        raise GenerationError(
            f"the shortest output the constraint allows takes {need} tokens (its end token "
            f"included); max_new_tokens is {params.max_new_tokens}")
    if params.stop_at_end is False:
        raise GenerationError("a constraint ends rows at its end: stop_at_end must stay True")


def generate(model, prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None,
             seed=None, stop_at_end=True, return_ids=False, truncate="error",
             json_schema=None, regex=None):
    """Generate text from string (or token-id) prompts with a trained `CausalLM`.

    Args:
        model: a `CausalLM` with a tokenizer attached (`tfllm.load` attaches it).
        prompts: a string, a list of strings, or a list of token-id lists.
        max_new_tokens: tokens to generate per prompt at most.
        temperature: 0 for greedy (the default), > 0 to sample.
        top_k: sample among the k most likely tokens.
        top_p: sample from the smallest set of tokens with probability >= top_p.
        seed: makes sampling reproducible.
        stop_at_end: stop a row at the tokenizer's end token.
        return_ids: also return the generated ids.
        truncate: "error" (prompt + max_new_tokens must fit the context) or "left"
            (keep the prompt's last tokens that fit).
        json_schema: a JSON schema (dict or JSON text): every output is JSON valid under
            it, complete within max_new_tokens (`tfllm.models.token_automaton`); or a list
            of them, one per prompt.
        regex: a regular expression every output matches in full (not with json_schema);
            or a list, one per prompt.

    Returns:
        The generated continuations (strings, without the prompt); a single string for a
        single string prompt. With `return_ids`, `(texts, ids)`.
    """
    params = GenerationParams(max_new_tokens, temperature, top_k, top_p, seed, stop_at_end)
    tokenizer = getattr(model, "tokenizer", None)
    single = isinstance(prompts, str)
    if single:
        prompts = [prompts]
    if prompts and isinstance(prompts[0], str):
        if tokenizer is None:
            raise GenerationError("string prompts need a tokenizer: load the model with "
                                  "tfllm.load(run_dir) or pass token ids")
        id_prompts = [encode_prompt(tokenizer, p) for p in prompts]
    else:
        id_prompts = [list(map(int, p)) for p in prompts]
    gen = get_generator(model)
    check_fits(1, params.max_new_tokens, gen.max_len)
    if truncate == "left":
        id_prompts = [p[-prompt_room(gen.max_len, params.max_new_tokens):] for p in id_prompts]
    elif truncate != "error":
        raise GenerationError(f"truncate must be 'error' or 'left', got {truncate!r}")
    ids = gen.generate_ids(id_prompts, params, constraint_of(model, json_schema, regex))
    texts = [tokenizer.decode(r) for r in ids] if tokenizer is not None else None
    if single and texts is not None:
        texts = texts[0]
    if return_ids:
        return texts, ids
    return texts


# Compiled constraints kept per model (a server's clients send their own schemas): the most
# recently used, at most this many and this many bytes of automata.
CONSTRAINT_CACHE_ENTRIES = 32
CONSTRAINT_CACHE_BYTES = 1 << 30
_CONSTRAINTS = weakref.WeakKeyDictionary()  # model -> OrderedDict(key -> TokenAutomaton)
_CONSTRAINTS_LOCK = threading.Lock()


def constraint_of(model, json_schema=None, regex=None):
    """The `TokenAutomaton` of a JSON schema or a regex over `model`'s tokenizer (None for
    neither), compiled once per model and pattern while it stays among the recently used
    (`CONSTRAINT_CACHE_ENTRIES`, `CONSTRAINT_CACHE_BYTES`). A list of schemas (or regexes)
    gives one per row: their union, each row starting in its own (`TokenAutomaton.union`)."""
    from tfllm.models.token_automaton import ConstraintError, TokenAutomaton

    if json_schema is None and regex is None:
        return None
    if json_schema is not None and regex is not None:
        raise ConstraintError("give json_schema or regex, not both")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "token_bytes"):
        raise ConstraintError("constrained decoding needs the model's tokenizer: load the "
                              "model with tfllm.load(run_dir)")
    per_row = json_schema if json_schema is not None else regex
    if isinstance(per_row, (list, tuple)):
        if not per_row:
            raise ConstraintError("an empty list of per-row constraints")
        kind = "json_schema" if json_schema is not None else "regex"
        keys = [_constraint_key(**{kind: s}) for s in per_row]
        distinct = list(dict.fromkeys(keys))
        parts = [constraint_of(model, **{kind: per_row[keys.index(k)]}) for k in distinct]
        return TokenAutomaton.union(parts, [distinct.index(k) for k in keys])
    key = _constraint_key(json_schema, regex)
    with _CONSTRAINTS_LOCK:
        cache = _CONSTRAINTS.setdefault(model, collections.OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    # Compiled outside the lock: one request's long compile does not hold up another's.
    automaton = TokenAutomaton.from_regex(regex, tokenizer) if regex is not None \
        else TokenAutomaton.from_json_schema(json_schema, tokenizer)
    with _CONSTRAINTS_LOCK:
        cache[key] = automaton
        while len(cache) > 1 and (len(cache) > CONSTRAINT_CACHE_ENTRIES or sum(
                a.nbytes for a in cache.values()) > CONSTRAINT_CACHE_BYTES):
            cache.popitem(last=False)
    return automaton


def _constraint_key(json_schema=None, regex=None):
    import json

    if regex is not None:
        return ("regex", regex)
    return ("schema", json_schema if isinstance(json_schema, str)
            else json.dumps(json_schema, sort_keys=True))


def constraint_tensors(automaton, rows: int | None = None) -> dict:
    """The arrays of a `TokenAutomaton` as the tensors the decoding loop reads; per-row
    starts (`TokenAutomaton.union`) padded to `rows` with the first row's (the filler rows
    of a batch bucket copy row 0)."""
    initial = np.asarray(automaton.initial, np.int32)
    if initial.ndim and rows is not None and rows > len(initial):
        initial = np.concatenate([initial, np.full(rows - len(initial), initial[0],
                                                   np.int32)])
    return {"allowed": tf.constant(automaton.allowed), "keys": tf.constant(automaton.keys),
            "targets": tf.constant(automaton.targets), "final": tf.constant(automaton.final),
            "distance": tf.constant(automaton.distance),
            "closer": tf.constant(automaton.closer),
            "initial": tf.constant(initial),
            "end_ids": tf.constant(automaton.end_ids, tf.int32)}


def widen_cache(x, width, shift):
    """A cache (batch, kv_heads, slots, head_dim) cut to its first slots, back to `width`
    slots (zeros after) and moved `shift` slots later (one shift, or one per row); a
    ring's index i is in slot i mod its width, and moves alike."""
    x = x[:, :, :width]
    x = tf.pad(x, [[0, 0], [0, 0], [0, width - tf.shape(x)[2]], [0, 0]])
    shift = tf.broadcast_to(shift, tf.shape(x)[:1])  # (batch,)
    # Row r's slot s comes from its slot (s - shift[r]) mod width.
    source = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)
    return tf.gather(x, source, axis=2, batch_dims=1)


def cache_signature(backbone, cut: bool = False):
    """`tf.TensorSpec`s of the backbone's caches, any number of rows; `cut`: any number
    of slots too (caches cut to a prompt's slots)."""
    return [tuple(tf.TensorSpec([None, x.shape[1], None if cut else x.shape[2], x.shape[3]],
                                x.dtype) for x in kv)
            for kv in backbone.empty_caches(1, dtype=backbone.compute_dtype)]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt ids; an empty prompt starts from BOS (as the on-device runtime does)."""
    return tokenizer.encode(text) if text else [tokenizer.bos_id]


def get_generator(model) -> Generator:
    """The model's Generator, made once per model (`CausalLM.generator`)."""
    return model.generator()
