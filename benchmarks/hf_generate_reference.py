"""Greedy decoding tokens/s of Hugging Face transformers (PyTorch) on a GGUF (SmolLM2-135M-Instruct, Gemma 3 270M).

The peer of `generate_throughput.py --shape smollm2-135m`: the same GGUF file (transformers
dequantizes it to float32 with the `gguf` package), the same random 128-token prompts
(seeded), 128 new tokens, greedy, its KV cache, no early stop. PyTorch is not a tfllm
dependency; give it a venv of its own:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy transformers gguf accelerate
    /tmp/torchvenv/bin/python benchmarks/hf_generate_reference.py --gguf FILE [--reps 3]

`generate_throughput.py --torch-python /tmp/torchvenv/bin/python` runs it in the same run.
The last line of output is one JSON object.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def prompts(batch, length, vocab, seed=0):
    return np.random.default_rng(seed).integers(100, vocab, size=(batch, length))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf),
        torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    out = {"benchmark": "hf_generate_reference", "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    for batch in args.batches:
        ids = torch.tensor(prompts(batch, args.prompt, vocab))
        mask = torch.ones_like(ids)

        def run():
            with torch.inference_mode():
                y = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=args.new, min_new_tokens=args.new,
                                   pad_token_id=0)
            assert y.shape[1] == args.prompt + args.new
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        rates = []
        for rep in range(args.reps):
            start = time.perf_counter()
            run()
            rates.append(batch * args.new / (time.perf_counter() - start))
            print(f"transformers batch {batch} rep {rep + 1}: {rates[-1]:,.1f} tok/s",
                  flush=True)
        out[f"batch_{batch}"] = {"tokens_per_sec": round(statistics.median(rates), 2),
                                 "first_call_sec": round(first, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
