"""Shared fixtures: paths to the shared data and a tiny trained run reused across tests."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test data lives beside the repo, never in it; TFLLM_SHARED_DATA overrides the location.
SHARED_DATA = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
SHAKESPEARE = os.path.join(SHARED_DATA, "tiny_shakespeare")
os.environ.setdefault("TFDS_MANUAL_DIR", SHAKESPEARE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A small model with every feature of the real ones; fast enough for many tests.
TINY = dict(num_layers=2, d_model=32, num_heads=2, ffn_dim=64, max_len=32, dropout=0.0)


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_corpus):
    """A tiny causal LM trained for 300 steps on the small corpus (a real, if weak, model)."""
    from tfllm.training import TrainSettings, train

    out = str(tmp_path_factory.mktemp("runs") / "tiny")
    train(out, small_corpus, "shakespeare-char",
          TrainSettings(steps=300, batch_size=16, eval_interval=100, eval_steps=7,
                        warmup_steps=20, lr=3e-3),
          model_overrides=TINY, verbose=0)
    return out


def run_cli(args, env=None, timeout=600):
    """Run `python -m tfllm.cli ARGS` in a fresh process; returns CompletedProcess."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tfllm.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_run):
    """The tiny run exported by the CLI as models/tiny/1 (verified by the exporter)."""
    import subprocess

    base = tmp_path_factory.mktemp("models")
    proc = subprocess.run([sys.executable, "-m", "export.saved_model", "--run", tiny_run,
                           "--out", str(base), "--name", "tiny", "--version", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {"base": str(base), "model_dir": str(base / "tiny"),
            "path": str(base / "tiny" / "1"), "stdout": proc.stdout}
