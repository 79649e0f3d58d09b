"""Latency of the exported SavedModel's `generate` signature vs `CausalLM.generate`.

Exports the run (unverified, into a temporary directory), loads it with
`tf.saved_model.load` and times greedy generation of the same prompts through both paths,
alternately, several repetitions, median. Target: the SavedModel is no slower than 1.25x.

    python benchmarks/serving_latency.py --run runs/demo [--reps 7] [--max-new-tokens 32]

With --openai (issue #37) it measures what OpenAI clients see instead: `tfllm serve --run
RUN --model-dir EXPORTED` (the run in process, streaming) and `tfllm gateway` in front of
that server's TF Serving emulation (the exported `chat` signature; a stream is one chunk),
1 and --clients concurrent streaming chat completions of the same message: time to the
first content chunk and completion tokens per second of wall time per client, medians over
--reps rounds (the first round, which compiles, is not counted). With --distinct every
request asks a message not asked before (another country's capital), so no server can
reuse an earlier prompt's prefill.

    python benchmarks/serving_latency.py --openai --run runs/smollm2 --model-dir models/smollm2

With --llamacpp-python PY --gguf FILE it measures llama.cpp's OpenAI server
(`llama-cpp-python[server]`, installed in the venv of PY, never tfllm's) on the same GGUF
the run was imported from, the same way and in the same rounds.

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

# --distinct: a message per client and round, none asked twice (no prefill is reused).
COUNTRIES = ["France", "Germany", "Italy", "Spain", "Portugal", "Japan", "Canada", "Brazil",
             "Egypt", "Kenya", "India", "China", "Mexico", "Peru", "Chile", "Norway",
             "Sweden", "Finland", "Poland", "Greece", "Turkey", "Iran", "Thailand", "Vietnam",
             "Australia", "Argentina", "Colombia", "Nigeria", "Morocco", "Ireland", "Austria",
             "Hungary", "Denmark", "Belgium", "Cuba", "Nepal", "Russia", "Ukraine",
             "Romania", "Iceland"]

PROMPTS = ["ROMEO:", "First Citizen:\n", "KING HENRY:\nWhat", "O", "JULIET:\nAy", "Thou art",
           "MENENIUS:\n", "Good"]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, ready):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "tfllm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{args[0]} did not start")
        if ready in line:
            return proc


def openai_latency(args):
    """Time to first token and tokens/s through `tfllm serve --run` and `tfllm gateway`."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    name = os.path.basename(os.path.normpath(args.model_dir))
    port, gw_port = _free_port(), _free_port()
    procs = [_start(["serve", "--run", args.run, "--model-name", name, "--model-dir",
                     args.model_dir, "--port", str(port), "--grpc-port", "0"], "OpenAI API")]
    procs.append(_start(["gateway", "--tf-serving", f"http://127.0.0.1:{port}", "--model",
                         name, "--port", str(gw_port)], "gateway for"))
    paths = [("serve_run", f"http://127.0.0.1:{port}/v1"),
             ("gateway", f"http://127.0.0.1:{gw_port}/v1")]
    if args.llamacpp_python:
        procs.append(_start_llamacpp(args, name, paths))
    if args.paths:
        paths = [(label, url) for label, url in paths if label in args.paths.split(",")]
    asked = iter(range(10**9))

    def message():
        if not args.distinct:
            return [{"role": "user", "content": args.message}]
        k = next(asked)
        return [{"role": "user", "content": f"What is the capital of "
                 f"{COUNTRIES[k % len(COUNTRIES)]}?" + " Answer briefly." * (k // len(COUNTRIES))}]

    def one(url):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        start, first, text, usage, chunks = time.perf_counter(), None, "", None, 0
        for chunk in client.chat.completions.create(
                model=name, messages=message(), temperature=0, max_tokens=args.max_new_tokens,
                stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - start
                text += chunk.choices[0].delta.content
                chunks += 1
            if chunk.usage:
                usage = chunk.usage
        total = time.perf_counter() - start
        # llama.cpp's server sends no usage in streams; it sends one token per chunk.
        tokens = usage.completion_tokens if usage else chunks
        return first, tokens / total, text

    results = {}
    try:
        for label, url in paths:
            for clients in (1, args.clients):
                asked = iter(range(10**9))  # every path is asked the same messages
                rounds = []
                with ThreadPoolExecutor(max_workers=clients) as pool:
                    for _ in range(args.reps + 1):
                        rounds.append(list(pool.map(lambda _: one(url), range(clients))))
                if any(f is None for r in rounds for f, _, _ in r):
                    raise SystemExit(f"{label}: a stream with no content")
                texts = {t for r in rounds for _, _, t in r}
                replies = [t for r in rounds for _, _, t in r]
                ttft = statistics.median(f for r in rounds[1:] for f, _, _ in r)
                tps = statistics.median(t for r in rounds[1:] for _, t, _ in r)
                results[f"{label}_{clients}"] = {"ttft_s": round(ttft, 3),
                                                 "tokens_per_s_per_client": round(tps, 2),
                                                 "same_text": len(texts) == 1,
                                                 "text": sorted(texts)[0]}
                if args.distinct:
                    results[f"{label}_{clients}"]["replies"] = replies
                print(f"{label}, {clients} client(s): time to first token {ttft:.3f} s, "
                      f"{tps:.2f} tokens/s per client", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    print(json.dumps({"benchmark": "serving_latency_openai", "run": args.run,
                      "max_new_tokens": args.max_new_tokens, "reps": args.reps,
                      "distinct": args.distinct, **results}))


def _start_llamacpp(args, name, paths):
    """llama.cpp's OpenAI server on the GGUF (all cores, the GGUF's own chat template),
    once it answers; its URL joins `paths`."""
    import subprocess
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([args.llamacpp_python, "-m", "llama_cpp.server", "--model",
                             args.gguf, "--model_alias", name, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads",
                             str(os.cpu_count()),
                             # By default a new request cancels the stream in progress;
                             # queued, as tfllm's servers do.
                             "--interrupt_requests", "False"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/models", timeout=5):
                paths.append(("llamacpp", url))
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("llama.cpp's server did not start")
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("llama.cpp's server did not answer within 5 minutes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="run directory (make demo makes one)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--openai", action="store_true",
                        help="measure the OpenAI API (tfllm serve --run, tfllm gateway)")
    parser.add_argument("--model-dir", help="with --openai: the run's exported SavedModels "
                        "(DIR/NAME), for the gateway")
    parser.add_argument("--clients", type=int, default=8,
                        help="with --openai: concurrent clients (besides 1; default 8)")
    parser.add_argument("--message", default="What is the capital of France?")
    parser.add_argument("--distinct", action="store_true",
                        help="with --openai: each client and round asks another country's "
                             "capital instead of --message (no prompt is asked twice, so "
                             "no server reuses a prefill)")
    parser.add_argument("--llamacpp-python",
                        help="with --openai: a Python with llama-cpp-python[server] installed; "
                        "its server on --gguf is measured too")
    parser.add_argument("--paths", help="with --openai: the paths to measure, of serve_run, "
                        "gateway, llamacpp (comma-separated; default all started)")
    parser.add_argument("--gguf", help="with --llamacpp-python: the GGUF the run was "
                        "imported from")
    args = parser.parse_args()
    if args.openai:
        if not args.model_dir:
            parser.error("--openai needs --model-dir (the run exported as a SavedModel)")
        if bool(args.llamacpp_python) != bool(args.gguf):
            parser.error("--llamacpp-python and --gguf go together")
        return openai_latency(args)

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
