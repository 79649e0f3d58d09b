"""Latency of the exported SavedModel's `generate` signature vs `CausalLM.generate`.

Exports the run (unverified, into a temporary directory), loads it with
`tf.saved_model.load` and times greedy generation of the same prompts through both paths,
alternately, several repetitions, median. Target: the SavedModel is no slower than 1.25x.

    python benchmarks/serving_latency.py --run runs/demo [--reps 7] [--max-new-tokens 32]

The last line of output is one JSON object with the figures.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

import tfllm  # noqa: E402
from export.saved_model import export_saved_model  # noqa: E402

PROMPTS = ["ROMEO:", "First Citizen:\n", "KING HENRY:\nWhat", "O", "JULIET:\nAy", "Thou art",
           "MENENIUS:\n", "Good"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="run directory (make demo makes one)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    lm = tfllm.load(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_saved_model(args.run, tmp, "bench", 1, verify=False)
        sig = tf.saved_model.load(path).signatures["generate"]
        results = {}
        for batch in (1, 8):
            prompts = PROMPTS[:batch]
            n = args.max_new_tokens
            feed = dict(prompt=tf.constant(prompts), max_new_tokens=tf.fill([batch], n),
                        temperature=tf.zeros([batch]), top_k=tf.zeros([batch], tf.int32),
                        top_p=tf.ones([batch]), seed=tf.zeros([batch], tf.int32))
            runners = {
                "python": lambda: lm.generate(prompts, max_new_tokens=n),
                "saved_model": lambda: [t.decode("utf-8", "replace") for t in sig(**feed)["text"].numpy()],
            }
            assert runners["python"]() == runners["saved_model"](), "paths disagree"
            times = {k: [] for k in runners}
            for _ in range(args.reps):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            results[f"batch_{batch}"] = {
                "python_ms": round(med["python"] * 1e3, 2),
                "saved_model_ms": round(med["saved_model"] * 1e3, 2),
                "ratio": round(med["saved_model"] / med["python"], 3),
            }
            print(f"batch {batch}: python {med['python'] * 1e3:.1f} ms, "
                  f"SavedModel {med['saved_model'] * 1e3:.1f} ms", flush=True)
    print(json.dumps({"benchmark": "serving_latency", "run": args.run,
                      "max_new_tokens": args.max_new_tokens, "reps": args.reps, **results}))


if __name__ == "__main__":
    main()
