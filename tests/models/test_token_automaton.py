"""Constrained decoding (#36): every output under a JSON schema parses and validates
(`jsonschema`), greedy and sampled, batched, within max_new_tokens; a regex holds on a
byte-level BPE and a SentencePiece vocabulary; the in-graph loop picks what a step-by-step
NumPy reference over full forward passes picks; bad schemas and patterns are one-line
errors before any decoding."""

import json
import re

import jsonschema
import numpy as np
import pytest

import tfllm
from tests.conftest import call_cli, call_module
from tfllm.models.generation import GenerationError
from tfllm.models.token_automaton import ConstraintError, TokenAutomaton

# Nested objects, arrays, enums, numbers, strings (escapes included: the model is random,
# so its strings are whatever bytes the pattern allows).
SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "size": {"type": "object", "properties": {"w": {"type": "integer"},
                                                  "h": {"type": "number"}},
                 "required": ["w", "h"]}},
     "required": ["name", "size"]},
    {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                 "minItems": 1, "maxItems": 3},
        "ok": {"type": "boolean"}},
     "required": ["tags", "ok"]},
    {"type": "array", "items": {"type": "object", "properties": {
        "q": {"type": "string", "maxLength": 6}, "n": {"type": "integer", "minimum": 0}},
        "required": ["q", "n"]}, "maxItems": 2},
]
PROMPTS = [f"prompt {i}: {'abc ' * (i % 4)}" for i in range(20)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random tiny Llama with a byte-level BPE vocabulary (400 tokens)."""
    from tests.checkpoints.llama_fixtures import write_checkpoint
    from tfllm.checkpoints import import_hf

    d = tmp_path_factory.mktemp("constrained")
    run = import_hf(write_checkpoint(str(d / "ckpt"), "llama"), str(d / "run"), max_len=128)
    return run, tfllm.load(run)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["nested", "enum-array", "array-of-objects"])
def test_every_output_validates(llama, schema):
    _, lm = llama
    for kwargs in ({}, {"temperature": 1.0, "seed": 4}):
        texts, ids = lm.generate(PROMPTS, max_new_tokens=48, json_schema=schema,
                                 return_ids=True, **kwargs)
        for text, row in zip(texts, ids):
            jsonschema.validate(json.loads(text), schema)
            assert len(row) < 48  # it ended (its end token is not in the row)
    # Sampling explores: not every row is the same answer.
    assert len(set(texts)) > 1


def test_greedy_equals_a_step_by_step_reference(llama):
    """The loop picks the allowed token of highest logit at every step, as a NumPy loop
    over full forward passes does, and ends where the match is complete."""
    _, lm = llama
    regex = r"(cat|dog|bird)s? [0-9]{2}"
    automaton = TokenAutomaton.from_regex(regex, lm.tokenizer)
    for prompt in PROMPTS[:4]:
        got = lm.generate(prompt, max_new_tokens=20, regex=regex, return_ids=True)[1][0]
        ids, state, expected = lm.tokenizer.encode(prompt), automaton.initial, []
        while True:
            logits = lm(np.array([ids + expected], np.int32)).numpy()[0, -1]
            allowed = automaton.allowed_tokens(state)
            token = int(allowed[np.argmax(logits[allowed])])
            if token in lm.tokenizer.eos_ids:
                break
            expected.append(token)
            state = automaton.next_state(state, token)
        assert got == expected
        assert re.fullmatch(regex, lm.tokenizer.decode(got))


def test_a_regex_holds_on_a_sentencepiece_vocabulary(tiny_run):
    lm = tfllm.load(tiny_run)
    regex = r"(ROMEO|JULIET): [a-z]{2,5}( [a-z]{2,5})?\."
    # A 32-token context: short prompts, and the character vocabulary's tokens.
    for text in lm.generate(["KING:\n", "A", "ROMEO"], max_new_tokens=24, regex=regex,
                            temperature=0.8, seed=1):
        assert re.fullmatch(regex, text), text


def test_outputs_finish_within_a_short_budget(llama):
    """A budget the model's own choices would overrun: each row takes the shortest way
    to a complete answer when it must, so every output still validates."""
    _, lm = llama
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    automaton = TokenAutomaton.from_json_schema(schema, lm.tokenizer)
    need = automaton.shortest_completion()
    for budget in (need, need + 3):
        for text in lm.generate(PROMPTS[:6], max_new_tokens=budget, json_schema=schema,
                                temperature=1.5, seed=2):
            jsonschema.validate(json.loads(text), schema)
    with pytest.raises(GenerationError, match=f"takes {need} tokens.*max_new_tokens is "
                                              f"{need - 1}"):
        lm.generate("x", max_new_tokens=need - 1, json_schema=schema)


def test_automaton_arrays(llama):
    _, lm = llama
    a = TokenAutomaton.from_regex("(yes|no)", lm.tokenizer)
    assert a.allowed.dtype == np.int32 and a.allowed.shape == (a.num_states, -(-400 // 32))
    assert np.all(np.diff(a.keys) > 0)  # sorted, unique: the graph binary-searches them
    assert a.final[a.targets].any() and not a.final[a.initial]
    first = {bytes(lm.tokenizer.token_bytes()[t]) for t in a.allowed_tokens(a.initial)}
    assert first and all(b"yes".startswith(p) or b"no".startswith(p) for p in first)


@pytest.mark.parametrize("kwargs, message", [
    ({"json_schema": {"type": "strin"}}, "invalid JSON schema at type"),
    ({"json_schema": {"type": "object", "properties": {"a": {"not": {"type": "null"}}}}},
     "keyword 'not' (at /properties/a) is not supported"),
    ({"json_schema": "{not json"}, "not valid JSON"),
    ({"regex": "(unclosed"}, "cannot be used"),
    ({"regex": "(?<=a)b"}, "cannot be used"),
    ({"regex": "x", "json_schema": {"type": "string"}}, "not both"),
], ids=["type", "keyword", "syntax", "regex", "look-behind", "both"])
def test_bad_constraints_are_refused(llama, kwargs, message):
    _, lm = llama
    with pytest.raises(ConstraintError, match=re.escape(message)):
        lm.generate("x", max_new_tokens=8, **kwargs)


def test_a_constraint_past_the_limits_is_refused_not_compiled_for_hours(llama, monkeypatch):
    """A pattern is untrusted input (a request's response_format): one whose counted
    repetitions are hopeless is refused at once, one whose DFA blows up is stopped at the
    time limit, and neither holds the caller longer."""
    import time

    from tfllm.models import token_automaton

    _, lm = llama
    started = time.monotonic()
    with pytest.raises(ConstraintError, match=r"the JSON schema needs about [\d,]+ automaton "
                                              r"states over a 400-token vocabulary, about "
                                              r"[\d,]+ s to compile, past the 120 s limit: "
                                              r"lower"):
        lm.generate("x", max_new_tokens=8, json_schema={"type": "string",
                                                         "maxLength": 1_000_000})
    assert time.monotonic() - started < 5
    # 2^40 states: never finishes; stopped at the (here shortened) time limit.
    monkeypatch.setattr(token_automaton, "COMPILE_TIME_LIMIT_S", 3.0)
    started = time.monotonic()
    with pytest.raises(ConstraintError, match=r"took longer than 3 s .* it was stopped"):
        TokenAutomaton.from_regex("[ab]*a[ab]{40}", lm.tokenizer)
    assert time.monotonic() - started < 10
    # Nesting doubles a schema's regex at each level (78 MB at 20): refused by its length
    # (or, deeper, by the child's memory), never built in this process.
    deep = {"type": "string"}
    for _ in range(18):
        deep = {"type": "array", "items": deep, "maxItems": 1}
    with pytest.raises(ConstraintError, match=r"becomes a regular expression of 19,398,625 "
                                              r"characters, more than 1,048,576: .* nesting"):
        TokenAutomaton.from_json_schema(deep, lm.tokenizer)
    for _ in range(60):
        deep = {"type": "array", "items": deep}
    with pytest.raises(ConstraintError, match="nests more than 64 levels"):
        TokenAutomaton.from_json_schema(deep, lm.tokenizer)
    # A child that reaches its memory cap is said too, not a crash of the caller (2^24
    # states pass 512 MiB in ~3 s, before the 60 s limit).
    monkeypatch.setattr(token_automaton, "COMPILE_TIME_LIMIT_S", 60.0)
    monkeypatch.setattr(token_automaton, "COMPILE_MEMORY_BYTES", 512 << 20)
    with pytest.raises(ConstraintError, match="needed more than 512 MiB"):
        TokenAutomaton.from_regex("[ab]*a[ab]{24}", lm.tokenizer)
    # Any other failure of the worker says its last line.
    monkeypatch.setattr(token_automaton, "COMPILE_MEMORY_BYTES", 16 << 20)
    with pytest.raises(ConstraintError, match="failed in its worker process: .+"):
        TokenAutomaton.from_regex("(yes|no)", lm.tokenizer)


def test_compiles_run_one_at_a_time(llama, monkeypatch):
    """Concurrent requests' compiles wait their turn: their children's memory never adds up."""
    import subprocess
    import threading
    import time

    _, lm = llama
    real, active, most = subprocess.run, [0], [0]
    lock = threading.Lock()

    def run(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(subprocess, "run", run)
    threads = [threading.Thread(target=TokenAutomaton.from_regex, args=(f"(yes|no){i}",
                                                                        lm.tokenizer))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_schema_files_that_are_no_text_or_too_deep_are_refused(tmp_path):
    from tfllm.models.token_automaton import read_schema_file

    path = tmp_path / "s.json"
    path.write_text('{"type": "string", "const": "a\\ud800"}')
    with pytest.raises(ConstraintError, match=r"s.json is not valid JSON: a string holds the "
                                              r"lone UTF-16 surrogate \\ud800"):
        read_schema_file(str(path))
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConstraintError, match="is not valid JSON: nested too deeply"):
        read_schema_file(str(path))
    path.write_text('{"type": "array", "items": ' * 70 + '{"type": "string"}' + "}" * 70)
    with pytest.raises(ConstraintError, match="nests more than 64 levels"):
        read_schema_file(str(path))


def test_estimated_states_write_out_counted_repetitions():
    from tfllm.models.automaton_worker import estimated_states

    assert estimated_states("a{3}") == 3 and estimated_states("(ab){2,5}") == 10
    assert estimated_states("x*") == 1 and estimated_states("(yes|no)") == 5
    assert estimated_states("(a{10}){10}b") == 101
    assert estimated_states(r"\p{L}+") is None  # Rust syntax Python does not read


def test_the_constraint_cache_keeps_the_recently_used(llama, monkeypatch):
    from tfllm.models import generation

    _, lm = llama
    monkeypatch.setattr(generation, "CONSTRAINT_CACHE_ENTRIES", 3)
    first = generation.constraint_of(lm, regex="a")
    for word in ("b", "c", "d"):
        generation.constraint_of(lm, regex=word)
    cache = generation._CONSTRAINTS[lm]
    assert [k for _, k in cache] == ["b", "c", "d"]  # "a", least recently used, left
    assert generation.constraint_of(lm, regex="c") is cache[("regex", "c")]
    assert [k for _, k in cache] == ["b", "d", "c"]
    assert generation.constraint_of(lm, regex="a") is not first  # compiled again


def test_cli_prints_the_outputs_alone(llama, tmp_path):
    run, _ = llama
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMAS[1]), encoding="utf-8")
    done = call_cli(["generate", "--run", run, "--prompt", "a", "--prompt", "b",
                     "--json-schema", str(path), "--max-new-tokens", "40"])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMAS[1])
    path.write_text('{"type": "object", "properties": {"a": {"uniqueItems": true}}}')
    bad = call_cli(["generate", "--run", run, "--prompt", "a", "--json-schema", str(path)])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "'uniqueItems'" in bad.stderr and "Traceback" not in bad.stderr
    both = call_cli(["generate", "--run", run, "--regex", "a", "--json-schema", str(path)])
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_chat_cli_replies_under_the_schema_turn_after_turn(llama, tmp_path):
    run, _ = llama
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMAS[1]), encoding="utf-8")
    done = call_cli(["chat", "--run", run, "--template", "chatml", "--message", "a",
                     "--message", "and b?", "--json-schema", str(path),
                     "--max-new-tokens", "40"])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMAS[1])
    regex = call_cli(["chat", "--run", run, "--template", "chatml", "--message", "a",
                      "--regex", "(yes|no)", "--max-new-tokens", "8"])
    assert regex.returncode == 0 and regex.stdout.strip() in ("yes", "no"), regex.stderr
    short = call_cli(["chat", "--run", run, "--template", "chatml", "--message", "a",
                      "--json-schema", str(path), "--max-new-tokens", "3"])
    assert short.returncode == 2 and "max_new_tokens is 3" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option, message", [
    ("flags", "is not NAME=FILE"),
    ("flags={missing}", "cannot read it"),
    ("flags={keyword}", "keyword 'uniqueItems'"),
    ("9flags={good}", "name '9flags' cannot name a signature"),
    ("flags={good} --json-schema flags={good}", "is given twice"),
], ids=["form", "missing", "keyword", "name", "twice"])
def test_export_refuses_bad_json_schema_options(llama, tmp_path, option, message):
    """A one-line error (after argparse's usage, for its own) and status 2, before
    anything is written."""
    run, _ = llama
    (tmp_path / "good.json").write_text(json.dumps(SCHEMAS[1]))
    (tmp_path / "keyword.json").write_text('{"type": "array", "uniqueItems": true}')
    option = option.format(missing=tmp_path / "nope.json", keyword=tmp_path / "keyword.json",
                           good=tmp_path / "good.json")
    out = tmp_path / "models"
    options = [x for part in option.split(" --json-schema ") for x in ("--json-schema", part)]
    done = call_module("export.saved_model", "--run", run, "--out", str(out), *options)
    assert done.returncode == 2, done.stdout[-2000:]
    assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_different_constraint_per_row(llama):
    """One loop, each row following its own automaton (their union); a row decodes what
    it decodes alone under its schema."""
    _, lm = llama
    schemas = [SCHEMAS[2], SCHEMAS[0], SCHEMAS[1], SCHEMAS[2]]
    sampled = lm.generate(PROMPTS[:4], max_new_tokens=48, json_schema=schemas,
                          temperature=1.0, seed=2)
    for text, schema in zip(sampled, schemas):
        jsonschema.validate(json.loads(text), schema)
    # Greedy, two rows: each as it decodes alone (a batch of one) under its schema.
    alone = [lm.generate(PROMPTS[i], max_new_tokens=48, json_schema=schemas[i])
             for i in range(2)]
    assert lm.generate(PROMPTS[:2], max_new_tokens=48, json_schema=schemas[:2]) == alone
    texts = lm.generate(PROMPTS[:2], max_new_tokens=8, regex=["(yes|no)", "[0-9]{3}"])
    assert texts[0] in ("yes", "no") and re.fullmatch("[0-9]{3}", texts[1])
    with pytest.raises(GenerationError, match="2 per-row constraints for 4 prompts"):
        lm.generate(PROMPTS[:4], max_new_tokens=8, regex=["a", "b"])
