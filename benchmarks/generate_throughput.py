"""Greedy decoding tokens/s: tfllm's cached generate vs KerasHub's GPT2CausalLM.generate.

Shape: `baby-gpt` (6 layers, 384 wide, 6 heads, ffn 1536, context 256, vocabulary 65), an
8-token prompt and 248 new tokens, batch 1 and batch 8. Both use XLA and their KV caches,
KerasHub with its greedy sampler; weights are random (speed does not depend on them) and
neither stops early. Measured in the same process, alternately, median of several reps.

    python benchmarks/generate_throughput.py [--reps 5]

The last line of output is one JSON object with the figures and ratios.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

VOCAB, LAYERS, WIDTH, HEADS, FFN, CONTEXT = 65, 6, 384, 6, 1536, 256
PROMPT, NEW = 8, 248


def tfllm_runner(batch):
    from tfllm.config import get_preset
    from tfllm.generation import GenerationParams, Generator
    from tfllm.models import CausalLM

    keras.utils.set_random_seed(0)
    model = CausalLM.from_model_config(
        get_preset("baby-gpt").replace(vocab_size=VOCAB, dropout=0.0))
    gen = Generator(model, end_token_id=3)
    prompts = np.random.default_rng(0).integers(4, VOCAB, size=(batch, PROMPT)).tolist()
    params = GenerationParams(max_new_tokens=NEW, stop_at_end=False)

    def run():
        out = gen.generate_ids(prompts, params)
        assert all(len(r) == NEW for r in out)
    return run


def kerashub_runner(batch):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=WIDTH,
        intermediate_dim=FFN, max_sequence_length=CONTEXT, dropout=0.0)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy")  # jit_compile defaults to XLA
    ids = np.zeros((batch, CONTEXT), np.int32)
    ids[:, :PROMPT] = np.random.default_rng(0).integers(4, VOCAB, size=(batch, PROMPT))
    mask = np.zeros((batch, CONTEXT), bool)
    mask[:, :PROMPT] = True
    inputs = {"token_ids": ids, "padding_mask": mask}

    def run():
        out = model.generate(inputs, stop_token_ids=None)
        assert out["padding_mask"].sum() == batch * CONTEXT  # all 248 new tokens made
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    summary = {"benchmark": "generate_throughput",
               "shape": {"layers": LAYERS, "d_model": WIDTH, "heads": HEADS, "ffn": FFN,
                         "context": CONTEXT, "vocab": VOCAB, "prompt": PROMPT,
                         "new_tokens": NEW}}
    for batch in args.batches:
        runners = {"tfllm": tfllm_runner(batch), "kerashub": kerashub_runner(batch)}
        first = {}
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            first[name] = round(time.perf_counter() - start, 2)
        rates = {name: [] for name in runners}
        for rep in range(args.reps):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                rates[name].append(batch * NEW / (time.perf_counter() - start))
            print(f"batch {batch} rep {rep + 1}: " +
                  "  ".join(f"{n} {v[-1]:,.0f} tok/s" for n, v in rates.items()), flush=True)
        med = {n: statistics.median(v) for n, v in rates.items()}
        summary[f"batch_{batch}"] = {
            "tfllm_tokens_per_sec": round(med["tfllm"], 1),
            "kerashub_tokens_per_sec": round(med["kerashub"], 1),
            "ratio": round(med["tfllm"] / med["kerashub"], 3),
            "first_call_sec": first,
        }
    summary["reps"] = args.reps
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
