"""GLUE SST-2 quality: a classifier from scratch vs masked-LM pretraining + fine-tuning.

    python benchmarks/sst2.py [--out runs/bench-sst2] [--mlm-steps N] [--epochs E]

Both use the bert-mini preset (context 64: SST-2's longest row is 60 tokens) on
`$TFLLM_SHARED_DATA/sst2/train.tsv` (default ../shared/data), with tfllm's seeded 10%
hold-out as validation (GLUE's own dev set is not in the shared data):

  (a) `tfllm finetune --from-scratch` on the labeled rows;
  (b) `tfllm train --objective mlm` on the same rows' sentences (labels unused), then
      `tfllm finetune --run` of that encoder.

The last line printed is one JSON object: accuracies and the minutes each spent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=f"tsv:{os.path.join(SHARED, 'sst2', 'train.tsv')}")
    p.add_argument("--out", default="runs/bench-sst2", help="parent of the three run dirs")
    p.add_argument("--mlm-steps", type=int, default=600)
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--only", choices=("scratch", "pretrained"), help="run one of the two")
    args = p.parse_args(argv)

    from tfllm.finetuning import FinetuneSettings, evaluate_classifier, finetune
    from tfllm.training import TrainSettings, train

    ft = FinetuneSettings(epochs=args.epochs, eval_interval=300, patience=2)
    result = {"data": args.data, "preset": "bert-mini", "max_len": args.max_len}
    if args.only != "pretrained":
        start = time.time()
        out = os.path.join(args.out, "scratch")
        finetune(out, args.data, from_scratch=True, preset="bert-mini", settings=ft,
                 model_overrides={"max_len": args.max_len}, overwrite=True, verbose=2)
        result["scratch_accuracy"] = evaluate_classifier(out)["accuracy"]
        result["scratch_minutes"] = round((time.time() - start) / 60, 2)
        print(json.dumps(result), flush=True)
    if args.only != "scratch":
        start = time.time()
        mlm = os.path.join(args.out, "mlm")
        train(mlm, args.data, "bert-mini",
              TrainSettings(steps=args.mlm_steps, batch_size=32, lr=1e-3,
                            warmup_steps=args.mlm_steps // 10,
                            eval_interval=args.mlm_steps // 2, eval_steps=20),
              model_overrides={"max_len": args.max_len}, overwrite=True, verbose=2,
              objective="mlm")
        result["mlm_minutes"] = round((time.time() - start) / 60, 2)
        out = os.path.join(args.out, "pretrained")
        finetune(out, args.data, run=mlm, settings=ft, overwrite=True, verbose=2)
        result["pretrained_accuracy"] = evaluate_classifier(out)["accuracy"]
        result["pretrained_minutes"] = round((time.time() - start) / 60, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
