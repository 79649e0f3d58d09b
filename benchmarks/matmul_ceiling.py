"""How fast could a training step go here? The matmuls of one step, timed alone.

A training step of a small GPT is mostly matrix products. This script lists every product
of one `shakespeare-char` step (batch 12, context 64: forward, and the two gradient products
of each), runs exactly those products with nothing else, and reports the tokens/s a step
could reach if it did no other work, for each kernel family TensorFlow offers here:
XLA (what `CausalLM.fit` and KerasHub's `fit` compile to) and TF's own oneDNN kernels, in
float32 and bfloat16. It also times one large square product, the machine's practical peak.

    python benchmarks/matmul_ceiling.py [--reps 5] [--calls 50] [--target-tokens-per-cpu-sec N]

Timings are per wall-clock second and per CPU-second of the process (see README.md for why).
With `--target-tokens-per-cpu-sec`, each ceiling is compared with that figure. The last
line of output is one JSON object.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
# The shape train_throughput.py trains, from its one definition (run as a script from
# benchmarks/, whose directory Python puts on the path).
from train_throughput import BATCH, CONTEXT, FFN, HEADS, LAYERS, VOCAB, WIDTH  # noqa: E402


def step_products():
    """(batch, m, k, n) of every matrix product in one training step, gradients included."""
    tokens, head_dim = BATCH * CONTEXT, WIDTH // HEADS
    forward = []
    for _ in range(LAYERS):
        forward += [
            (1, tokens, WIDTH, 3 * WIDTH),               # fused QKV projection
            (BATCH * HEADS, CONTEXT, head_dim, CONTEXT),  # scores: q @ k^T, per head
            (BATCH * HEADS, CONTEXT, CONTEXT, head_dim),  # probabilities @ v
            (1, tokens, WIDTH, WIDTH),                   # attention output projection
            (1, tokens, WIDTH, FFN),                     # feed-forward up
            (1, tokens, FFN, WIDTH),                     # feed-forward down
        ]
    forward.append((1, tokens, WIDTH, VOCAB))            # tied output projection
    # Y = A @ B needs dA = dY @ B^T (m, n, k) and dB = A^T @ dY (k, m, n): same FLOPs each.
    backward = [(b, m, n, k) for b, m, k, n in forward] + [(b, k, m, n) for b, m, k, n in forward]
    return forward + backward


def flops(products):
    return sum(2 * b * m * k * n for b, m, k, n in products)


def operands(products, dtype, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for b, m, k, n in products:
        # Scaled so values stay near 1 (denormals or overflow would time something else).
        a = rng.standard_normal((b, m, k), dtype=np.float32)
        w = rng.standard_normal((b, k, n), dtype=np.float32) / np.sqrt(k)
        pairs.append((tf.constant(a, dtype=dtype), tf.constant(w, dtype=dtype)))
    return pairs


def timed(fn, calls, reps):
    """Median (wall seconds, CPU seconds) of `calls` calls, over `reps` repetitions."""
    fn()  # trace and compile
    walls, cpus = [], []
    for _ in range(reps):
        cpu_start, start = os.times(), time.perf_counter()
        for _ in range(calls):
            fn()
        wall, cpu_end = time.perf_counter() - start, os.times()
        walls.append(wall / calls)
        cpus.append(((cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system))
                    / calls)
    return statistics.median(walls), statistics.median(cpus)


def engine(jit_compile, dtype, products, calls, reps):
    pairs = operands(products, dtype)

    @tf.function(jit_compile=jit_compile)
    def step_dots(pairs):
        return [tf.matmul(a, w) for a, w in pairs]

    # Eager calls return once every output exists; fetching them would time the copies too.
    wall, cpu = timed(lambda: step_dots(pairs), calls, reps)
    n = 2048
    big = operands([(1, n, n, n)], dtype)

    @tf.function(jit_compile=jit_compile)
    def square(pair):
        return tf.matmul(*pair)

    big_wall, big_cpu = timed(lambda: square(big[0]), max(calls // 5, 5), reps)
    step_flops, tokens = flops(products), BATCH * CONTEXT
    return {
        "step_dots_ms": round(wall * 1e3, 2),
        "step_dots_cpu_ms": round(cpu * 1e3, 2),
        "step_dots_gflops": round(step_flops / wall / 1e9, 1),
        "step_dots_gflops_per_cpu_sec": round(step_flops / cpu / 1e9, 1),
        "ceiling_tokens_per_sec": round(tokens / wall),
        "ceiling_tokens_per_cpu_sec": round(tokens / cpu),
        "peak_2048_gflops": round(2 * n**3 / big_wall / 1e9, 1),
        "peak_2048_gflops_per_cpu_sec": round(2 * n**3 / big_cpu / 1e9, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50, help="timed steps per repetition")
    parser.add_argument("--target-tokens-per-cpu-sec", type=float, default=None,
                        help="a training speed to compare the ceilings with, e.g. 2x "
                             "KerasHub's figure from train_throughput.py")
    args = parser.parse_args()
    if args.reps < 1 or args.calls < 1:
        parser.error("--reps and --calls must be positive")
    if args.target_tokens_per_cpu_sec is not None and args.target_tokens_per_cpu_sec <= 0:
        parser.error("--target-tokens-per-cpu-sec must be positive")

    products = step_products()
    step_flops = flops(products)
    results = {}
    for name, jit, dtype in [("xla_float32", True, tf.float32), ("xla_bfloat16", True, tf.bfloat16),
                             ("tf_float32", False, tf.float32),
                             ("tf_bfloat16", False, tf.bfloat16)]:
        results[name] = engine(jit, dtype, products, args.calls, args.reps)
        r = results[name]
        line = (f"{name:13s} step's products {r['step_dots_ms']:6.2f} ms "
                f"({r['step_dots_gflops']:5.1f} GFLOP/s, {r['step_dots_gflops_per_cpu_sec']:5.1f} "
                f"per CPU-s) -> at most {r['ceiling_tokens_per_sec']:,} tok/s, "
                f"{r['ceiling_tokens_per_cpu_sec']:,} per CPU-s; 2048^3: "
                f"{r['peak_2048_gflops']:.0f} GFLOP/s ({r['peak_2048_gflops_per_cpu_sec']:.0f} per CPU-s)")
        if args.target_tokens_per_cpu_sec:
            target = args.target_tokens_per_cpu_sec
            r["products_alone_reach_target"] = r["ceiling_tokens_per_cpu_sec"] >= target
            # Products alone: a real step also normalizes, activates, takes a loss and updates.
            line += ("  [products alone: above target]" if r["products_alone_reach_target"]
                     else "  [products alone: below target]")
        print(line, flush=True)
    summary = {
        "benchmark": "matmul_ceiling",
        "shape": {"layers": LAYERS, "d_model": WIDTH, "heads": HEADS, "ffn": FFN,
                  "context": CONTEXT, "vocab": VOCAB, "batch": BATCH},
        "products_per_step": len(products),
        "step_gflop": round(step_flops / 1e9, 3),
        "flop_per_token": round(step_flops / (BATCH * CONTEXT)),
        "target_tokens_per_cpu_sec": args.target_tokens_per_cpu_sec,
        "engines": results,
        "reps": args.reps, "calls": args.calls,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
