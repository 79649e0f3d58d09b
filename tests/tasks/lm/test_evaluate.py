"""The lm task's evaluation: loss and perplexity over validation windows, and its CLI."""

import json
import math
import os

import keras
import numpy as np
import pytest

import tfllm
import tfllm.models
from tfllm.cli import main
from tfllm.tasks.lm.evaluate import evaluate_lm as evaluate


def test_evaluate_matches_a_manual_computation(tiny_run):
    result = evaluate(tiny_run, eval_steps=3, batch_size=4)
    lm = tfllm.load(tiny_run)
    from tfllm.data import Corpus
    from tfllm.data.windows import make_lm_dataset

    corpus = Corpus(json.load(open(os.path.join(tiny_run, "config.json")))["data"]["spec"])
    ds = make_lm_dataset(corpus.val_texts(), lm.tokenizer, 32, 4, training=False).take(3)
    losses = [keras.losses.sparse_categorical_crossentropy(y, lm(x), from_logits=True).numpy()
              for x, y in ds]
    manual = float(np.mean(np.concatenate([l.ravel() for l in losses])))
    assert result["loss"] == pytest.approx(manual, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(manual), rel=1e-3)
    assert result["tokens"] == 3 * 4 * 32


def test_evaluate_cli_last_line_is_json(tiny_run, capsys):
    assert main(["evaluate", "--run", tiny_run, "--eval-steps", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(out[-1])
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-3)
    assert any(line.startswith("validation loss:") for line in out)
