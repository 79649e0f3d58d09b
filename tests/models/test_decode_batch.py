"""`DecodeBatch`: requests that join a running decoding loop get what they get alone.

Rows join between chunks (their caches shifted to the loop's slot), a longer prompt
shifts the whole batch, finished rows are reused, the batch grows; a repeated prompt is
prefilled once. Checked on the tiny char model and on a Gemma 3-style model whose local
layers keep ring caches shorter than the context.
"""

import numpy as np
import pytest

import tfllm
from tfllm.models.decode_batch import DecodeBatch
from tfllm.models.generation import GenerationError, GenerationParams, get_generator


@pytest.fixture(scope="module")
def lm(tiny_run):
    return tfllm.load(tiny_run)


def _alone(gen, ids, params):
    return sum(gen.stream_ids(ids, params), [])


def _drive(batch, arrivals):
    """Run the loop: `arrivals` maps a chunk number to requests (key, ids, params) that
    join before it; each chunk is 2 steps. Returns {key: tokens}; `batch.joins` gets
    (key, loop slot before, after) of each admission."""
    got, rows, pending, chunk = {}, {}, [], 0
    batch.joins = []
    while True:
        pending += arrivals.get(chunk, [])
        for item in list(pending):
            before = batch.slot
            row = batch.admit(item[1], item[2])
            if row is None:
                break
            batch.joins.append((item[0], before, batch.slot))
            rows[row] = item[0]
            got[item[0]] = []
            pending.remove(item)
        if not batch.live and not pending and chunk > max(arrivals):
            return got
        for row, (new, finished) in batch.step(2).items():
            got[rows[row]] += new
        chunk += 1


def _requests(tokenizer, texts, params):
    return [(t, tokenizer.encode(t), p) for t, p in zip(texts, params)]


def test_rows_that_join_a_running_loop_decode_as_alone(lm):
    gen = get_generator(lm)
    assert gen.max_len == 32  # the budgets below are sized to it
    batch = DecodeBatch(gen, max_rows=4)
    texts = ["O", "ROMEO:", "Q", "First Citizen:", "JULIET:", "Ay"]
    params = [GenerationParams(12), GenerationParams(9, temperature=1.0, top_k=20, seed=4),
              GenerationParams(5), GenerationParams(6, temperature=0.8, seed=9),
              GenerationParams(3), GenerationParams(4)]
    reqs = _requests(lm.tokenizer, texts, params)
    # One alone, then two while it decodes (the first longer than the loop's slot: the
    # whole batch shifts; the second not), then a longer prompt again, then two more
    # than the free rows.
    got = _drive(batch, {0: reqs[:1], 1: reqs[1:3], 2: reqs[3:4], 3: reqs[4:]})
    for key, ids, p in reqs:
        assert got[key] == _alone(gen, ids, p), key
    joins = {key: (before, after) for key, before, after in batch.joins}
    assert joins["ROMEO:"] == (3, 6) and joins["Q"] == (6, 6)
    assert joins["First Citizen:"] == (8, 14) and joins["JULIET:"] == (18, 18)
    assert batch.rows == 0 and batch.live == {}  # the loop ended with its last row


def test_a_repeated_prompt_is_prefilled_once(lm):
    gen = get_generator(lm)
    batch = DecodeBatch(gen, max_rows=8)
    ids = lm.tokenizer.encode("ROMEO:")
    reqs = [(k, ids, GenerationParams(6, temperature=1.0 if k else 0.0, seed=k))
            for k in range(5)]
    got = _drive(batch, {0: reqs[:1], 1: reqs[1:]})
    assert batch.prefills == 1 and batch.prefill_hits == 4
    for key, _, p in reqs:
        assert got[key] == _alone(gen, ids, p)
    # Without the cache every request is prefilled, but the same prompt twice in one
    # round only once.
    plain = DecodeBatch(gen, prefill_cache=0)
    _drive(plain, {0: reqs[:1], 1: reqs[1:2]})
    assert plain.prefills == 2 and plain.prefill_hits == 0
    _drive(plain, {0: reqs[:2]})
    assert plain.prefills == 3


