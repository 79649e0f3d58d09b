import numpy as np
import pytest
import tensorflow as tf

import tfllm
from tests.conftest import TINY
from tfllm.cli import main
from tfllm.models.generation import (GenerationError, GenerationParams, Generator, filter_top_k,
                              filter_top_p, sample_next)

PROMPTS = ["ROMEO:", "First Citizen:\nWe are", "O"]


@pytest.fixture(scope="module")
def lm(tiny_run):
    return tfllm.load(tiny_run)


def uncached_greedy(lm, prompt_ids, n):
    ids = list(prompt_ids)
    for _ in range(n):
        logits = lm(np.array([ids], np.int32))[0, -1].numpy()
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]


def test_cached_greedy_equals_uncached_loop(lm):
    for prompt in PROMPTS:
        ids = lm.tokenizer.encode(prompt)
        n = TINY["max_len"] - len(ids)
        _, got = lm.generate(prompt, max_new_tokens=n, stop_at_end=False, return_ids=True)
        assert got[0] == uncached_greedy(lm, ids, n)


def test_ragged_batch_equals_one_by_one(lm):
    batch = lm.generate(PROMPTS, max_new_tokens=10, stop_at_end=False)
    alone = [lm.generate(p, max_new_tokens=10, stop_at_end=False) for p in PROMPTS]
    assert batch == alone
    # Sampling too: a row's draws depend on its own seed, not on its batch-mates.
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=20, seed=7, stop_at_end=False)
    sampled = lm.generate(PROMPTS[:1] * 3, **kw)
    assert sampled[0] == lm.generate(PROMPTS[:1], **kw)[0]


def test_seeded_sampling_repeats_and_seeds_differ(lm):
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95, stop_at_end=False)
    a = lm.generate(PROMPTS, seed=1, **kw)
    assert a == lm.generate(PROMPTS, seed=1, **kw)
    assert a != lm.generate(PROMPTS, seed=2, **kw)
    # Rows of one call draw different continuations of the same prompt.
    rows = lm.generate([PROMPTS[0]] * 4, seed=1, **kw)
    assert len(set(rows)) > 1


def test_top_k_one_equals_greedy(lm):
    greedy = lm.generate(PROMPTS, max_new_tokens=10, stop_at_end=False)
    assert lm.generate(PROMPTS, max_new_tokens=10, temperature=0.7, top_k=1, seed=5,
                       stop_at_end=False) == greedy


def test_filters_keep_exactly_the_right_tokens():
    logits = tf.math.log(tf.constant([[0.05, 0.4, 0.1, 0.3, 0.15],
                                      [0.2, 0.2, 0.2, 0.2, 0.2]]))
    kept = filter_top_k(logits, tf.constant([2, 0])).numpy() > -1e8
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])
    # Nucleus: 0.4 + 0.3 = 0.7 < 0.75 so 0.15 is needed too; p = 0.7 stops at 0.3.
    kept = filter_top_p(logits, tf.constant([0.75, 1.0])).numpy() > -1e8
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    kept = filter_top_p(logits[:1], tf.constant([0.7])).numpy() > -1e8
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 0]])
    kept = filter_top_p(logits[:1], tf.constant([0.01])).numpy() > -1e8
    np.testing.assert_array_equal(kept, [[0, 1, 0, 0, 0]])  # the top token always stays
    # A top_p that float32 rounds to 0 (1e-300 from an API request) keeps it too.
    kept = filter_top_p(logits[:1], tf.constant([1e-300], tf.float32)).numpy() > -1e8
    np.testing.assert_array_equal(kept, [[0, 1, 0, 0, 0]])


def test_sampling_follows_the_filtered_distribution():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15], np.float32)
    n = 4000
    logits = tf.math.log(tf.tile(probs[None], [n, 1]))
    ones = tf.ones([n])
    draws = sample_next(logits, ones, tf.fill([n], 2), ones, tf.range(n), 0).numpy()
    assert set(draws) == {1, 3}
    np.testing.assert_allclose((draws == 1).mean(), 0.4 / 0.7, atol=0.03)
    draws = sample_next(logits, ones, tf.zeros([n], tf.int32), ones, tf.range(n), 0).numpy()
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / n, probs, atol=0.03)
    # Temperature 0 is greedy whatever the other settings.
    greedy = sample_next(logits[:3], tf.zeros([3]), tf.fill([3], 3), ones[:3], tf.range(3), 0)
    np.testing.assert_array_equal(greedy.numpy(), [1, 1, 1])


