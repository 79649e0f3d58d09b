"""Bursts of concurrent requests into `tfllm serve --run`'s decoding loop, in process.

Loads a chat run as the OpenAI server does (`OpenAIService`, warmed up), then sends
--bursts bursts of --clients concurrent unconstrained replies straight to its batcher
(`token_chunks`, no HTTP): each asks another question (another country's capital, in the
run's chat template), so prompts differ in content and length. Per burst: every request's
time to its first token, how many functions were traced after the warm-up (0 means no
request waited for a compile), and the process's resident memory. With --soak N, N more
bursts of varied prompts ("Repeat: alpha beta ..."; budgets 8 to 15) and memory every 8
bursts.

    python benchmarks/serving_bursts.py --run runs/smollm2 [--bursts 4] [--soak 64]

The last line of output is one JSON object with the figures.
"""

import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.serving_latency import COUNTRIES  # noqa: E402
from serving.openai_api import OpenAIService  # noqa: E402
from tfllm.models.chat_session import ChatSession  # noqa: E402
from tfllm.models.generation import GenerationParams  # noqa: E402

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
         "pi rho sigma tau").split()


def rss_mb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def burst(api, prompts, budgets):
    """Time to the first token of each of `prompts`, sent at once."""
    firsts = [None] * len(prompts)
    start = time.perf_counter()

    def one(i):
        for _ in api.token_chunks(prompts[i], GenerationParams(budgets[i]), None):
            firsts[i] = firsts[i] or round(time.perf_counter() - start, 3)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return firsts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a causal LM run with a chat template")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--soak", type=int, default=0, help="bursts of the soak after them")
    args = parser.parse_args()

    api = OpenAIService(args.run)
    started = time.perf_counter()
    api.warm_up()
    warm_s = round(time.perf_counter() - started, 1)
    warm = api.decode_batch.traces()
    session = ChatSession(api.model, api.chat, max_new_tokens=args.max_new_tokens)

    def prompt(text):
        return session.prompt_ids([{"role": "user", "content": text}])[0]

    asked, bursts = 0, []
    for _ in range(args.bursts):
        texts = [f"What is the capital of {COUNTRIES[(asked + i) % len(COUNTRIES)]}?"
                 for i in range(args.clients)]
        asked += args.clients
        firsts = burst(api, [prompt(t) for t in texts], [args.max_new_tokens] * args.clients)
        bursts.append({"first_token_s": firsts, "traces": api.decode_batch.traces() - warm,
                       "rss_mb": rss_mb()})
        print(f"burst {len(bursts)}: first tokens {min(firsts):.3f}-{max(firsts):.3f} s, "
              f"{bursts[-1]['traces']} traces, {bursts[-1]['rss_mb']} MB", flush=True)
    soak, lengths = [], set()
    for k in range(args.soak):
        texts = [f"Repeat: {' '.join(WORDS[:(k * args.clients + i) % 19 + 1])} "
                 f"{k * args.clients + i}" for i in range(args.clients)]
        prompts = [prompt(t) for t in texts]
        lengths.update(len(p) for p in prompts)
        burst(api, prompts, [8 + i % 8 for i in range(args.clients)])
        if k % 8 == 7:
            soak.append({"bursts": k + 1, "rss_mb": rss_mb(),
                         "traces": api.decode_batch.traces() - warm})
            print(f"soak: {k + 1} bursts, {soak[-1]['rss_mb']} MB, {soak[-1]['traces']} "
                  "traces", flush=True)
    print(json.dumps({"benchmark": "serving_bursts", "run": args.run, "warm_up_s": warm_s,
                      "clients": args.clients, "bursts": bursts, "soak": soak,
                      "soak_prompt_tokens": [min(lengths), max(lengths)] if lengths else []}))


if __name__ == "__main__":
    main()
