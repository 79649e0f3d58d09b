"""Peak memory and time of the LiteRT-LM runtime on a long prompt: a `.litertlm` bundle
continues the first `--chars` characters of tiny Shakespeare by 32 greedy tokens
(`litert_lm.Engine`, CPU), each repetition in a fresh process (peak RSS is per process).

    python benchmarks/litertlm_memory.py models/gemma3.litertlm [more.litertlm ...] \\
        --chars 6980 --reps 3

Bundles take turns within each round. The last line of output is one JSON object:
{bundle: {"seconds": median, "peak_rss_mb": median, "text": the continuation}}.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.environ.get("TFLLM_SHARED_DATA",
                                          os.path.join(REPO, "..", "shared", "data")),
                           "tiny_shakespeare", "input.txt")


def one_run(bundle, chars):
    """Runs in the child: the continuation, its time and this process's peak RSS."""
    sys.path.insert(0, REPO)
    from export.litertlm import engine_generate

    with open(SHAKESPEARE, encoding="utf-8") as f:
        prompt = f.read()[:chars]
    start = time.perf_counter()
    text = engine_generate(bundle, prompt, 32)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "text": text}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", help=".litertlm files")
    parser.add_argument("--chars", type=int, default=6980,
                        help="prompt length in characters (6980: 1,892 Gemma 3 tokens)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return one_run(args.bundles[0], args.chars)
    runs = {b: [] for b in args.bundles}
    for rep in range(args.reps):
        for bundle in args.bundles:
            proc = subprocess.run([sys.executable, __file__, bundle, "--chars", str(args.chars),
                                   "--child"], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{bundle}: {proc.stderr.strip().splitlines()[-1]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[bundle].append(result)
            print(f"round {rep + 1} {bundle}: {result['seconds']:.2f} s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    print(json.dumps({b: {"seconds": statistics.median(r["seconds"] for r in rs),
                          "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                          "text": rs[0]["text"]} for b, rs in runs.items()}))


if __name__ == "__main__":
    main()