def test_a_request_that_does_not_fit_waits(lm):
    gen = get_generator(lm)
    batch = DecodeBatch(gen, max_rows=1)
    ids = lm.tokenizer.encode("ROMEO:")
    assert batch.admit(ids, GenerationParams(4)) == 0
    assert batch.admit(ids, GenerationParams(4)) is None  # no free row
    with pytest.raises(GenerationError, match="stop at the end token"):
        batch.admit(ids, GenerationParams(4, stop_at_end=False))
    wide = DecodeBatch(gen, max_rows=4)
    assert wide.admit(ids, GenerationParams(4)) == 0
    wide.step(1)
    # The loop's slot (one past the prompt) plus this budget passes the context.
    assert wide.admit(ids, GenerationParams(gen.max_len - len(ids))) is None
    wide.drop(0)
    assert wide.rows == 0
    assert wide.admit(ids, GenerationParams(gen.max_len - len(ids))) == 0


def test_ring_caches_shift_exactly():
    """Gemma 3-style local layers (a ring of 6 slots in a 32-slot context): rows joining
    late, past the ring's length, still decode as alone."""
    from tests.models.test_gemma_architecture import _model

    lm = _model("gemma3")
    gen = get_generator(lm)
    assert min(lm.backbone.cache_lengths()) < gen.max_len
    rng = np.random.default_rng(0)
    reqs = [(k, rng.integers(1, 61, n).tolist(), GenerationParams(m, stop_at_end=True))
            for k, (n, m) in enumerate([(9, 14), (3, 8), (12, 6), (5, 9)])]
    got = _drive(DecodeBatch(gen, max_rows=4), {0: reqs[:1], 2: reqs[1:3], 4: reqs[3:]})
    for key, ids, p in reqs:
        assert got[key] == _alone(gen, ids, p), key


def test_a_prompt_that_begins_like_a_kept_one_computes_only_its_new_tokens(lm):
    """A kept prompt's caches, extended by the new prompt's own tokens, give the logits,
    caches and tokens a whole prefill gives; prompts extended together share a call."""
    gen = get_generator(lm)
    batch = DecodeBatch(gen)
    first = lm.tokenizer.encode("ROMEO:\nI am here")
    second = lm.tokenizer.encode("ROMEO:\nI am not a man")
    third = lm.tokenizer.encode("ROMEO:\nI am thy lord")
    sampled = GenerationParams(8, temperature=0.9, seed=2)
    assert batch.admit(first, GenerationParams(4)) == 0
    batch.step(1)  # the first prompt is prefilled (and kept)
    rows = [batch.admit(second, sampled)]
    assert batch.computed == 9  # its new tokens, not its 21
    rows.append(batch.admit(third, GenerationParams(8)))
    assert batch.computed == 8 and None not in rows
    got = {0: [], rows[0]: [], rows[1]: []}
    while batch.live:
        for r, (new, _) in batch.step(3).items():
            got[r] += new
    assert (batch.prefills, batch.prefill_extends) == (1, 2)
    assert got[rows[0]] == _alone(gen, second, sampled)
    assert got[rows[1]] == _alone(gen, third, GenerationParams(8))
    # The extended prefill itself, against a whole one.
    prompt_len = gen.prompt_bucket(len(second), 8)
    whole, caches = gen.prefill([second, third], prompt_len)
    first_len = gen.prompt_bucket(len(first), 4)
    _, prefix = gen.prefill([first], first_len)
    prefix = ([(k[:, :, :first_len], v[:, :, :first_len]) for k, v in prefix],
              first_len - len(first))
    shared = len("ROMEO:\nI am ")  # one token per character
    assert first[:shared] == second[:shared] and first[shared] != second[shared]
    ext, ext_caches = gen.prefill_rows([second, third], prompt_len, [prefix, prefix],
                                       len(second) - shared)
    np.testing.assert_allclose(ext.numpy(), whole.numpy(), atol=1e-4)
    for r, prompt in enumerate([second, third]):
        pad = prompt_len - len(prompt)
        for (k, _), (ek, _) in zip(caches, ext_caches):
            np.testing.assert_allclose(ek.numpy()[r, :, pad:prompt_len],
                                       k.numpy()[r, :, pad:prompt_len], atol=1e-5)
    # Fewer shared tokens than MIN_SHARED: a whole prefill.
    short = DecodeBatch(gen)
    short.admit(lm.tokenizer.encode("ROMEO"), GenerationParams(4))
    short.step(1)
    short.admit(second, GenerationParams(4))
    short.step(1)
    assert (short.prefills, short.prefill_extends) == (2, 0)


