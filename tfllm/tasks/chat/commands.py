"""The chat commands of the `tfllm` command line: `finetune --task chat` options, `merge`
and `chat`. Like `tfllm.cli`, nothing here imports TensorFlow until a command runs."""

from __future__ import annotations

import json
import os
import sys

from tfllm.errors import TfllmError
from tfllm.untrusted import utf8_argument, utf8_problem


def add_finetune_arguments(f, positive_int, positive_float):
    """The options `tfllm finetune --task chat` adds to the finetune parser."""
    g = f.add_argument_group(
        "chat fine-tuning (--task chat)",
        "Conversations as JSONL rows with messages ([{\"role\": \"system\"|\"user\"|"
        "\"assistant\", \"content\": ...}]), or prompt/response columns of a tsv, csv or "
        "jsonl file. The loss counts only the assistant's tokens; the run's chat template "
        "renders them (an imported checkpoint's own, else ChatML).")
    g.add_argument("--prompt-column", help="column of the prompt (with --response-column)")
    g.add_argument("--response-column", help="column of the reply")
    g.add_argument("--prompt-template", type=utf8_argument,
                   help='format of the prompt from a row\'s columns, e.g. '
                        '"Translate to French: {en}"')
    g.add_argument("--system", type=utf8_argument, help="a system turn put first in every conversation")
    g.add_argument("--template", help="chat template: chatml, or a file holding a Jinja "
                   "template (default: the run's own, else chatml)")
    g.add_argument("--lora-rank", type=int,
                   help="train low-rank adapters of this rank (>= 1) instead of every "
                        "weight; the run then stores only the adapter")
    g.add_argument("--lora-alpha", type=positive_float,
                   help="adapter scale numerator, alpha / rank (default 2 * rank)")
    g.add_argument("--lora-targets", default="qkv,out,ffn",
                   help="projections given adapters, comma-separated from qkv, out, ffn "
                        "(default all three)")
    g.add_argument("--steps", type=positive_int,
                   help="optimizer steps (default: --epochs passes, 1 for chat)")
    g.add_argument("--eval-steps", type=positive_int,
                   help="validation batches per validation (default 20)")
    g.add_argument("--max-minutes", type=positive_float,
                   help="stop after this many minutes, keeping the best model")
    g.add_argument("--resume", action="store_true",
                   help="continue the killed chat fine-tune in --out from its last interval "
                        "(its settings, data and base run come from its config.json)")


def finetune_chat(args):
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat, resume_chat
    from tfllm.tokenizers.chat_template import read_template_arg

    verbose = 1 if sys.stdout.isatty() else 2
    if args.resume:
        result = resume_chat(args.out, verbose=verbose)
        print(f"run directory: {args.out}")
        print(json.dumps(result))
        return
    if not args.data:
        raise TfllmError("--data is required: jsonl:PATH (rows with messages) or "
                         "tsv:|csv:|jsonl:PATH with --prompt-column and --response-column")

    if args.run is None or args.from_scratch:
        raise TfllmError("--task chat fine-tunes a pretrained causal LM: pass --run BASE")
    for option in ("text_column", "label_column", "pair_column"):
        if getattr(args, option):
            raise TfllmError(f"--{option.replace('_', '-')} is for --task classify; chat "
                             "data takes --prompt-column and --response-column")
    given = {k: getattr(args, k) for k in (
        "steps", "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay",
        "eval_interval", "eval_steps", "patience", "max_minutes", "lora_rank", "lora_alpha",
        "lora_targets", "seed")}
    settings = ChatSettings(**{k: v for k, v in given.items() if v is not None})
    template = read_template_arg(args.template) if args.template else None
    result = finetune_chat(args.out, args.data, args.run, settings, args.prompt_column,
                           args.response_column, args.prompt_template, args.system, template,
                           args.overwrite, verbose=verbose)
    skipped = {k: v for k, v in result["skipped"].items() if v}
    if skipped or result["too_long"]:
        print(f"skipped conversations: {skipped or {}}, longer than the context: "
              f"{result['too_long']}")
    kind = f"LoRA rank {settings.lora_rank}" if settings.lora_rank else "full fine-tuning"
    print(f"{kind}: {result['trainable_params']:,} trainable of "
          f"{result['base_params']:,} parameters")
    print(f"run directory: {args.out}")
    print(json.dumps(result))