def test_stop_token_ends_one_row_while_others_go_on(lm):
    free = Generator(lm, end_token_id=lm.tokenizer.eos_id)
    prompts = [lm.tokenizer.encode(p) for p in
               ["ROMEO:", "O", "KING HENRY:", "zounds", "?", "Thou"]]
    rows = free.generate_ids(prompts, GenerationParams(max_new_tokens=10, stop_at_end=False))
    # An end token that some rows emit (after their first token) and others never do.
    candidates = [t for r in rows for t in r[1:]
                  if any(t not in other for other in rows) and t != lm.tokenizer.eos_id]
    assert candidates, "every row emits the same tokens; pick other prompts"
    end = candidates[0]
    out = Generator(lm, end_token_id=end).generate_ids(prompts,
                                                       GenerationParams(max_new_tokens=10))
    stopped = 0
    for row, got in zip(rows, out):
        if end in row:
            assert got == row[:row.index(end)]
            stopped += 1
        else:
            assert got == row  # the others go on to max_new_tokens
    assert 0 < stopped < len(rows)


def test_no_retracing_for_the_same_buckets(lm):
    gen = Generator(lm, end_token_id=lm.tokenizer.eos_id)
    enc = lm.tokenizer.encode
    gen.generate_ids([enc("ROMEO:")], GenerationParams(max_new_tokens=8))
    gen.generate_ids([enc("KING:")], GenerationParams(max_new_tokens=5, temperature=0.5,
                                                      top_k=3, seed=1))
    assert gen.tracing_count() == 1
    gen.generate_ids([enc("A"), enc("BC")], GenerationParams(max_new_tokens=8))
    assert gen.tracing_count() == 2  # a new batch bucket


def test_bad_arguments(lm):
    with pytest.raises(GenerationError, match="exceeds the model's context of 32"):
        lm.generate("ROMEO:", max_new_tokens=30)
    with pytest.raises(GenerationError, match="temperature"):
        lm.generate("x", max_new_tokens=2, temperature=-1)
    with pytest.raises(GenerationError, match="top_p"):
        lm.generate("x", max_new_tokens=2, top_p=0)
    with pytest.raises(GenerationError, match="top_k"):
        lm.generate("x", max_new_tokens=2, top_k=0)
    # Too long a prompt: an error, or keep its end with truncate="left".
    long_prompt = "ROMEO: " * 10
    with pytest.raises(GenerationError, match="context"):
        lm.generate(long_prompt, max_new_tokens=5)
    kept = lm.tokenizer.decode(lm.tokenizer.encode(long_prompt)[-27:])
    assert lm.generate(long_prompt, max_new_tokens=5, truncate="left", stop_at_end=False) == \
        lm.generate(kept, max_new_tokens=5, stop_at_end=False)


def test_stream_rows_decode_each_row_as_alone(lm):
    """Several prompts in one streamed loop, each its own budget and sampling: each row's
    tokens are those it streams alone; rows that disagree on stop_at_end are refused."""
    from tfllm.models.generation import get_generator

    gen = get_generator(lm)
    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    params = [GenerationParams(6, stop_at_end=False),
              GenerationParams(3, temperature=1.0, top_k=20, seed=4, stop_at_end=False),
              GenerationParams(9, temperature=0.8, seed=9, stop_at_end=False)]
    together = [[] for _ in prompts]
    for news, finished in gen.stream_rows(prompts, params):
        for row, new in zip(together, news):
            row += new
    alone = [sum(gen.stream_ids(ids, p), []) for ids, p in zip(prompts, params)]
    assert together == alone and [len(r) for r in together] == [6, 3, 9]
    assert finished == [True, True, True]
    with pytest.raises(GenerationError, match="share stop_at_end"):
        next(gen.stream_rows(prompts[:2], [GenerationParams(4),
                                           GenerationParams(4, stop_at_end=False)]))


def test_empty_prompt_starts_from_bos(lm):
    _, ids = lm.generate("", max_new_tokens=5, stop_at_end=False, return_ids=True)
    bos = lm.tokenizer.bos_id
    assert ids[0] == uncached_greedy(lm, [bos], 5)


def test_cli_generate_streams_one_prompt(tiny_run, lm, capsys):
    assert main(["generate", "--run", tiny_run, "--prompt", "ROMEO:", "--max-new-tokens",
                 "10"]) == 0
    out = capsys.readouterr().out
    assert out == "ROMEO:" + lm.generate("ROMEO:", max_new_tokens=10) + "\n"


