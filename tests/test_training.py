import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfllm
import tfllm.models  # noqa: F401  (registers the classes keras.saving.load_model needs)
from tests.conftest import REPO, TINY, call_cli, shakespeare_text
from tfllm.cli import main
from tfllm.config import ConfigError
from tfllm.tasks import train
from tfllm.tasks.lm.evaluate import evaluate_lm as evaluate
from tfllm.training import (
    MetricsLogger, StrategyError, TrainingDivergedError, TrainSettings, read_metrics,
    resolve_strategy_name
)

# -- settings and strategies --------------------------------------------------------------

def test_strategy_auto_resolution(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert resolve_strategy_name("auto") == "default"
    assert resolve_strategy_name("auto", tpu="grpc://10.0.0.1:8470") == "tpu"
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    assert resolve_strategy_name("auto") == "multiworker"
    assert resolve_strategy_name("mirrored") == "mirrored"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="TF_CONFIG"):
        resolve_strategy_name("auto")


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "--steps"), (dict(batch_size=-1), "--batch-size"), (dict(lr=0), "--lr"),
    (dict(strategy="horovod"), "unknown strategy"), (dict(precision="int8"), "precision"),
    (dict(steps=100, eval_interval=30), "multiple of --eval-interval"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainSettings(**kwargs)


# -- a trained run directory --------------------------------------------------------------

def test_run_directory_contents(tiny_run):
    for name in ("config.json", "tokenizer.model", "model.keras", "best.weights.h5",
                 "metrics.jsonl", "backup", "logs"):
        assert os.path.exists(os.path.join(tiny_run, name)), name
    with open(os.path.join(tiny_run, "config.json")) as f:
        config = json.load(f)
    assert config["preset"] == "shakespeare-char"
    assert config["model"]["d_model"] == TINY["d_model"]
    # Character vocabulary: the training part's characters (90% of 60k) + 4 specials.
    assert config["model"]["vocab_size"] == len(set(shakespeare_text(54_000))) + 4
    assert config["training"]["steps"] == 300
    records = read_metrics(tiny_run)
    assert [r["step"] for r in records] == [100, 200, 300]
    assert records[-1]["val_loss"] < records[0]["val_loss"] < math.log(68)
    # lr follows warmup + cosine: at the end it is min_lr_ratio * peak.
    assert records[-1]["lr"] == pytest.approx(3e-4, rel=1e-3)
    assert all(r["tokens_per_sec"] > 0 for r in records)
    # The logged validation loss is exactly `evaluate` on the same held-out batches (7
    # batches do not divide Keras' 50 steps per execution: none may be counted twice).
    again = evaluate(tiny_run, eval_steps=7)
    assert records[-1]["val_loss"] == pytest.approx(again["loss"], abs=2e-5)


def test_load_attaches_tokenizer(tiny_run):
    lm = tfllm.load(tiny_run)
    assert lm.tokenizer.decode(lm.tokenizer.encode("ROMEO:\n")) == "ROMEO:\n"
    assert lm.backbone.d_model == TINY["d_model"]
    best = tfllm.load(tiny_run, weights="best")
    assert best.count_params() == lm.count_params()


# -- command-line errors: one line, non-zero exit, nothing overwritten --------------------

@pytest.mark.parametrize("args, match", [
    (["--preset", "gpt5"], "invalid choice: 'gpt5'"),
    (["--strategy", "horovod"], "invalid choice: 'horovod'"),
    (["--steps", "0"], "must be a positive integer"),
    (["--batch-size", "-4"], "must be a positive integer"),
    (["--lr", "0"], "must be a positive finite number"),
    (["--lr", "inf"], "must be a positive finite number"),
    (["--lr", "nan"], "must be a positive finite number"),
    (["--weight-decay", "nan"], "must be a finite number"),
    (["--warmup-steps", "-1"], "must be an integer >= 0"),
])
def test_cli_argument_errors(args, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "tfds:tiny_shakespeare", "--out", str(tmp_path / "r"), *args])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def _train_error(args, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_run_errors(tmp_path, capsys, small_corpus, tiny_run):
    out = str(tmp_path / "r")
    err = _train_error(["--data", f"text:{tmp_path}/none/*.txt", "--out", out], capsys)
    assert "no files match" in err
    err = _train_error(["--data", "tfds:not_a_dataset", "--out", out], capsys)
    assert "unknown TFDS dataset 'not_a_dataset'" in err
    err = _train_error(["--data", "tfds:tiny_shakespeare", "--text-feature", "body",
                        "--out", out], capsys)
    assert "no feature 'body'" in err
    err = _train_error(["--resume", "--data", small_corpus, "--out", out], capsys)
    assert "--resume" in err and "does not exist" in err
    (tmp_path / "short.txt").write_text("too short")
    err = _train_error(["--data", f"text:{tmp_path}/short.txt", "--out", out], capsys)
    assert "shorter than one window" in err
    # An existing run is never overwritten without --overwrite ...
    before = os.path.getmtime(os.path.join(tiny_run, "model.keras"))
    err = _train_error(["--data", small_corpus, "--out", tiny_run], capsys)
    assert "--resume" in err and "--overwrite" in err
    # ... and cannot be resumed with another model config.
    err = _train_error(["--resume", "--preset", "baby-gpt", "--out", tiny_run], capsys)
    assert "another model config" in err
    assert os.path.getmtime(os.path.join(tiny_run, "model.keras")) == before
    assert main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: tfllm" in capsys.readouterr().out


# -- distribution -------------------------------------------------------------------------

@pytest.mark.slow
def test_mirrored_two_cpus_matches_default_strategy():
    proc = subprocess.run([sys.executable, "tests/scripts/mirrored_vs_default.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mirrored_sgd"]["replicas"] == 2
    assert result["default_sgd"]["jit"] and not result["mirrored_sgd"]["jit"]
    for opt in ("sgd", "adamw"):
        default = result[f"default_{opt}"]["losses"]
        mirrored = result[f"mirrored_{opt}"]["losses"]
        assert len(default) == 5 and default[-1] < default[0] - 0.1  # it trained
        np.testing.assert_allclose(mirrored, default, rtol=1e-4, err_msg=opt)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_two_processes_end_with_identical_weights(tmp_path, small_corpus):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        cmd = [sys.executable, "-m", "tfllm.cli", "train", "--data", small_corpus,
               "--out", str(tmp_path / f"w{i}"), "--steps", "6", "--eval-interval", "3",
               "--eval-steps", "2", "--batch-size", "4",  # strategy auto -> multiworker
               "--max-len", "64"]  # a quarter of the preset's context: the same collectives
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      env=dict(os.environ, TF_CONFIG=json.dumps(tf_config))))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    m0 = keras.saving.load_model(str(tmp_path / "w0" / "model.keras"))
    m1 = keras.saving.load_model(str(tmp_path / "w1" / "model.keras"))
    assert int(m0.optimizer.iterations) == int(m1.optimizer.iterations) == 6
    fresh = tfllm.load(str(tmp_path / "w0")).__class__.from_config(m0.get_config())
    moved = False
    for a, b, c in zip(m0.get_weights(), m1.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
        moved |= not np.array_equal(a, c)
    assert moved
    # Global batch = per-replica batch x 2 workers.
    assert read_metrics(str(tmp_path / "w0"))[-1]["tokens_per_sec"] > 0


# -- fault tolerance ----------------------------------------------------------------------

def _strict_json(line):
    def refuse(token):
        raise ValueError(f"bare {token} in metrics.jsonl")
    return json.loads(line, parse_constant=refuse)


class _PoisonAt(keras.callbacks.Callback):
    """Makes every weight NaN at the start of interval `epoch`: a run that diverges there."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            for v in self.model.trainable_weights:
                v.assign(np.full(v.shape, np.nan, "float32"))


def _finite_file(path):
    import h5py

    with h5py.File(path) as f:
        arrays = []
        f.visit(lambda name: arrays.append(f[name][()]) if isinstance(f[name], h5py.Dataset)
                else None)
    return bool(arrays) and all(np.isfinite(a).all() for a in arrays
                                if np.issubdtype(np.asarray(a).dtype, np.floating))


def test_divergence_keeps_the_last_finite_state(tmp_path, small_corpus):
    out = str(tmp_path / "run")
    # No XLA: these few steps would spend most of their time compiling.
    settings = TrainSettings(steps=6, batch_size=4, eval_interval=2, eval_steps=2,
                             jit_compile=False)
    with pytest.raises(TrainingDivergedError) as e:
        train(out, small_corpus, "shakespeare-char", settings, model_overrides=TINY,
              verbose=0, extra_callbacks=[_PoisonAt(2)])
    message = str(e.value)
    # Intervals 1 and 2 (steps 2 and 4) were finite; the third diverged.
    assert e.value.last_good_step == 4
    assert "last finite state (step 4)" in message and "backup" in message
    assert "--resume" in message
    backup = os.path.join(out, "backup")
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2
    assert _finite_file(os.path.join(backup, "latest.weights.h5"))
    assert _finite_file(os.path.join(out, "best.weights.h5"))
    assert not os.path.exists(os.path.join(out, "model.keras"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [_strict_json(line) for line in f]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[-1]["loss"] is None and records[0]["loss"] > 0
    # The run continues from the finite state.
    result = train(out, small_corpus, "shakespeare-char", settings, model_overrides=TINY,
                   verbose=0, resume=True)
    assert math.isfinite(result["loss"]) and result["step"] == 6


def test_metrics_logger_writes_null_for_non_finite(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    logger = MetricsLogger(path, 10, 100)
    logger.set_model(keras.Sequential([keras.layers.Dense(1)]))
    logger.model.compile(optimizer="sgd")
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    logger.on_epoch_end(0, {"loss": float("nan"), "val_loss": float("inf"), "accuracy": 0.5})
    with open(path) as f:
        record = _strict_json(f.read())
    assert record["loss"] is None and record["val_loss"] is None and record["accuracy"] == 0.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=float("inf")), "--lr must be a finite number"),
    (dict(lr=float("nan")), "--lr must be a finite number"),
    (dict(lr=5.0), "--lr must be a finite number in \\(0, 1\\]"),
    (dict(min_lr_ratio=float("nan")), "--min-lr-ratio"),
    (dict(weight_decay=-1.0), "--weight-decay"),
    (dict(warmup_steps=-3), "--warmup-steps"),
])
def test_non_finite_or_absurd_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainSettings(**kwargs)


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_last_saved_step(tmp_path, small_corpus):
    out = str(tmp_path / "run")
    # Five intervals (each ends with an evaluation and a checkpoint): killed after two.
    args = ["train", "--data", small_corpus, "--out", out, "--steps", "100",
            "--eval-interval", "20", "--eval-steps", "2", "--batch-size", "4", "--lr", "2e-3"]
    proc = subprocess.Popen([sys.executable, "-m", "tfllm.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline:
        if os.path.exists(metrics) and len(read_metrics(out)) >= 2:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(os.path.join(out, "backup", "training_metadata.json")) as f:
        saved_epochs = json.load(f)["epoch"]
    steps_before = [r["step"] for r in read_metrics(out)]
    assert 2 <= saved_epochs < 5 and not os.path.exists(os.path.join(out, "model.keras"))

    done = call_cli(["train", "--resume", "--out", out])
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(out)
    resumed = records[len(steps_before):]
    # Continues at the first interval after the saved one and runs to the end.
    assert resumed[0]["step"] == (saved_epochs + 1) * 20
    assert resumed[-1]["step"] == 100
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert int(model.optimizer.iterations) == 100
    # The learning rate resumed on schedule (it depends on the restored iteration count).
    sched = model.optimizer._learning_rate
    # metrics.jsonl rounds to 6 decimals.
    assert resumed[0]["lr"] == pytest.approx(float(sched(resumed[0]["step"])), abs=1e-6)
