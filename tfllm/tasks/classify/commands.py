"""The classify task's `tfllm finetune` command: options checked, fine-tuning, its report."""

from __future__ import annotations

import json
import sys

from tfllm.errors import TfllmError

# Options of the finetune command that only chat fine-tuning takes.
_CHAT_ONLY = ("prompt_column", "response_column", "prompt_template", "system", "template",
              "lora_rank", "lora_alpha", "steps", "eval_steps", "max_minutes")


def finetune_command(args):
    """`tfllm finetune --task classify` with the parsed arguments."""
    from tfllm.tasks.classify.finetune import FinetuneSettings, finetune

    if args.resume:
        raise TfllmError("--resume is for --task chat (a classifier fine-tune is short: run "
                         "it again with --overwrite)")
    if not args.data:
        raise TfllmError("--data is required (labeled data: tsv:PATH, csv:PATH, jsonl:PATH "
                         "or tfds:NAME)")
    chat_only = [name for name in _CHAT_ONLY if getattr(args, name)]
    if chat_only:
        raise TfllmError(f"--{chat_only[0].replace('_', '-')} is for --task chat")
    given = {k: getattr(args, k) for k in (
        "epochs", "batch_size", "lr", "backbone_lr_ratio", "warmup_ratio", "weight_decay",
        "dropout", "eval_interval", "patience", "seed")}
    settings = FinetuneSettings(**{k: v for k, v in given.items() if v is not None},
                                jit_compile=not args.no_jit)
    if args.run is None and not args.from_scratch:
        raise TfllmError("pass --run PRETRAINED (a tfllm train run) or --from-scratch")
    if args.max_len and not args.from_scratch:
        raise TfllmError("--max-len applies to --from-scratch only (a pretrained run keeps "
                         "its context)")
    result = finetune(args.out, args.data, args.run, "classify", args.from_scratch,
                      args.preset, settings, args.text_column, args.label_column,
                      {"max_len": args.max_len}, args.overwrite, args.tfds_manual_dir,
                      args.tfds_data_dir, verbose=1 if sys.stdout.isatty() else 2,
                      pair_column=args.pair_column, holdout=args.holdout)
    if result.get("skipped_empty"):
        print(f"skipped {result['skipped_empty']} row(s) with empty text")
    if result.get("dropped_contained"):
        print(f"dropped {result['dropped_contained']} training row(s) found inside held-out "
              "rows (--holdout longest)")
    print(f"run directory: {args.out}")
    print(json.dumps(result))
