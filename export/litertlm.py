"""Pack a run into a `.litertlm` bundle that Google's on-device LLM runtime runs.

    python -m export.litertlm --run runs/NAME --out FILE.litertlm [--prefill-lengths 32 128]

The bundle holds the TFLite model of `export.tflite` (prefill/decode signatures, explicit
KV cache), the run's tokenizer (a SentencePiece model, or a Hugging Face tokenizer.json:
byte-level BPE runs, GPT-2's vocab.json + merges.txt merged into one) and an `LlmMetadata`
(every EOS id a stop token, `max_num_tokens` = the cache length, the model type the runtime
knows for imported Qwen3 / Qwen2.5 checkpoints, generic otherwise; a start
token only where the checkpoint adds BOS, so the runtime and `CausalLM.generate` see the
same ids). Before it reports success the exporter loads the bundle in `litert_lm.Engine`
and checks that its greedy continuation equals `CausalLM.generate`.

A run with a chat template (a chat fine-tune, an imported chat model) carries it as the
metadata's `jinja_prompt_template`, with its one-token end-of-turn markers as stop tokens,
so that `engine.create_conversation().send_message(...)` applies it in the runtime; the
exporter checks that a conversation's greedy reply equals `tfllm chat`'s.

`--quantize` takes the TFLite exporter's weight modes for causal LMs (float32, float16,
dynamic-int8, int8-weight, int4-block32, int4-block128, int4-asym-block32/128,
int4-mixed-block32) and its per-part modes, each held
to the same accuracy gate (`python -m export.tflite --help`); `--data` gives an imported
model held-out text to check on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .options import (DEFAULT_PREFILL, QUANTIZE_MODES, add_gate_options, add_max_len,
                      add_overwrite, add_part_options, error_prog, prog)


def build_parser():
    from tfllm.untrusted import utf8_argument

    parser = argparse.ArgumentParser(prog=prog("litertlm"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--run", required=True, help="run directory")
    add_max_len(parser)
    parser.add_argument("--out", required=True, help="output .litertlm file")
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=list(DEFAULT_PREFILL))
    parser.add_argument("--quantize", default="float32",
                        choices=[m for m in QUANTIZE_MODES if m != "int8"],
                        help="weight precision (see python -m export.tflite --help)")
    add_part_options(parser)
    add_gate_options(parser)
    parser.add_argument("--data", help="text to check a quantized model's accuracy on "
                        "(default: the run's own validation text, which imported runs lack; "
                        "int4-asym/mixed modes calibrate on its training part): a data "
                        "spec such "
                        "as text:PATH or tsv:PATH")
    parser.add_argument("--text-column", help="with --data: the text field")
    parser.add_argument("--prompt", default="ROMEO:", type=utf8_argument,
                        help="prompt of the runtime check")
    add_overwrite(parser)
    return parser


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

from tfllm import runs, tasks  # noqa: E402
from tfllm.models.chat_session import ChatSession, end_of_turn_at  # noqa: E402
from tfllm.tokenizers.chat_encoding import encode_text  # noqa: E402
from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.models.generation import encode_prompt, new_token_room  # noqa: E402

CHAT_CHECK_MESSAGE = "Translate to French: Open the file"

from .tflite import gate_line, parts_of, write_tflite  # noqa: E402


class LiteRtLmExportError(TfllmError):
    """The bundle could not be built, or the runtime disagrees with Keras."""


# The runtime's LlmModelType of each imported family it knows by name; others are generic.
RUNTIME_MODEL_TYPES = {"qwen3": "qwen3", "qwen2": "qwen2p5", "gemma3": "gemma3",
                       "gemma3_text": "gemma3"}


def runtime_model_type(run_config: dict) -> str:
    """The `llm_model_type` entry of a run: the family an imported checkpoint came from
    where LiteRT-LM knows it (Qwen3, Qwen2.5, Gemma 3), else generic_model."""
    source = (run_config.get("imported_from") or {}).get("format", "")
    family = source.rsplit("-", 1)[-1] if "-" in source else ""
    return RUNTIME_MODEL_TYPES.get(family, "generic_model")


def llm_metadata(stop_token_ids, max_num_tokens: int, start_token_id=None,
                 chat_template: str | None = None, model_type: str = "generic_model") -> str:
    """The LlmMetadata text proto of a tfllm causal LM: every EOS id stops, and the
    runtime prepends `start_token_id` where the checkpoint adds a BOS. A chat template
    goes in `jinja_prompt_template`, which `engine.create_conversation()` applies;
    `model_type` is an `LlmModelType` field name (`runtime_model_type`)."""
    from google.protobuf import text_encoding

    ids = [stop_token_ids] if isinstance(stop_token_ids, int) else stop_token_ids
    text = "".join(f"stop_tokens {{ token_ids {{ ids: {i} }} }}\n" for i in ids)
    if start_token_id is not None:
        text += f"start_token {{ token_ids {{ ids: {start_token_id} }} }}\n"
    if chat_template is not None:
        escaped = text_encoding.CEscape(chat_template, as_utf8=True)
        text += f'jinja_prompt_template: "{escaped}"\n'
    return text + (f"max_num_tokens: {max_num_tokens}\n"
                   f"llm_model_type {{ {model_type} {{}} }}\n")


# LiteRT-LM hands a template each message's content as a list of parts
# ([{"type": "text", "text": ...}]) where Hugging Face templates expect a string; this
# preamble joins the text parts back into a string first (Jinja's own namespace and loops,
# which the runtime's minja engine runs), so the checkpoint's template renders unchanged.
RUNTIME_PREAMBLE = (
    "{%- set tfllm_ns = namespace(messages=[], text='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set tfllm_ns.text = m['content'] -%}"
    "{%- else -%}{%- set tfllm_ns.text = '' -%}"
    "{%- for part in m['content'] -%}{%- if part['type'] == 'text' -%}"
    "{%- set tfllm_ns.text = tfllm_ns.text + part['text'] -%}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- set tfllm_ns.messages = tfllm_ns.messages + "
    "[{'role': m['role'], 'content': tfllm_ns.text}] -%}"
    "{%- endfor -%}"
    "{%- set messages = tfllm_ns.messages %}")


def runtime_template(source: str) -> str:
    """`source` as the runtime needs it: `RUNTIME_PREAMBLE` first."""
    return RUNTIME_PREAMBLE + source


def chat_stop_ids(tokenizer, chat) -> list[int]:
    """The run's EOS ids, and each end-of-turn marker that is one token (ChatML's
    <|im_end|> in a tokenizer that holds it as a symbol)."""
    ids = list(getattr(tokenizer, "eos_ids", [tokenizer.eos_id]))
    for marker in (chat or {}).get("end_of_turn", []):
        piece = encode_text(tokenizer, marker)
        if len(piece) == 1 and piece[0] not in ids:
            ids.append(piece[0])
    return ids


def tokenizer_file(run_dir: str, tmp: str) -> tuple[str, str]:
    """(kind, path) of the run's tokenizer as the bundle takes it: "sentencepiece" (a
    `.model`) or "hf" (a Hugging Face tokenizer.json; GPT-2's vocab.json + merges.txt are
    written as one)."""
    spec = runs.read_run_config(run_dir).get("tokenizer", runs.TOKENIZER)
    if isinstance(spec, str):
        return "sentencepiece", os.path.join(run_dir, spec)
    kind = spec.get("type")
    if kind == "sentencepiece":
        return "sentencepiece", os.path.join(run_dir, spec["file"])
    if kind == "hf-bpe":
        return "hf", os.path.join(run_dir, spec["file"])
    if kind == "gpt2-bpe":
        from tfllm.tokenizers.byte_bpe import gpt2_tokenizer_json

        path = os.path.join(tmp, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(gpt2_tokenizer_json(os.path.join(run_dir, spec["vocabulary"]),
                                          os.path.join(run_dir, spec["merges"])), f,
                      ensure_ascii=False)
        return "hf", path
    raise LiteRtLmExportError(f"this run's tokenizer ({kind!r}) cannot go into a bundle")


def build_bundle(tflite_path, tokenizer, metadata_text, out):
    from litert_lm_builder import litertlm_builder as lb

    with tempfile.TemporaryDirectory() as tmp:
        meta = os.path.join(tmp, "llm_metadata.textproto")
        with open(meta, "w") as f:
            f.write(metadata_text)
        builder = lb.LitertLmFileBuilder()
        builder.add_tflite_model(tflite_path, lb.TfLiteModelType.PREFILL_DECODE)
        kind, path = tokenizer
        if kind == "hf":
            builder.add_hf_tokenizer(path)
        else:
            builder.add_sentencepiece_tokenizer(path)
        builder.add_llm_metadata(meta, supports_thinking=False, supports_function_calling=False)
        with open(out, "wb") as f:
            builder.build(f, validate_metadata=True)


def engine_generate(path, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt` by the LiteRT-LM runtime, as an app would run it."""
    import litert_lm

    engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(), cache_dir=":nocache")
    try:
        session = engine.create_session(
            apply_prompt_template=False, max_output_tokens=max_new_tokens,
            sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0))
        try:
            session.run_prefill([prompt])
            return "".join(session.run_decode().texts)
        finally:
            session.close()  # before the engine: it reports sessions still open as errors
    finally:
        engine.close()


