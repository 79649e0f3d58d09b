"""Shared fixtures: paths to the shared data and a tiny trained run reused across tests."""

import collections
import json
import os
import random
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test data lives beside the repo, never in it; TFLLM_SHARED_DATA overrides the location.
SHARED_DATA = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
SHAKESPEARE = os.path.join(SHARED_DATA, "tiny_shakespeare")
os.environ.setdefault("TFDS_MANUAL_DIR", SHAKESPEARE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA compiles without LLVM's optimizations and with its classic elemental emitters (the
# same computations, slower code; float rounding may differ in the last bits, so a model
# trained here differs slightly from one trained with the defaults): the test models are
# tiny, so compiling costs far more than running. The default fusion emitters build MLIR
# contexts for every compile: a new decode-loop shape of the tiny model took 3.1 s to
# compile by default, 2.1 s at level 0 and 0.9 s with both (generation + SavedModel tests
# at level 0 alone: 303 -> 225 CPU s).
# Fresh processes inherit it.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_cpu_use_fusion_emitters=false")
# In-process `tfllm.cli.main` calls must leave pytest's own capture of fd 2 alone; tests of
# the quiet terminal run their command in a subprocess without this variable.
os.environ.setdefault("TFLLM_LOG_LEVEL", "info")

# A small model with every feature of the real ones; fast enough for many tests.
TINY = dict(num_layers=2, d_model=32, num_heads=2, ffn_dim=64, max_len=32, dropout=0.0)


def snapshot(path):
    """{relative path: bytes} of every file under a directory, or a file's bytes: what a
    failed command must leave as it was."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def shakespeare_text(n_chars=None):
    with open(os.path.join(SHAKESPEARE, "input.txt"), encoding="utf-8") as f:
        text = f.read()
    return text[:n_chars] if n_chars else text


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A text: data spec over the first 60k characters of tiny Shakespeare."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "part1.txt").write_text(shakespeare_text(30_000), encoding="utf-8")
    (d / "part2.txt").write_text(shakespeare_text(60_000)[30_000:], encoding="utf-8")
    return f"text:{d}/*.txt"


def shared_across_workers(tmp_path_factory, name, build):
    """(folder, value) of `build(folder)`, built once for the whole test run; `value` is
    what build returns (JSON: it crosses processes).

    pytest-xdist gives each worker its own session, so a session fixture used in files on
    both workers was built twice: twice the CPU on the 2-core machines `make test` runs on.
    The first worker to ask builds it under the run's shared temporary root, holding a lock
    the other waits on; a build that failed leaves no "done" file and is tried again.
    """
    import fcntl
    import json
    import shutil

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = str(tmp_path_factory.mktemp(name))
        return folder, build(folder)
    root = tmp_path_factory.getbasetemp().parent  # shared by this run's workers
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            value = build(str(folder))
            done.write_text(json.dumps(value), encoding="utf-8")
    return str(folder), json.loads(done.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_corpus):
    """A tiny causal LM trained for 300 steps on the small corpus (a real, if weak, model)."""

    def build(folder):
        from tfllm.tasks import train
        from tfllm.training import TrainSettings

        train(os.path.join(folder, "tiny"), small_corpus, "shakespeare-char",
              TrainSettings(steps=300, batch_size=16, eval_interval=100, eval_steps=7,
                            warmup_steps=20, lr=3e-3),
              model_overrides=TINY, verbose=0)

    return os.path.join(shared_across_workers(tmp_path_factory, "tiny-run", build)[0], "tiny")


def quiet_env():
    """The environment a user's terminal has: native logs quieted (the default)."""
    return {k: v for k, v in os.environ.items() if k != "TFLLM_LOG_LEVEL"}


def run_cli(args, env=None, timeout=600):
    """Run `python -m tfllm.cli ARGS` in a fresh process; returns CompletedProcess."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tfllm.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=REPO)


def call_module(module, *args):
    """`python -m MODULE ARGS` run in this process: a CompletedProcess as a fresh process's
    (exit status, stdout, stderr). A fresh process costs 5-8 s of TensorFlow import and run
    loading on the 2-core test machines (minutes of `make test` over the CLI tests); tests
    of what a terminal sees (native log lines, a killed process, a process's memory) keep
    subprocesses."""
    import contextlib
    import importlib
    import io
    import subprocess

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = importlib.import_module(module).main(list(args))
        except SystemExit as e:  # argparse's usage errors
            status = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess([module, *args], status or 0, out.getvalue(),
                                       err.getvalue())


def call_cli(args):
    """`tfllm ARGS` run in this process (see call_module)."""
    return call_module("tfllm.cli", *args)


def run_module(module, *args):
    """`python -m MODULE ARGS` run in this process; returns its stdout, after asserting a
    zero exit status."""
    done = call_module(module, *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


YES_SCHEMA = {"type": "boolean"}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_run):
    """The tiny run exported by the CLI as models/tiny/1 (verified by the exporter, its
    generate_yes signature under YES_SCHEMA too). In this process: test_packaging checks
    what a terminal sees of a SavedModel export."""
    def build(folder):
        # A JSON schema the character vocabulary can spell (#36): generate_yes answers
        # true or false.
        schema = os.path.join(folder, "yes.schema.json")
        with open(schema, "w") as f:
            json.dump(YES_SCHEMA, f)
        return run_module("export.saved_model", "--run", tiny_run, "--out", folder,
                          "--name", "tiny", "--version", "1", "--json-schema", f"yes={schema}")

    base, stdout = shared_across_workers(tmp_path_factory, "tiny-models", build)
    return {"base": base, "model_dir": os.path.join(base, "tiny"),
            "path": os.path.join(base, "tiny", "1"), "stdout": stdout}


# -- chat ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chat_runs(tmp_path_factory):
    """A base run, a LoRA chat run and a fully fine-tuned chat run of it."""
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat

    from tests.chat_fixtures import make_base_run, write_pairs_tsv

    def build(folder):
        base = make_base_run(os.path.join(folder, "base"))
        data = write_pairs_tsv(os.path.join(folder, "pairs.tsv"))
        common = dict(prompt_column="en", response_column="fr",
                      prompt_template="Translate to French: {en}", verbose=0)
        return {"base": base, "data": data, "lora": os.path.join(folder, "lora"),
                "full": os.path.join(folder, "full"),
                "lora_result": finetune_chat(os.path.join(folder, "lora"), data, base,
                                             ChatSettings(steps=60, eval_interval=20,
                                                          batch_size=16, lr=1e-2,
                                                          lora_rank=2), **common),
                "full_result": finetune_chat(os.path.join(folder, "full"), data, base,
                                             ChatSettings(steps=300, eval_interval=50,
                                                          batch_size=16, lr=3e-3),
                                             **common)}

    return shared_across_workers(tmp_path_factory, "chat-runs", build)[1]


# -- classification ------------------------------------------------------------------

# A tiny labeled set (two word lists) that a tiny encoder fits exactly.
FAST_FINETUNE = dict(epochs=40, batch_size=8, lr=3e-3, eval_interval=20, patience=40,
                     dropout=0.0)
POS = ["good", "great", "lovely", "superb", "fine", "happy"]
NEG = ["bad", "awful", "dull", "poor", "sad", "boring"]
# A char tokenizer keeps the tiny model's vocabulary small.
TINY_ENCODER = dict(TINY, causal=False, tokenizer="char")


def labeled_rows(n=60, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(POS if label == "pos" else NEG, 2)
        rows.append((f"a {words[0]} and {words[1]} film", label))
    return rows


def write_tsv(path, rows, header="text\tlabel"):
    path.write_text(header + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return f"tsv:{path}"


@pytest.fixture(scope="session")
def labeled_tsv(tmp_path_factory):
    return write_tsv(tmp_path_factory.mktemp("labeled") / "reviews.tsv", labeled_rows())


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, labeled_tsv):
    from tfllm.tasks.classify.finetune import FinetuneSettings, finetune

    def build(folder):
        return finetune(os.path.join(folder, "clf"), labeled_tsv, from_scratch=True,
                        preset="bert-mini", settings=FinetuneSettings(**FAST_FINETUNE),
                        model_overrides=TINY_ENCODER, verbose=0)

    folder, result = shared_across_workers(tmp_path_factory, "tiny-classifier", build)
    return os.path.join(folder, "clf"), result


def pytest_collection_modifyitems(session, config, items):
    """Files with the most slow tests run first. `make test` hands whole files to its two
    xdist workers in collection order (--dist loadfile); started last, a file of long
    exports kept one worker busy for minutes after the other had finished. Longest first
    ends them together. The order within a file is kept."""
    slow = collections.Counter(str(item.fspath) for item in items
                               if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[str(item.fspath)])
