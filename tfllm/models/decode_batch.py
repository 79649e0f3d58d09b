"""A decoding loop that requests join and leave: continuous batching for servers.

`Generator.stream_rows` decodes a fixed set of rows from one prefill; a server's
requests arrive while others decode. Here a request joins the running loop between two
chunks of steps: its prompt is prefilled (with the others joining at once) and its caches
are shifted along the slot axis so that the prompt ends at the slot the loop writes
next. Every row writes into the same slot each step (the layout of `generation.py`:
left-padded rows, per-row positions and a mask hiding each row's slots before its
prompt); a shift keeps positions, which are `slot - pad`, and is exact for ring caches
too (index i moves to i + d, its ring slot to (i + d) mod ring). A prompt longer than the
loop's slot shifts the whole batch instead. A row that finishes frees its place for the
next request; the batch grows by powers of two up to `max_rows`.

Nothing here compiles while requests wait: the decoding step is XLA-compiled per batch
size by `warm_up`, and what takes a joining prompt's shape (prefills, placement) is a
graph of any shape, traced once.

Prefills are kept (the last `prefill_cache` prompts), as llama.cpp's server keeps a
slot's cache: the same prompt again costs no prefill, and a prompt that begins with a
kept one's tokens (the same system prompt, the conversation so far) computes only its
new tokens (`Generator.prefill_rows`; not for models with ring caches, whose rings may
have dropped the shared tokens).

A row's tokens are what it gets alone: its own sampling, budget and seeds (the noise
follows each row's own token count), the same prefill; only the arithmetic differs
(matmuls of another batch size; an extended prompt's new tokens computed apart).

Example:
    >>> batch = DecodeBatch(get_generator(lm))  # doctest: +SKIP
    >>> row = batch.admit(ids, GenerationParams(32))  # doctest: +SKIP
    >>> news = batch.step(4)  # {row: (new ids, finished)}  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
import tensorflow as tf

from tfllm.models.generation import (GenerationError, GenerationParams, cache_signature,
                                     check_fits, row_seeds, widen_cache)


# Shared tokens from which a kept prompt is extended rather than a prompt prefilled.
MIN_SHARED = 8


class DecodeBatch:
    """The state of a decoding loop whose rows are requests (see the module docstring).

    Args:
        generator: the model's `Generator`.
        max_rows: rows decoded at once at most.
        prefill_cache: prompts whose prefill is kept for reuse (0: none).
        prefill_cache_mb: at most this many megabytes of kept prefills.
    """

    def __init__(self, generator, max_rows: int = 8, prefill_cache: int = 16,
                 prefill_cache_mb: float = 256.0):
        self.generator = generator
        self.max_rows = int(max_rows)
        self.max_len = generator.max_len
        # ids -> (logits, caches cut to the P slots of its prefill, P, buffer): the prompt
        # ends at slot P (it was left-padded to the longest prompt prefilled with it).
        # Its caches are views of the buffer its whole prefill call wrote (a split along
        # the rows shares it), `(id, bytes)`, which lives until its last prompt goes: a
        # buffer is counted once, whole.
        self._kept = collections.OrderedDict()
        self._buffers = itertools.count()
        self._kept_entries = int(prefill_cache)
        self._kept_bytes = int(prefill_cache_mb * 2**20)
        # Prompts prefilled whole, taken as kept, extended from a kept one.
        self.prefills = self.prefill_hits = self.prefill_extends = 0
        self.computed = 0  # the slots the last admitted prompt will compute
        self.steps = 0  # decoding steps run (monitoring, tests)
        self._extendable = min(generator.model.backbone.cache_lengths()) == self.max_len
        # A graph of any rows and slots, traced once: placement runs with whatever
        # requests join, and an XLA function would compile for each (rows, prompt
        # length) met (`Generator.prefill` says more).
        backbone = generator.model.backbone
        caches, logits = cache_signature(backbone), tf.TensorSpec([None, None], tf.float32)
        one, rows = tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.int32)
        self._place = tf.function(self._place_graph, input_signature=[
            caches, logits, cache_signature(backbone, True), logits, rows, rows, one, one])
        self._reset()

    def _reset(self):
        self.rows = 0  # rows of the loop (a power of two), 0: no loop
        self.live = {}  # row -> GenerationParams of a request still decoding
        self.slot = 0
        # The batch's tensors, and what changed since they were last built: a shift of
        # every row, rows added, requests to place (row -> prefill). Applied together
        # before the next step, so admitting several requests copies the caches once.
        self.logits = self.caches = None
        self._moved, self._incoming = 0, {}

    # -- the prefill cache ----------------------------------------------------------------
    def _source(self, ids):
        """Where a prompt's prefill comes from: `("kept", (logits, caches, P))`,
        `("extend", ((caches, pad) of a kept prompt that began with the same tokens, its
        new tokens))` or `("fresh", None)`; sets `computed`, the tokens it will compute."""
        hit = self._kept.get(ids)
        if hit is not None:
            self._kept.move_to_end(ids)
            self.computed = 0
            return "kept", hit[:3]
        base = self._longest_shared(ids)
        if base is not None:
            key, kept = base
            self._kept.move_to_end(key)
            self.computed = len(ids) - kept
            _, caches, slots, _ = self._kept[key]
            return "extend", ((caches, slots - len(key)), len(ids) - kept)
        self.computed = len(ids)
        return "fresh", None

    def _keep(self, ids, logits, caches, slots, buffer):
        if not self._kept_entries or buffer[1] > self._kept_bytes:
            return
        self._kept[ids] = (logits, caches, slots, buffer)
        while len(self._kept) > self._kept_entries or self.kept_bytes() > self._kept_bytes:
            self._kept.popitem(last=False)

    def kept_bytes(self) -> int:
        """The memory the kept prefills hold."""
        return sum(dict(entry[3] for entry in self._kept.values()).values())

    def _longest_shared(self, ids):
        """(a kept prompt, tokens it shares with `ids`) to extend, or None: at least
        `MIN_SHARED` shared tokens; never for models with ring caches."""
        if not self._extendable:
            return None
        best, best_kept = None, 0
        for key in self._kept:
            kept = 0
            for a, b in zip(key, ids):
                if a != b:
                    break
                kept += 1
            kept = min(kept, len(ids) - 1)  # the last token's logits are computed anew
            if kept > best_kept:
                best, best_kept = key, kept
        if best is None or best_kept < MIN_SHARED:
            return None
        return best, best_kept

    def _prefill_incoming(self):
        """Compute the new rows' prefills, one call per kind (whole, or extended from kept
        prompts; every prompt left-padded to the longest), and keep them."""
        groups = {}
        for row, (ids, kind, source) in sorted(self._incoming.items()):
            if kind != "kept":
                groups.setdefault(kind, []).append((row, ids, source))
        for kind, rows in groups.items():
            unique = {}  # the same prompt twice is computed once
            for _, ids, source in rows:
                unique.setdefault(ids, source)
            prompts = list(unique)
            slots = max(len(ids) for ids in prompts)
            if kind == "fresh":
                logits, caches = self.generator.prefill(prompts, slots)
                self.prefills += len(prompts)
            else:
                logits, caches = self.generator.prefill_rows(
                    prompts, slots, [unique[ids][0] for ids in prompts],
                    max(source[1] for source in unique.values()))
                self.prefill_extends += len(prompts)
            # Each prompt's caches, cut to the prefill's slots: those after it are empty
            # or hold nothing a later step reads, those before it are hidden by its pad.
            # (A split per layer: a slice per row and layer costs more in eager ops.)
            cut = [tuple(x[:, :, :slots] for x in kv) for kv in caches]
            split = [tuple(tf.split(x, len(prompts)) for x in kv) for kv in cut]
            buffer = (next(self._buffers),
                      sum(int(np.prod(x.shape)) * x.dtype.size for kv in cut for x in kv))
            done = {}
            for j, ids in enumerate(prompts):
                mine = [(k[j], v[j]) for k, v in split]
                self._keep(ids, logits[j:j + 1], mine, slots, buffer)
                done[ids] = (logits[j:j + 1], mine, slots)
            for row, ids, _ in rows:
                self._incoming[row] = (ids, "kept", done[ids])

    # -- joining ------------------------------------------------------------------------
    def admit(self, ids, params: GenerationParams) -> int | None:
        """Add a request (prompt token ids, its parameters) to the loop; returns its row,
        or None when it cannot join now (every row busy, or the slots left cannot hold it
        and the replies in progress: retry once rows finish). Its first token comes with
        the next `step`."""
        if not params.stop_at_end:
            raise GenerationError("a DecodeBatch's rows stop at the end token: decode "
                                  "stop_at_end=False requests with Generator.stream_rows")
        check_fits(len(ids), params.max_new_tokens, self.max_len)
        slot = max(self.slot, len(ids)) if self.live else len(ids)
        need = [slot + p.max_new_tokens - int(self._n_gen[r]) for r, p in self.live.items()]
        if max(need + [slot + params.max_new_tokens]) > self.max_len:
            return None
        free = [r for r in range(self.rows) if r not in self.live]
        if not free and self.rows >= self.max_rows:
            return None
        ids = tuple(ids)
        kind, source = self._source(ids)
        if kind == "kept":
            self.prefill_hits += 1
        if not self.live:
            self._start(slot)
            row = 0
        else:
            if slot > self.slot:  # every row moves later, its positions unchanged
                self._moved += slot - self.slot
                self._pad += slot - self.slot
                self.slot = slot
            row = free[0] if free else self._grow()
        self._incoming[row] = (ids, kind, source)
        self._pad[row] = self.slot - len(ids)
        self._max_new[row] = params.max_new_tokens
        self._n_gen[row] = 0
        self._done[row] = False
        self._temperature[row] = params.temperature
        self._top_k[row] = params.top_k or 0
        self._top_p[row] = params.top_p or 1.0
        self._seeds[row] = row_seeds(params.seed, 1)[0]
        self.live[row] = params
        return row

    def _start(self, slot):
        self._reset()
        self.rows, self.slot = 1, slot
        self._pad = np.full(1, slot, np.int32)
        self._max_new = np.ones(1, np.int32)
        self._n_gen = np.zeros(1, np.int32)
        self._done = np.ones(1, bool)
        self._temperature = np.zeros(1, np.float32)
        self._top_k = np.zeros(1, np.int32)
        self._top_p = np.ones(1, np.float32)
        self._seeds = np.zeros(1, np.int32)

    def _grow(self) -> int:
        """Double the rows (new rows empty: done, every slot before the next one hidden);
        returns the first new row."""
        n = self.rows
        for name, empty in (("_pad", self.slot), ("_max_new", 1), ("_n_gen", 0),
                            ("_done", True), ("_temperature", 0), ("_top_k", 0),
                            ("_top_p", 1), ("_seeds", 0)):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.full(n, empty, old.dtype)]))
        self.rows = 2 * n
        return n

    def _build(self):
        """Bring the batch's tensors up to date: shift, grow, place the new rows."""
        backbone = self.generator.model.backbone
        if self.caches is None:
            self.caches = backbone.empty_caches(self.rows, dtype=backbone.compute_dtype)
            self.logits = tf.zeros([self.rows, backbone.vocab_size], tf.float32)
            self._moved = 0
        if not self._incoming and not self._moved and int(self.logits.shape[0]) == self.rows:
            return
        self._prefill_incoming()
        new = [(row, logits, caches, slots)
               for row, (_, _, (logits, caches, slots)) in sorted(self._incoming.items())]
        # Each new row's caches, (new rows, kv_heads, slots, head_dim) per layer: its
        # prefill's slots and zeros after them, up to the longest prefill's.
        parts = []
        for i, kv in enumerate(self.caches):
            layer = []
            for j, old in enumerate(kv):
                width = min(max([c[i][j].shape[2] for _, _, c, _ in new] + [0]),
                            old.shape[2])
                layer.append(tf.concat([
                    tf.pad(c[i][j], [[0, 0], [0, 0], [0, width - c[i][j].shape[2]], [0, 0]])
                    if c[i][j].shape[2] != width else c[i][j] for _, _, c, _ in new], 0)
                    if new else old[:0, :, :0])
            parts.append(tuple(layer))
        self.caches, self.logits = self._place(
            self.caches, self.logits, parts,
            tf.concat([g for _, g, _, _ in new], 0) if new else self.logits[:0],
            tf.constant([r for r, _, _, _ in new], tf.int32, [len(new)]),
            tf.constant([self.slot - slots for _, _, _, slots in new], tf.int32, [len(new)]),
            tf.constant(self._moved, tf.int32), tf.constant(self.rows, tf.int32))
        self._moved = 0
        self._incoming = {}

    @staticmethod
    def _place_graph(caches, logits, parts, part_logits, rows, shifts, moved, total):
        """The batch's tensors moved `moved` slots later and grown to `total` rows, with
        new rows' prefills written in: row `rows[j]`'s caches are `parts`' row j (per
        layer (new rows, kv_heads, prefill slots, head_dim)) moved `shifts[j]` slots, to
        end at the loop's next slot; its logits `part_logits[j]`. A ring's index i is in
        slot i mod its width, and moves alike."""
        more = total - tf.shape(logits)[0]
        where = rows[:, None]

        def grown(x):
            # (Graph mode copies in each op: skip those with nothing to do.)
            x = tf.cond(more > 0, lambda: tf.concat(
                [x, tf.zeros(tf.concat([[more], tf.shape(x)[1:]], 0), x.dtype)], 0),
                lambda: x)
            if x.shape.rank == 4:
                x = tf.cond(moved != 0, lambda: tf.roll(x, moved, axis=2), lambda: x)
            return x

        placed = [tuple(tf.tensor_scatter_nd_update(
                      grown(old), where, widen_cache(new, old.shape[2], shifts))
                      for old, new in zip(kv, part_kv))
                  for kv, part_kv in zip(caches, parts)]
        return placed, tf.tensor_scatter_nd_update(grown(logits), where, part_logits)

    def batch_sizes(self) -> list[int]:
        """The numbers of rows the loop decodes at (it grows by doubling)."""
        sizes = [1]
        while sizes[-1] < self.max_rows:
            sizes.append(2 * sizes[-1])
        return sizes

    def warm_up(self, report=None):
        """Compile and trace all the loop runs, so that no request waits for it: the
        XLA decoding loop for each of `batch_sizes()` (a compile each, seconds for a
        135M model on 2 cores), and the graphs of any shape (prefills, an extended
        prefill, placement). Kept prefills and counters are untouched.

        Args:
            report: called with a line of progress before each compile.
        """
        gen, backbone = self.generator, self.generator.model.backbone
        ids = [gen.end_token_id] * MIN_SHARED
        logits, caches = gen.prefill([ids], MIN_SHARED)
        cut = [(k[:, :, :MIN_SHARED], v[:, :, :MIN_SHARED]) for k, v in caches]
        if self._extendable:
            gen.prefill_rows([ids * 2], 2 * MIN_SHARED, [(cut, 0)], MIN_SHARED)
        for rows in self.batch_sizes():
            if report:
                report(f"compiling the decoding loop for {rows} row(s)")
            caches = backbone.empty_caches(rows, dtype=backbone.compute_dtype)
            out = self._place(caches, tf.zeros([rows, backbone.vocab_size], tf.float32),
                              cut, logits, tf.constant([0]), tf.constant([0]),
                              tf.constant(0), tf.constant(rows))
            z = np.zeros(rows, np.int32)
            # Every row done: the loop compiles and runs no step.
            gen.decode_steps(out[1], out[0], z, MIN_SHARED, z + 1, np.ones(rows, bool), z,
                             np.zeros(rows, np.float32), z, np.ones(rows, np.float32), z, 1)

    def traces(self) -> int:
        """Traces of everything the loop runs (for tests: none more after `warm_up`)."""
        return self.generator.joining_traces() + self._place.experimental_get_tracing_count()

    def drop(self, row):
        """Stop decoding a row (its request went away)."""
        if self.live.pop(row, None) is not None:
            self._done[row] = True
            self._incoming.pop(row, None)
        if not self.live:
            self._reset()

    def drop_all(self):
        """End the loop (every row dropped; kept prefills stay)."""
        self._reset()

    # -- decoding -----------------------------------------------------------------------
    def step(self, n: int) -> dict:
        """Decode up to `n` steps; returns `{row: (new token ids, finished)}` for every
        live row (the end token left out). A finished row leaves the loop."""
        if not self.live:
            return {}
        gen = self.generator
        self._build()
        before, slot = self._n_gen.copy(), self.slot
        self.logits, self.caches, self.slot, out, n_gen, done = gen.decode_steps(
            self.logits, self.caches, self._pad, self.slot, self._max_new, self._done,
            self._n_gen, self._temperature, self._top_k, self._top_p, self._seeds, n)
        self._n_gen, self._done = n_gen.copy(), done.copy()
        self.steps += self.slot - slot
        news = {}
        for row, params in list(self.live.items()):
            new = out[row, :n_gen[row] - before[row]].tolist()
            if done[row] and new and new[-1] in gen.end_token_ids:
                new = new[:-1]
            finished = bool(done[row]) or int(n_gen[row]) >= params.max_new_tokens
            news[row] = (new, finished)
            if finished:  # the loop marked it done too
                self.live.pop(row)
        if not self.live:
            self._reset()
        return news
