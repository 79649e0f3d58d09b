"""The mlm task: pretraining an encoder on masked tokens, its evaluation, and fine-tuning it
(and a causal run) into classifiers."""

import json
import os

import numpy as np
import pytest

from tests.conftest import FAST_FINETUNE, TINY_ENCODER, labeled_rows, write_tsv
from tfllm.tasks.classify.finetune import FinetuneSettings, finetune


@pytest.mark.slow
def test_mlm_pretraining_then_finetune(tmp_path, labeled_tsv, tiny_run):
    from tfllm.tasks import train
    from tfllm.tasks.mlm.evaluate import evaluate_mlm as evaluate
    from tfllm.training import TrainSettings, read_metrics

    mlm = str(tmp_path / "mlm")
    train(mlm, labeled_tsv, "bert-mini",
          TrainSettings(steps=120, batch_size=8, eval_interval=60, eval_steps=2,
                        warmup_steps=10, lr=3e-3),
          # Context 32 holds a whole row ("a superb and lovely film" + BOS): at 16 the
          # second word was cut off and the from-MLM classifier sometimes missed a row.
          model_overrides=dict(TINY_ENCODER, max_len=32), verbose=0, objective="mlm")
    records = read_metrics(mlm)
    assert records[-1]["loss"] < records[0]["loss"]
    result = evaluate(mlm)
    # Masked characters are predicted well above chance (1 / ~25 characters).
    assert result["tokens"] > 0 and result["accuracy"] > 0.1, result
    assert abs(result["loss"] - np.log(result["perplexity"])) < 1e-3
    # The encoder's masked-LM run and the causal LM both fine-tune into classifiers. More
    # rows than the 6-row hold-out of labeled_tsv, where one missed row is a 17% swing.
    data = write_tsv(tmp_path / "more.tsv", labeled_rows(200, seed=1))
    settings = FinetuneSettings(**dict(FAST_FINETUNE, epochs=6))
    for name, base in (("from-mlm", mlm), ("from-clm", tiny_run)):
        out = str(tmp_path / name)
        got = finetune(out, data, run=base, settings=settings, verbose=0)
        assert got["val_rows"] == 20 and got["val_accuracy"] >= 0.95, (name, got)
        task = json.load(open(os.path.join(out, "config.json")))["task"]
        assert task["pooling"] == ("first" if base == mlm else "last")