def engine_chat(path, message: str, max_new_tokens: int) -> str:
    """Greedy reply of the LiteRT-LM runtime to one message of a new conversation, the
    runtime applying the bundle's chat template (what an app's
    `engine.create_conversation().send_message(...)` gets)."""
    import litert_lm

    engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(), cache_dir=":nocache")
    try:
        conversation = engine.create_conversation(
            sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0),
            max_output_tokens=max_new_tokens)
        try:
            return message_text(conversation.send_message(message))
        finally:
            close = getattr(conversation, "close", None)
            if close:
                close()
    finally:
        engine.close()


def message_text(message) -> str:
    """The text of a runtime reply (a Message mapping with text content parts)."""
    content = message["content"] if isinstance(message, dict) else getattr(message, "content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def export_litertlm(run_dir, out, prefill_lengths=DEFAULT_PREFILL, check_prompt="ROMEO:",
                    max_new_tokens=16, quantize="float32", max_len=None, parts=None,
                    data=None, text_column=None, min_agreement=None, max_loss_increase=None,
                    overwrite=False):
    """Build, check in the runtime and publish the bundle `out`; returns a report.

    An existing `out` is replaced only with `overwrite`, and only when this exporter wrote
    it (`tfllm.publish`).
    """
    if not isinstance(check_prompt, str) or not check_prompt:
        # The runtime prefills the text as given (no BOS of its own): nothing to prefill.
        raise LiteRtLmExportError(f"--prompt {check_prompt!r} is empty: the runtime check "
                                  "needs at least one character to prefill")
    output = runs.export_output(out, "litertlm", overwrite, run_dir, data, "export litertlm")
    config = runs.read_run_config(run_dir)
    task = tasks.of_config(config)
    # The staged bundle keeps `out`'s name: the runtime reads the format from the extension.
    with output.staging() as staging, tempfile.TemporaryDirectory() as tmp:
        tflite = os.path.join(tmp, "model.tflite")
        report = write_tflite(run_dir, tflite, prefill_lengths, quantize, max_len=max_len,
                              parts=parts, data=data, text_column=text_column,
                              min_agreement=min_agreement, max_loss_increase=max_loss_increase)
        model = report.pop("model")  # already loaded by the TFLite export
        max_len = model.backbone.max_len
        tok = model.tokenizer
        # The task's template (a chat run's, an imported one's); a plain language model or
        # a placeholder template: none in the bundle.
        chat = task.chat_config(config, tok)
        stop_ids = chat_stop_ids(tok, chat)
        metadata = llm_metadata(stop_ids, max_len,
                                tok.bos_id if getattr(tok, "add_bos", False) else None,
                                runtime_template(chat["template"]) if chat else None,
                                runtime_model_type(config))
        try:
            build_bundle(tflite, tokenizer_file(run_dir, tmp), metadata, staging)
        except Exception as e:  # the builder validates with many exception types
            raise LiteRtLmExportError(f"building the bundle failed: {e}") from e
        got, chat_sample = _check_bundle(staging, model, chat, stop_ids, check_prompt,
                                         max_new_tokens, quantize, tflite)
        size = os.path.getsize(staging)
    return {**report, "path": out, "bytes": size, "sample": got, "prompt": check_prompt,
            "chat_sample": chat_sample}


