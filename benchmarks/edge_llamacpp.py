"""llama.cpp's side of `benchmarks/edge.py --model smollm2-135m`; runs in a venv of its own
that has `llama-cpp-python` (never tfllm's).

    python benchmarks/edge_llamacpp.py --gguf FILE --job job.json

job.json: {"prompt": [ids], "new_tokens": N, "threads": T, "windows": [[ids], ...]}.
Prints one JSON line: prefill and decode tokens/s (greedy, the model's own logits), the
greedy tokens, each window's next-token argmax (teacher-forced), and peak RSS.
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--job", required=True)
    args = parser.parse_args()
    with open(args.job) as f:
        job = json.load(f)
    from llama_cpp import Llama

    prompt, new = job["prompt"], job["new_tokens"]
    ctx = len(prompt) + new + 8
    llm = Llama(model_path=args.gguf, n_ctx=max(ctx, max(map(len, job["windows"])) + 8),
                n_threads=job["threads"], n_threads_batch=job["threads"], n_batch=512,
                logits_all=True, verbose=False)
    # One untimed pass: weights paged in, kernels warmed, as in every side of the benchmark.
    llm.reset()
    llm.eval(prompt[:16])
    prefill, decode, tokens = [], [], []
    for _ in range(job.get("reps", 3)):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - start))
        tokens = []
        start = time.perf_counter()
        for _ in range(new):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
            llm.eval([token])
        decode.append(new / (time.perf_counter() - start))
    argmaxes = []
    for window in job["windows"]:
        llm.reset()
        llm.eval(window)
        argmaxes.append(np.argmax(llm.scores[:len(window)], axis=-1).tolist())
    print(json.dumps({"prefill_tps": float(np.median(prefill)),
                      "decode_tps": float(np.median(decode)), "tokens": tokens,
                      "window_argmax": argmaxes,
                      "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib():
    """VmHWM: a fork's ru_maxrss would start at its parent's peak, exec or not."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


if __name__ == "__main__":
    main()