def add_parsers(sub, common, positive_int, positive_float, finite_float, sampling_seed=int):
    m = sub.add_parser(
        "merge", parents=[common], help="write a LoRA run as a plain run",
        description="Add a LoRA chat run's adapter into its base run's weights and write "
                    "the result as a plain run (model.keras, its tokenizer and chat "
                    "template), which needs no base run and loads faster.")
    m.add_argument("--run", required=True, help="the LoRA run directory")
    m.add_argument("--out", required=True, help="the plain run to write, e.g. runs/NAME")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    c = sub.add_parser(
        "chat", parents=[common], help="talk with a chat run",
        description="An interactive multi-turn chat (type a message, Enter to send; "
                    "/reset clears the history, /quit or Ctrl-D leaves). Replies stream "
                    "and stop at the template's end of turn; the oldest turns are dropped "
                    "when the history outgrows the context (a notice says so). --message "
                    "answers one message and exits.")
    c.add_argument("--run", required=True, help="run directory (a chat run, or any causal "
                   "LM run with --template)")
    c.add_argument("--message", action="append", type=utf8_argument,
                   help="answer this message and exit (repeat for several turns)")
    c.add_argument("--system", type=utf8_argument, help="system prompt (default: the template's own, if any)")
    c.add_argument("--template", help="chat template: chatml or a Jinja file (default: the "
                   "run's own)")
    c.add_argument("--max-new-tokens", type=positive_int, default=256,
                   help="longest reply in tokens (default 256)")
    c.add_argument("--temperature", type=finite_float, default=0.0,
                   help="0 for greedy (default), > 0 to sample")
    c.add_argument("--top-k", type=positive_int, help="sample among the k likeliest")
    c.add_argument("--top-p", type=finite_float, help="nucleus sampling, 0 < p <= 1")
    c.add_argument("--seed", type=sampling_seed, help="seed of sampling")
    c.add_argument("--allow-control-tokens", action="store_true",
                   help="read control tokens' text in messages (e.g. <|im_start|>) as control "
                        "tokens; default: as plain characters, so a message cannot forge "
                        "turns. For trusted input only")
    constrain = c.add_mutually_exclusive_group()
    constrain.add_argument("--json-schema", metavar="FILE",
                           help="a JSON schema file: every reply is JSON valid under it")
    constrain.add_argument("--regex", metavar="PATTERN", type=utf8_argument,
                           help="a regular expression every reply matches in full")
    constrain.add_argument("--tools", metavar="FILE",
                           help="a JSON file listing function specs (OpenAI's tools form): "
                                "each reply is printed as JSON, {\"content\", \"tool_calls\"}")
    c.add_argument("--tool-choice", choices=("auto", "required", "none"), default="auto",
                   help="with --tools: a reply may be text or a call (auto, the default), "
                        "is always a call (required) or never one (none)")


def merge(args):
    import tfllm
    from tfllm import runs
    from tfllm.tokenizers import tokenizer_files

    stored = runs.read_run_config(args.run)
    if not stored.get("lora"):
        raise TfllmError(f"{args.run} is not a LoRA run (no adapter to merge); it is "
                         "already a plain run")
    output = runs.new_run(args.out, args.overwrite, runs.inputs_of(args.run), "merge")
    model = tfllm.load(args.run)  # the adapter added into the base's kernels
    spec = stored.get("tokenizer", runs.TOKENIZER)
    with output.staging() as tmp:
        for f in tokenizer_files(spec):
            with open(os.path.join(args.run, f), "rb") as src, \
                    open(os.path.join(tmp, f), "wb") as dst:
                dst.write(src.read())
        model.save(os.path.join(tmp, runs.MODEL))
        config = {k: v for k, v in stored.items() if k not in ("lora",)}
        config["merged_from"] = {"run": os.path.abspath(args.run), "lora": stored["lora"]}
        runs.write_run_config(tmp, config)
    print(f"merged {args.run} (LoRA rank {stored['lora']['rank']}) into a plain run: "
          f"{args.out}")


def chat(args):
    import tfllm
    from tfllm import runs, tasks
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.generation import GenerationParams
    from tfllm.tokenizers.chat_template import chat_config_of, read_template_arg

    from tfllm.models.token_automaton import read_schema_file
    from tfllm.models.tool_calls import read_tools_file

    GenerationParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    schema = read_schema_file(args.json_schema) if args.json_schema else None
    tools = read_tools_file(args.tools) if args.tools else None
    stored = runs.read_run_config(args.run)
    if not tasks.of_config(stored).causal:
        raise TfllmError(f"{args.run} is a {stored.get('objective')!r} run; tfllm chat "
                         "talks with causal language models")
    template = read_template_arg(args.template) if args.template else None
    model = tfllm.load(args.run)
    chat_config = chat_config_of(stored, model.tokenizer, template)
    session = ChatSession(model, chat_config, args.system, args.max_new_tokens,
                          args.temperature, args.top_k, args.top_p, args.seed,
                          split_special_tokens=not args.allow_control_tokens,
                          json_schema=schema, regex=args.regex, tools=tools,
                          tool_choice=args.tool_choice)

    def answer(message):
        if tools is not None:  # the calls, for a program to run
            text = session.reply(message)
            calls = session.last_tool_calls
            print(json.dumps({"content": None if calls else text, "tool_calls": calls},
                             ensure_ascii=False))
            return
        pieces = session.send(message)
        first = next(pieces, "")
        if session.last_dropped:
            print(f"[dropped the {session.last_dropped} oldest turn(s) to fit the context]",
                  file=sys.stderr)
        sys.stdout.write(first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")

    if args.message:
        for message in args.message:
            answer(message)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("chatting with " + args.run + " (/reset clears the history, /quit leaves)")
    while True:
        try:
            message = input("> " if interactive else "")
        except EOFError:
            break
        if message.strip() in ("/quit", "/exit"):
            break
        if message.strip() == "/reset":
            first = session.history[:1]  # the system turn (--system, --tools) stays
            session.history = first if first and first[0]["role"] == "system" else []
            continue
        problem = utf8_problem(message)  # bytes that are not UTF-8 reach `input` as surrogates
        if problem:
            said = f"this message is not UTF-8 text ({problem}); give UTF-8 text"
            if not interactive:
                raise TfllmError(f"standard input: {said}")
            print(f"({said}; it was not sent)", file=sys.stderr)
            continue
        if message.strip():
            answer(message)