def test_cli_generate_from_file_with_samples(tiny_run, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("KING:\n\nQUEEN:\n")
    assert main(["generate", "--run", tiny_run, "--prompt-file", str(f), "--max-new-tokens",
                 "8", "--temperature", "0.9", "--seed", "3", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== prompt") == 4 and "QUEEN:" in out and "sample 2" in out


@pytest.mark.parametrize("args, match", [
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--top-k", "0"], "argument --top-k: must be a positive integer, got 0"),
    (["--temperature", "-0.5"], "temperature must be a finite number >= 0"),
    (["--max-new-tokens", "40"], "leaves no room for a prompt in the model's context of 32"),
    (["--max-new-tokens", "30"], "lower --max-new-tokens to 26"),
])
def test_cli_generate_errors(tiny_run, args, match, capsys):
    try:
        status = main(["generate", "--run", tiny_run, "--prompt", "ROMEO:", *args])
    except SystemExit as e:  # argparse's own refusals (the usage, then one error line)
        status = e.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # One line, or argparse's usage and then one line.
    assert match in lines[-1] and (len(lines) == 1 or lines[0].startswith("usage:"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_non_finite_temperature_is_refused(tiny_run, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--run", tiny_run, f"--temperature={value}"])
    assert e.value.code == 2 and "must be a finite number" in capsys.readouterr().err


def test_cli_long_prompt_error_prints_no_prompt_and_a_usable_hint(tiny_run, capsys):
    assert main(["generate", "--run", tiny_run, "--prompt", "ROMEO: " * 10]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--truncate left" in err
    assert "--max-new-tokens 0" not in err and "shorten the prompt to 31 tokens" in err


def test_cli_invalid_utf8_on_stdin_is_one_line(tiny_run, monkeypatch, capsys):
    import io

    stdin = io.TextIOWrapper(io.BytesIO(b"ROMEO\xff\xfe:\n"), encoding="utf-8")
    monkeypatch.setattr(stdin, "isatty", lambda: False)
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["generate", "--run", tiny_run, "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfllm generate: error: standard input is not valid UTF-8")
    assert len(err.splitlines()) == 1


def _while_bodies(hlo):
    """The text of every while-loop body computation in an HLO module dump."""
    import re

    bodies = {}
    for name in set(re.findall(r"body=%?([\w.\-]+)", hlo)):
        start = re.search(r"^%?" + re.escape(name) + r" \(.*\{$", hlo, re.M)
        if start:
            bodies[name] = hlo[start.end():hlo.index("\n}", start.end())]
    return bodies


def test_decoding_loop_updates_the_caches_in_place(lm):
    # XLA:CPU copied every layer's K and V cache on each step when the attention read the
    # freshly written cache (~20% of batch-1 decoding time); see MultiHeadAttention.call.
    gen = Generator(lm, end_token_id=lm.tokenizer.eos_id)
    ids, lens, args = gen._pack([[5, 6, 7]], GenerationParams(max_new_tokens=8))
    hlo = gen._generate.experimental_get_compiler_ir(ids, lens, **args)(stage="optimized_hlo")
    bb = lm.backbone
    cache = f"f32[{ids.shape[0]},{bb.num_heads},{bb.max_len},{bb.head_dim}]"
    bodies = _while_bodies(hlo)
    decode = [b for b in bodies.values() if "dynamic-update-slice" in b]
    assert decode, "no decoding loop found in the compiled generate function"
    copies = [line for b in decode for line in b.splitlines()
              if f"= {cache}" in line and " copy(" in line]
    assert copies == []


def test_seeded_sampling_is_the_same_with_and_without_xla(lm):
    # tf.random's stateless ops draw other numbers under XLA, so a --no-jit SavedModel
    # sampled other tokens than CausalLM.generate for the same seed; the sampler's own
    # integer hash does not.
    prompts = [lm.tokenizer.encode(p) for p in PROMPTS]
    params = GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=11,
                              stop_at_end=False)
    xla = Generator(lm, lm.tokenizer.eos_id).generate_ids(prompts, params)
    plain = Generator(lm, lm.tokenizer.eos_id, jit_compile=False).generate_ids(prompts, params)
    assert plain == xla
    greedy = Generator(lm, lm.tokenizer.eos_id).generate_ids(
        prompts, GenerationParams(max_new_tokens=8, stop_at_end=False))
    assert xla != greedy


def test_one_rule_for_prompt_and_new_tokens():
    """`fits` decides for every path, on Python ints and on int32 tensors alike (by
    subtraction: a huge max_new_tokens does not wrap around)."""
    from tfllm.models.generation import check_fits, fits, new_token_room, prompt_room

    cases = [(30, 2, 32), (31, 2, 32), (1, 31, 32), (1, 32, 32), (0, 0, 32),
             (5, 2**31 - 1, 32)]
    python = [fits(p, n, m) for p, n, m in cases]
    assert python == [True, False, True, False, True, False]
    graph = [bool(fits(tf.constant(p, tf.int32), tf.constant(n, tf.int32), m))
             for p, n, m in cases]
    assert graph == python
    assert prompt_room(32, 2) == 30 and new_token_room(32, 30) == 2
    check_fits(30, 2, 32)  # fits: no error
    with pytest.raises(GenerationError, match=r"^max_new_tokens 32 leaves no room for a "
                       r"prompt in the model's context of 32 tokens; give at most 31$"):
        check_fits(1, 32, 32)
    with pytest.raises(GenerationError, match=r"^prompt length 31 \+ 2 new tokens exceeds the "
                       r"model's context of 32 tokens; lower --n to 1, shorten the prompt "
                       r"to 30 tokens or cut it$"):
        check_fits(31, 2, 32, "--n", also=" or cut it")
    with pytest.raises(GenerationError, match="exceeds.*; shorten the prompt to 31 tokens$"):
        check_fits(40, 1, 32)  # nothing to lower: the prompt alone is too long