def _check_bundle(path, model, chat, stop_ids, check_prompt, max_new_tokens, quantize,
                  tflite):
    """Greedy text and a chat reply of the bundle in the runtime, checked against tfllm's
    (equal in float32); returns `(text, chat reply or None)`. A quantized bundle's greedy
    text and chat reply must equal those of its own TFLite model (`tflite`) in the LiteRT
    interpreter, on the prompt ids tfllm chat renders."""
    from .tflite import TFLiteRunner

    tok = model.tokenizer
    runner = None if quantize == "float32" else TFLiteRunner(tflite)

    def until_stop(ids):  # the runtime also stops at a chat template's end-of-turn token
        return tok.decode(ids[:next((i for i, t in enumerate(ids) if t in stop_ids),
                                    len(ids))])

    # The prompt's tokens and the BOS that generate puts before them.
    n = min(max_new_tokens, new_token_room(model.backbone.max_len,
                                           len(tok.encode(check_prompt)) + 1))
    if quantize == "float32":
        _, (ids,) = model.generate([check_prompt], max_new_tokens=n, return_ids=True)
        source = "CausalLM.generate"
    else:
        # Quantized weights may change a greedy choice (export.tflite held them to the
        # held-out accuracy bar): the runtime must run exactly the model that was checked.
        ids = runner.generate(encode_prompt(tok, check_prompt), n)
        source = "the LiteRT interpreter on the bundle's TFLite model"
    expected = until_stop(ids)
    try:
        got = engine_generate(path, check_prompt, n)
    except Exception as e:
        raise LiteRtLmExportError(f"litert_lm.Engine could not run the bundle: {e}") from e
    if got != expected:
        raise LiteRtLmExportError(f"LiteRT-LM greedy output {got!r} differs from "
                                  f"{source}: {expected!r}")
    if chat is None:
        return got, None
    message = CHAT_CHECK_MESSAGE
    session = ChatSession(model, chat, max_new_tokens=n)
    if quantize == "float32":
        expected_reply = session.reply(message)
        source = "tfllm chat"
    else:
        prompt, _ = session.prompt_ids([{"role": "user", "content": message}])
        expected_reply = until_stop(runner.generate(prompt, n))
        # An end of turn of several tokens ends the reply as text, as tfllm chat cuts it.
        cut = end_of_turn_at(expected_reply, session.end_of_turn)
        expected_reply = expected_reply if cut < 0 else expected_reply[:cut]
    try:
        chat_sample = engine_chat(path, message, n)
    except Exception as e:
        raise LiteRtLmExportError(f"litert_lm conversation failed on the bundle: {e}") from e
    if chat_sample != expected_reply:
        raise LiteRtLmExportError(f"LiteRT-LM conversation reply {chat_sample!r} differs "
                                  f"from the reply of {source}: {expected_reply!r}")
    return got, chat_sample


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(error_prog("litertlm"), _main, args)


def _main(args):
    report = export_litertlm(args.run, args.out, args.prefill_lengths, args.prompt,
                             quantize=args.quantize, max_len=args.max_len,
                             parts=parts_of(args), data=args.data,
                             text_column=args.text_column, min_agreement=args.min_agreement,
                             max_loss_increase=args.max_loss_increase,
                             overwrite=args.overwrite)
    print(f"LiteRT-LM bundle written to {report['path']} ({report['bytes'] / 1e6:.2f} MB)")
    if "top1_agreement" in report:
        print(gate_line(report))
    quantized = report["quantize"] != "float32"
    interpreter = "the LiteRT interpreter on its TFLite model"
    print(f"litert_lm.Engine continues {report['prompt']!r} with {report['sample']!r}, "
          f"the same as {interpreter if quantized else 'CausalLM.generate'}")
    if report.get("chat_sample") is not None:
        reference = f"{interpreter} after tfllm chat's prompt" if quantized else "tfllm chat"
        print(f"its conversation answers {CHAT_CHECK_MESSAGE!r} with "
              f"{report['chat_sample']!r}, the same as {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
