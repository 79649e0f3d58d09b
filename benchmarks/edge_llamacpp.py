"""llama.cpp's side of `benchmarks/edge.py --model smollm2-135m`; runs in a venv of its own
that has `llama-cpp-python` (never tfllm's).

    python benchmarks/edge_llamacpp.py --gguf FILE --job job.json [--serve]

job.json: {"prompt": [ids], "new_tokens": N, "threads": T, "windows": [[ids], ...]}.
Prints one JSON line: prefill and decode tokens/s (greedy, the model's own logits), the
greedy tokens, each window's next-token argmax (teacher-forced), and peak RSS. With
`--serve` it then stays loaded and times one more prefill + decode per line read from
stdin (one JSON line each; peak RSS at end of input), so the benchmark can interleave its
sides round by round.
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--serve", action="store_true",
                        help="after the job, time one prefill + decode per stdin line")
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
        rates, tokens = timed_generation(llm, prompt, new)
        prefill.append(rates[0])
        decode.append(rates[1])
    argmaxes = []
    for window in job["windows"]:
        llm.reset()
        llm.eval(window)
        argmaxes.append(np.argmax(llm.scores[:len(window)], axis=-1).tolist())
    print(json.dumps({"prefill_tps": float(np.median(prefill)),
                      "decode_tps": float(np.median(decode)), "tokens": tokens,
                      "window_argmax": argmaxes,
                      "peak_rss_mib": peak_rss_mib()}), flush=True)
    if args.serve:
        for _ in iter(input_line, ""):
            (p, d), _ = timed_generation(llm, prompt, new)
            print(json.dumps({"prefill_tps": p, "decode_tps": d}), flush=True)
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)


def input_line():
    import sys

    return sys.stdin.readline()


def timed_generation(llm, prompt, new):
    """Greedy: prefill `prompt`, then `new` tokens one by one; ((prefill, decode) tokens/s,
    tokens)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - start)
    tokens = []
    start = time.perf_counter()
    for _ in range(new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return (prefill, new / (time.perf_counter() - start)), tokens


def peak_rss_mib():
    """VmHWM: a fork's ru_maxrss would start at its parent's peak, exec or not."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


if __name__ == "__main__":
    main()