def test_ring_caches_are_never_extended():
    from tests.models.test_gemma_architecture import _model

    gen = get_generator(_model("gemma3"))
    batch = DecodeBatch(gen)
    ids = list(range(1, 13))
    batch.admit(ids, GenerationParams(4))
    batch.step(1)
    batch.admit(ids[:10] + [40, 41], GenerationParams(4))
    batch.step(1)
    assert (batch.prefills, batch.prefill_extends) == (2, 0)
    _, caches = gen.prefill([ids[:8]], 8)
    prefix = ([(k[:, :, :8], v[:, :, :8]) for k, v in caches], 0)
    with pytest.raises(GenerationError, match="full-length caches"):
        gen.prefill_rows([ids], 16, [prefix], 8)


def test_after_warm_up_no_request_waits_for_a_compile(lm):
    """`warm_up` compiles the loop for every batch size and traces the graphs of any
    shape: prompts of other lengths, rows joining in any number, growth to `max_rows`,
    an extended prefill trace nothing more."""
    gen = get_generator(lm)
    batch = DecodeBatch(gen, max_rows=8)
    assert batch.batch_sizes() == [1, 2, 4, 8]
    lines = []
    batch.warm_up(lines.append)
    assert lines == [f"compiling the decoding loop for {n} row(s)" for n in (1, 2, 4, 8)]
    assert (batch.prefills, batch.prefill_hits, batch.prefill_extends) == (0, 0, 0)
    warm = batch.traces()
    texts = ["O", "ROMEO:", "Q", "First Citizen:", "JULIET:", "Ay", "KING HENRY:", "Go",
             "ROMEO:\nI am", "ROMEO:\nI am here", "What, ho!"]
    reqs = _requests(lm.tokenizer, texts, [GenerationParams(4 + k % 5, temperature=k % 2,
                                                            seed=k) for k in range(11)])
    got = _drive(batch, {0: reqs[:1], 1: reqs[1:3], 2: reqs[3:8], 5: reqs[8:9],
                         7: reqs[9:]})
    assert batch.prefill_extends == 1 and max(b for _, _, b in batch.joins) > 10
    assert batch.traces() == warm
    for key, ids, p in reqs:
        assert got[key] == _alone(gen, ids, p), key
    # A model with ring caches has no extended prefill to trace.
    from tests.models.test_gemma_architecture import _model

    ring = DecodeBatch(get_generator(_model("gemma3")), max_rows=2)
    ring.warm_up()
    warm = ring.traces()
    _drive(ring, {0: [(0, [5, 6, 7], GenerationParams(3))], 1: [(1, [8] * 11,
                                                                  GenerationParams(4))]})
    assert ring.traces() == warm


def test_kept_prefills_count_the_buffer_they_share(lm):
    """Prompts prefilled in one call keep views of that call's caches, which live until
    the last of them goes: the cap counts the whole buffer once, and evicts whole
    groups' oldest prompts when it is passed."""
    gen = get_generator(lm)
    backbone = lm.backbone
    per_slot = sum(x.shape[1] * x.shape[3] * x.dtype.size
                   for kv in backbone.empty_caches(1) for x in kv)  # bytes per row and slot
    first = [lm.tokenizer.encode(t) for t in ("ROMEO:", "JULIET: Ay", "O")]
    second = [lm.tokenizer.encode(t) for t in ("KING:", "QUEEN: Nay", "Go")]
    group = 3 * max(len(p) for p in first) * per_slot
    assert max(len(p) for p in second) == max(len(p) for p in first)
    # Room for one group of three, not two (counted per prompt's share, both would fit).
    batch = DecodeBatch(gen, prefill_cache_mb=1.5 * group / 2**20)
    _drive(batch, {0: [(i, p, GenerationParams(2)) for i, p in enumerate(first)]})
    assert batch.prefills == 3 and batch.kept_bytes() == group
    _drive(batch, {0: [(i, p, GenerationParams(2)) for i, p in enumerate(second)]})
    assert batch.prefills == 6 and batch.kept_bytes() == group
    _drive(batch, {0: [(0, second[1], GenerationParams(2))]})
    assert (batch.prefills, batch.prefill_hits) == (6, 1)
    _drive(batch, {0: [(0, first[1], GenerationParams(2))]})
    assert batch.prefills == 7  # evicted with its group
