"""On-device speed: tfllm's cached TFLite `decode` vs KerasHub's LiteRT export; with
`--model smollm2-135m` (or `gemma3-270m`), a real model's bundles vs llama.cpp and
litert-torch (benchmarks/edge_smollm2.py).

`baby-gpt` shape (6 layers, 384 wide, 6 heads, context 256), random weights, ai-edge-litert
with 2 threads. KerasHub's `export(format="litert")` writes the forward pass only, so each
new token recomputes the whole 256-token context; tfllm's `decode` reads the KV cache.
Also: prefill tokens/s, file size per quantization mode, and decode tokens/s of the
LiteRT-LM engine running a float32 `.litertlm` bundle.

    python benchmarks/edge.py [--reps 5]
    python benchmarks/edge.py --model smollm2-135m --reps 3 --work /tmp/edge \\
        --llamacpp-python /tmp/llvenv/bin/python --litert-torch-python /tmp/ltvenv/bin/python
    python benchmarks/edge.py --model gemma3-270m --reps 3 --work /tmp/edge-gemma \
        --llamacpp-python /tmp/llvenv/bin/python --litert-torch-python /tmp/ltvenv/bin/python

The last line of output is one JSON object with the figures.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export.tflite import TFLiteRunner, convert_model  # noqa: E402

LAYERS, WIDTH, HEADS, FFN, CONTEXT = 6, 384, 6, 1536, 256
SHAKESPEARE = os.environ.get("TFLLM_SHARED_DATA",
                             os.path.join(REPO, "..", "shared", "data")) + "/tiny_shakespeare"


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_run(tmp):
    """A run directory holding a random-weight baby-gpt and a character tokenizer."""
    from tfllm import runs
    from tfllm.config import get_preset
    from tfllm.models import CausalLM
    from tfllm.tokenizers import SentencePieceTokenizer

    with open(os.path.join(SHAKESPEARE, "input.txt"), encoding="utf-8") as f:
        tok = SentencePieceTokenizer.train([f.read()], "char")
    cfg = get_preset("baby-gpt").replace(vocab_size=tok.vocab_size, dropout=0.0)
    keras.utils.set_random_seed(0)
    model = CausalLM.from_model_config(cfg)
    run = os.path.join(tmp, "run")
    os.makedirs(run)
    tok.save(os.path.join(run, runs.TOKENIZER))
    model.save(os.path.join(run, runs.MODEL))
    runs.write_run_config(run, {"model": cfg.to_dict(), "preset": "baby-gpt", "data": None,
                                "training": None, "objective": "clm",
                                "tokenizer": runs.TOKENIZER})
    return run, model, tok


def kerashub_tflite(path):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=65, num_layers=LAYERS, num_heads=HEADS, hidden_dim=WIDTH,
        intermediate_dim=FFN, max_sequence_length=CONTEXT, dropout=0.0)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    sig = {"token_ids": tf.TensorSpec([1, CONTEXT], tf.int32, name="token_ids"),
           "padding_mask": tf.TensorSpec([1, CONTEXT], tf.bool, name="padding_mask")}
    model.export(path, format="litert", input_signature=[sig], verbose=False)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5,
                        help="timed repetitions (real models: interleaved rounds)")
    parser.add_argument("--model", default="baby-gpt",
                        choices=["baby-gpt", "smollm2-135m", "gemma3-270m"],
                        help="baby-gpt: tfllm vs KerasHub, random weights (default); "
                             "smollm2-135m, gemma3-270m: see benchmarks/edge_smollm2.py")
    parser.add_argument("--work", help="real models: folder for the run, exports and peers' "
                        "files (kept, reused by a rerun; default a new temporary folder)")
    parser.add_argument("--llamacpp-python", help="real models: a Python with "
                        "llama-cpp-python (its own venv)")
    parser.add_argument("--litert-torch-python", help="real models: a Python with "
                        "litert-torch (its own venv)")
    args = parser.parse_args()
    if args.model in ("smollm2-135m", "gemma3-270m"):
        from benchmarks.edge_smollm2 import run

        return run(args)
    tmp = tempfile.mkdtemp(prefix="tfllm-edge-")
    try:
        run, model, tok = make_run(tmp)
        sizes = {}
        for mode in ("float32", "float16", "dynamic-int8"):
            data, _ = convert_model(model, (32, 128), mode)
            with open(os.path.join(tmp, f"{mode}.tflite"), "wb") as f:
                f.write(data)
            sizes[mode] = len(data)
        sizes = {k: {"bytes": v, "vs_float32": round(v / sizes["float32"], 3)}
                 for k, v in sizes.items()}

        runner = TFLiteRunner(os.path.join(tmp, "float32.tflite"), num_threads=2)
        prompt = np.random.default_rng(0).integers(4, tok.vocab_size, 129).tolist()
        cache = runner.prefill(prompt[:-1], runner.empty_cache())
        prefill_s = median_time(lambda: runner.prefill(prompt[:-1], runner.empty_cache()),
                                args.reps)

        def decode_64():
            c, t = cache, prompt[-1]
            for pos in range(128, 192):
                logits, c = runner.step(t, pos, c)
                t = int(np.argmax(logits))
        tfllm_token_s = median_time(decode_64, args.reps) / 64

        from ai_edge_litert.interpreter import Interpreter

        kh_interp = Interpreter(model_path=kerashub_tflite(os.path.join(tmp, "kh.tflite")),
                                num_threads=2)
        kh_run = kh_interp.get_signature_runner("serving_default")
        ids = np.zeros((1, CONTEXT), np.int32)
        mask = np.zeros((1, CONTEXT), bool)
        mask[0, :129] = True
        kh_token_s = median_time(lambda: kh_run(token_ids=ids, padding_mask=mask), args.reps * 4)
        kh_size = os.path.getsize(os.path.join(tmp, "kh.tflite"))

        from export.litertlm import build_bundle, llm_metadata
        import litert_lm

        bundle = os.path.join(tmp, "model.litertlm")
        build_bundle(os.path.join(tmp, "float32.tflite"),
                     ("sentencepiece", os.path.join(run, "tokenizer.model")),
                     llm_metadata(tok.eos_id, CONTEXT), bundle)
        engine = litert_lm.Engine(bundle, backend=litert_lm.Backend.CPU(thread_count=2),
                                  cache_dir=":nocache")
        rates = []
        for _ in range(args.reps):
            session = engine.create_session(apply_prompt_template=False, max_output_tokens=128,
                                            sampler_config=litert_lm.SamplerConfig(top_k=1))
            session.run_prefill(["ROMEO:"])
            start = time.perf_counter()
            text = "".join(session.run_decode().texts)
            rates.append(len(tok.encode(text)) / (time.perf_counter() - start))
        engine.close()

        summary = {
            "benchmark": "edge", "shape": {"layers": LAYERS, "d_model": WIDTH, "heads": HEADS,
                                           "ffn": FFN, "context": CONTEXT},
            "threads": 2,
            "tfllm_decode_ms_per_token": round(tfllm_token_s * 1e3, 3),
            "kerashub_litert_ms_per_token": round(kh_token_s * 1e3, 3),
            "decode_speedup": round(kh_token_s / tfllm_token_s, 2),
            "tfllm_prefill_tokens_per_sec": round(128 / prefill_s, 1),
            "litertlm_engine_decode_tokens_per_sec": round(statistics.median(rates), 1),
            "file_bytes": sizes, "kerashub_litert_bytes": kh_size, "reps": args.reps,
        }
        print(f"decode: tfllm {summary['tfllm_decode_ms_per_token']} ms/token, KerasHub "
              f"{summary['kerashub_litert_ms_per_token']} ms/token")
        print(json.dumps(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
