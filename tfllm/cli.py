"""The `tfllm` command line: train, finetune, generate, translate, chat, merge, classify,
embed, evaluate, import-hf, import-gguf, export (saved-model, tflite, litertlm, onnx, hf)
serve and gateway."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

# tf.data pipelines are shuffled by tfllm itself; Keras warns that its own shuffle is unused.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")

# Nothing here imports TensorFlow: --help and argument errors answer at once, and the
# commands import what they need once the arguments are known.
from tfllm import tasks
from tfllm.config import PRECISIONS, PRESETS, STRATEGIES
from tfllm.errors import TfllmError, run_main
from tfllm.tasks.chat import commands as chat_cli
from tfllm.untrusted import excerpt, utf8_argument


def _number(cast, accept, what):
    """An argparse type: `cast(text)`, kept when `accept(value)`; messages name `what`."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {excerpt(text)}")
        # An int of 400 digits is no float: math.isfinite would raise OverflowError.
        if (isinstance(value, float) and not math.isfinite(value)) or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {excerpt(value)}")
        return value
    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive finite number")
_finite_float = _number(float, lambda v: True, "a finite number")
# Sampling seeds are hashed per row from an int64; training seeds go to NumPy's (32 bits).
_sampling_seed = _number(int, lambda v: -2 ** 63 <= v < 2 ** 63, "a 64-bit integer")
_training_seed = _number(int, lambda v: 0 <= v < 2 ** 32, "an integer from 0 to 4294967295")


def _add_data_args(p, required):
    p.add_argument("--data", required=required,
                   help="tfds:NAME[:SPLIT] (any TFDS dataset with a text feature), "
                        "text:GLOB (local UTF-8 files), or the text of a labeled table: "
                        "tsv:PATH, csv:PATH, jsonl:PATH")
    p.add_argument("--text-feature", "--text-column", dest="text_feature",
                   help="TFDS feature or table column holding the text (default: the "
                        "dataset's only text feature; for tables text, sentence, content "
                        "or review)")
    p.add_argument("--tfds-manual-dir", help="directory with a TFDS dataset's source files, "
                   "for offline use (default: $TFDS_MANUAL_DIR)")
    p.add_argument("--tfds-data-dir", help="where TFDS prepares datasets "
                   "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")


def _add_labeled_args(p, required):
    p.add_argument("--data", required=required,
                   help="labeled data: tsv:PATH, csv:PATH (header row), jsonl:PATH, or "
                        "tfds:NAME[:SPLIT] (e.g. tfds:glue/sst2)")
    p.add_argument("--text-column", help="field holding the text (default: text, sentence, "
                   "content or review)")
    p.add_argument("--label-column", help="field holding the label (default label)")
    p.add_argument("--pair-column", help="field holding a second text: sentence-pair "
                   "classification (NLI, paraphrase, QA relevance), encoded "
                   "[CLS] text [SEP] pair [SEP]")
    p.add_argument("--tfds-manual-dir", help="directory with a TFDS dataset's source files, "
                   "for offline use (default: $TFDS_MANUAL_DIR)")
    p.add_argument("--tfds-data-dir", help="where TFDS prepares datasets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfllm", description="Train and use transformer language models in TensorFlow.",
        epilog="Native libraries' log lines (TensorFlow, LiteRT, SentencePiece) are kept off "
               "the terminal; --verbose or TFLLM_LOG_LEVEL=info shows them.")
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Also accepted after the command; SUPPRESS keeps a top-level --verbose from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the native libraries' log lines")

    t = sub.add_parser(
        "train", parents=[common],
        help="pretrain a language model into a run directory",
        description="Pretrain a GPT-style causal LM (--objective clm), a "
                    "BERT-style encoder with masked-LM (--objective mlm), or train an "
                    "encoder-decoder translator on parallel text (--objective seq2seq) "
                    "with model.fit under tf.distribute. Writes config, tokenizer, "
                    "checkpoints, metrics.jsonl, TensorBoard logs and "
                    "model.keras to --out.")
    t.add_argument("--objective", choices=tasks.PRETRAINING, default=None,
                   help="clm: next-token prediction (default); mlm: BERT's masked LM "
                        "(15%% of tokens, 80/10/10 replacement) on an encoder preset; "
                        "seq2seq: translation, source -> target columns of --data, on an "
                        "encoder-decoder preset")
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model preset (default shakespeare-char for clm, bert-mini for mlm, "
                        "transformer-mt-small for seq2seq; on --resume the run's own)")
    _add_data_args(t, required=False)
    t.add_argument("--source-column", help="seq2seq: the field holding the source text "
                   "(e.g. en)")
    t.add_argument("--target-column", help="seq2seq: the field holding the target text "
                   "(e.g. fr)")
    t.add_argument("--label-smoothing", type=_finite_float,
                   help="seq2seq: label smoothing of the cross-entropy, 0 to 0.99 "
                        "(default 0.1)")
    t.add_argument("--truncate", action="store_true",
                   help="seq2seq: cut pairs longer than the context (default: an error "
                        "naming the row)")
    t.add_argument("--no-protect-placeholders", action="store_true",
                   help="seq2seq: train on placeholders (%%s, {name}) as plain text "
                        "(default: each is one sentinel token, put back after translating)")
    t.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    t.add_argument("--steps", type=_positive_int, help="optimizer steps (default 2000)")
    t.add_argument("--batch-size", type=_positive_int,
                   help="examples per replica per step (default 12)")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (default 1e-3)")
    t.add_argument("--warmup-steps", type=_non_negative_int,
                   help="linear warmup steps (default 100)")
    t.add_argument("--min-lr-ratio", type=_finite_float,
                   help="final lr / peak lr, 0 to 1 (default 0.1)")
    t.add_argument("--weight-decay", type=_finite_float,
                   help="AdamW weight decay, 0 to 1 (default 0.1)")
    t.add_argument("--eval-interval", type=_positive_int,
                   help="steps between evaluations and checkpoints (default 250)")
    t.add_argument("--eval-steps", type=_positive_int,
                   help="max validation batches per evaluation (default 100)")
    t.add_argument("--seed", type=_training_seed, help="random seed (default 1337)")
    t.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy "
                   "(default auto: TPU if --tpu/TPU_NAME, multiworker if TF_CONFIG has "
                   "several workers, mirrored with >1 GPU, else default)")
    t.add_argument("--tpu", help="TPU name or grpc://address (default $TPU_NAME)")
    t.add_argument("--precision", choices=PRECISIONS, help="compute precision (default float32)")
    t.add_argument("--no-jit", action="store_true", help="do not compile steps with XLA")
    t.add_argument("--dropout", type=_finite_float,
                   help="override the preset's dropout (0 <= p < 1)")
    t.add_argument("--vocab-size", type=_positive_int,
                   help="override the preset's vocabulary size (bpe/unigram tokenizers)")
    t.add_argument("--max-len", type=_positive_int,
                   help="override the preset's context length")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last saved interval")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    g = sub.add_parser(
        "generate", parents=[common],
        help="generate text from a trained run",
        description="Generate continuations of prompts with the KV cache. "
                    "Prompts come from --prompt, --prompt-file (one per line, "
                    "'-' for stdin) or piped stdin; an empty prompt starts from "
                    "BOS. One prompt streams to the terminal as it is produced.")
    g.add_argument("--run", required=True, help="run directory")
    g.add_argument("--prompt", action="append", type=utf8_argument, help="prompt text (repeatable); \\n is a newline")
    g.add_argument("--prompt-file", help="file with one prompt per line ('-' for stdin)")
    g.add_argument("--max-new-tokens", type=_positive_int,
                   help="tokens to generate (default: fill the model's context)")
    g.add_argument("--temperature", type=_finite_float, default=0.0,
                   help="0 for greedy decoding (default), > 0 to sample")
    g.add_argument("--top-k", type=_positive_int,
                   help="sample among the k most likely tokens (k >= 1)")
    g.add_argument("--top-p", type=_positive_float,
                   help="nucleus sampling: smallest set with mass >= p (0 < p <= 1)")
    g.add_argument("--seed", type=_sampling_seed, help="seed for reproducible sampling")
    g.add_argument("--num-samples", type=_positive_int, default=1,
                   help="continuations per prompt (default 1)")
    g.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="a prompt too long for the context: error (default) or keep its end")
    g.add_argument("--weights", choices=("final", "best"), default="final")
    constrain = g.add_mutually_exclusive_group()
    constrain.add_argument("--json-schema", metavar="FILE",
                           help="a JSON schema file: every output is JSON valid under it, "
                                "printed alone, one per line")
    constrain.add_argument("--regex", metavar="PATTERN", type=utf8_argument,
                           help="a regular expression every output matches in full, printed "
                                "alone, one per line")

    tr = sub.add_parser(
        "translate", parents=[common],
        help="translate text with an encoder-decoder run",
        description="Translate each --text (repeatable), or each line of stdin, with a run "
                    "trained with --objective seq2seq: one encoder pass, then a cached "
                    "decoder loop; beam search with --num-beams > 1. Prints one "
                    "translation per line (--json: {\"source\", \"translation\"}).")
    tr.add_argument("--run", required=True, help="seq2seq run directory")
    tr.add_argument("--text", action="append", type=utf8_argument,
                    help="source text (repeatable)")
    tr.add_argument("--num-beams", type=_positive_int, default=4,
                    help="beam width (default 4); 1 decodes greedily or samples")
    tr.add_argument("--length-penalty", type=_finite_float, default=1.0,
                    help="beam scores are log p / length ** this (default 1.0)")
    tr.add_argument("--max-new-tokens", type=_positive_int,
                    help="target tokens at most (default: the model's context)")
    tr.add_argument("--temperature", type=_finite_float, default=0.0,
                    help="with --num-beams 1: 0 greedy (default), > 0 sample")
    tr.add_argument("--top-k", type=_positive_int, help="sample among the k most likely tokens")
    tr.add_argument("--top-p", type=_positive_float, help="nucleus sampling mass")
    tr.add_argument("--seed", type=_sampling_seed, help="seed for reproducible sampling")
    tr.add_argument("--batch-size", type=_positive_int, default=32,
                    help="sources decoded together (default 32)")
    tr.add_argument("--truncate", action="store_true",
                    help="cut sources longer than the context (default: an error)")
    tr.add_argument("--json", action="store_true", help="one JSON object per line")
    tr.add_argument("--weights", choices=("final", "best"), default="final")

    # The families are the importers' own lists, so the help cannot fall behind them.
    from tfllm.checkpoints import FAMILY_NAMES, IMPORTERS
    from tfllm.checkpoints.gguf import ARCHITECTURES as GGUF_ARCHITECTURES

    families = ", ".join(dict.fromkeys(FAMILY_NAMES[t] for t in IMPORTERS))
    h = sub.add_parser(
        "import-hf", parents=[common],
        help=f"import a Hugging Face checkpoint ({families}) as a run",
        description="Import a checkpoint saved by Hugging Face (a directory with "
                    "config.json, model.safetensors or its shards, and the tokenizer: "
                    "tokenizer.json, tokenizer.model, vocab.txt, or GPT-2's vocab.json + "
                    "merges.txt) into a run directory that generate, evaluate, finetune "
                    "and the exporters accept. config.json's model_type picks the family: "
                    f"{', '.join(IMPORTERS)}.")
    h.add_argument("--checkpoint", required=True, help="checkpoint directory")
    _add_import_args(h, "gpt2")
    g = sub.add_parser(
        "import-gguf", parents=[common],
        help=f"import a llama.cpp GGUF file ({', '.join(GGUF_ARCHITECTURES)}) as a run",
        description="Import a GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf): weights "
                    "dequantized to float, hyper-parameters, tokenizer (byte-level BPE or "
                    "SentencePiece) and chat template from its metadata. "
                    f"Architectures: {', '.join(GGUF_ARCHITECTURES)}.")
    g.add_argument("--gguf", required=True, help="the .gguf file")
    _add_import_args(g, "smollm2")

    f = sub.add_parser(
        "finetune", parents=[common],
        help="fine-tune a pretrained run into a classifier or a chat model",
        description="--task classify (default): fine-tune a pretrained run (masked-LM "
                    "encoder, causal LM, or an imported BERT) on labeled texts or "
                    "sentence pairs with model.fit, or train the same classifier from "
                    "scratch as a baseline. A seeded 10%% of a file's rows is held out for "
                    "validation (--holdout longest: the longest rows, and no "
                    "training row found inside one); the model kept is the one "
                    "with the best validation accuracy. --task chat: fine-tune a causal "
                    "LM on conversations (all weights, or LoRA adapters with "
                    "--lora-rank); the model kept has the lowest validation loss.")
    f.add_argument("--run", help="pretrained run directory (tfllm train --objective mlm|clm, or an "
                   "imported checkpoint)")
    f.add_argument("--from-scratch", action="store_true",
                   help="no pretraining: train tokenizer and model on the labeled data")
    f.add_argument("--preset", choices=sorted(PRESETS), default="bert-mini",
                   help="model preset with --from-scratch (default bert-mini)")
    f.add_argument("--task", choices=tasks.FINETUNING, default="classify",
                   help="what to fine-tune for (default classify)")
    _add_labeled_args(f, required=False)  # required, but --resume reads it from the run
    chat_cli.add_finetune_arguments(f, _positive_int, _positive_float)
    f.add_argument("--out", required=True, help="classifier run directory, e.g. runs/NAME")
    f.add_argument("--holdout", choices=("random", "longest"), default="random",
                   help="validation rows of a file: a seeded random 10%% (default), or "
                        "the longest 10%% (at most 1,000) with every training row that "
                        "occurs inside one dropped; use longest for datasets that hold "
                        "the phrases of their sentences as rows (GLUE SST-2)")
    f.add_argument("--epochs", type=_positive_int, help="passes over the data (default 3)")
    f.add_argument("--batch-size", type=_positive_int, help="rows per step (default 32)")
    f.add_argument("--lr", type=_positive_float, help="peak learning rate of the head "
                   "(default 5e-4)")
    f.add_argument("--backbone-lr-ratio", type=_positive_float,
                   help="backbone learning rate / head learning rate for a pretrained "
                        "backbone (default 0.5)")
    f.add_argument("--warmup-ratio", type=_finite_float,
                   help="fraction of steps warming up, 0 <= r < 1 (default 0.1)")
    f.add_argument("--weight-decay", type=_finite_float,
                   help="AdamW weight decay, 0 to 1 (default 0.01)")
    f.add_argument("--dropout", type=_finite_float,
                   help="dropout, 0 <= p < 1 (default: the backbone's own)")
    f.add_argument("--eval-interval", type=_positive_int,
                   help="steps between validations (default: an epoch, at most 500)")
    f.add_argument("--patience", type=_positive_int,
                   help="validations without improvement before stopping (default 3)")
    f.add_argument("--max-len", type=_positive_int,
                   help="with --from-scratch: override the preset's context length")
    f.add_argument("--seed", type=_training_seed, help="random seed (default 1337)")
    f.add_argument("--no-jit", action="store_true", help="do not compile steps with XLA")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    chat_cli.add_parsers(sub, common, _positive_int, _positive_float, _finite_float,
                         _sampling_seed)

    # Listed here for `tfllm --help`; `main` hands their arguments to the exporter or the
    # server unparsed (see `_passthrough`).
    x = sub.add_parser(
        "export", help=f"export a run: {', '.join(EXPORTERS)}",
        description="tfllm export FORMAT --run RUN --out OUT [options]: the exporters of "
                    "export/ (formats: " + ", ".join(EXPORTERS) + "); `tfllm export FORMAT "
                    "--help` lists a format's options.")
    x.add_argument("format", choices=sorted(EXPORTERS))
    sub.add_parser("serve", help="serve exported SavedModels over TF Serving's REST and gRPC "
                                 "APIs, and a run over the OpenAI API (development; "
                                 "`tfllm serve --help`)")
    sub.add_parser("gateway", help="the OpenAI API in front of TF Serving (a stateless "
                                   "process for deployments; `tfllm gateway --help`)")

    c = sub.add_parser(
        "classify", parents=[common],
        help="label texts with a classifier run",
        description="Print the predicted label and its probability for each "
                    "text: from --text (repeatable) or one per line of stdin. "
                    "--json prints one JSON object per text instead.")
    c.add_argument("--run", required=True, help="classifier run directory")
    c.add_argument("--text", action="append", type=utf8_argument,
                   help="text to classify (repeatable)")
    c.add_argument("--text-pair", action="append", type=utf8_argument,
                   help="sentence-pair classifiers: the second text of each --text, in the "
                        "same order (stdin lines: text<TAB>pair)")
    c.add_argument("--json", action="store_true", help="one JSON object per line, with "
                   "every class's probability")
    c.add_argument("--weights", choices=("final", "best"), default="final")

    m = sub.add_parser(
        "embed", parents=[common],
        help="sentence embeddings from an encoder run",
        description="Print one JSON object per text, {\"text\", \"embedding\"}: the "
                    "unit-length vector of an encoder run (an imported sentence-"
                    "transformers model such as all-MiniLM-L6-v2, a BERT, a masked-LM or "
                    "encoder classifier run). Texts from --text (repeatable) or one per "
                    "line of stdin. Cosine similarity is the dot product of two vectors.")
    m.add_argument("--run", required=True, help="encoder run directory")
    m.add_argument("--text", action="append", type=utf8_argument,
                   help="text to embed (repeatable)")
    m.add_argument("--pooling", choices=("mean", "cls"),
                   help="average the real tokens (mean) or take [CLS] (cls); default: the "
                        "run's own, else mean")

    e = sub.add_parser(
        "evaluate", parents=[common],
        help="evaluate a run: LM loss/perplexity, classifier accuracy, or translation "
        "BLEU/chrF",
        description="Language model runs: validation loss and perplexity "
                    "(masked LMs: over masked tokens, plus their accuracy). "
                    "Classifier runs: accuracy, macro-F1, per-class "
                    "precision/recall and the confusion matrix on --data "
                    "(default: the run's held-out rows). Translation (seq2seq) runs: "
                    "loss, BLEU and chrF (sacrebleu) and placeholder accuracy (rows whose "
                    "output keeps exactly the source's %%s / {name} fields), beam 4 by "
                    "default. The last line is one "
                    "JSON object of the metrics.")
    e.add_argument("--run", required=True, help="run directory")
    _add_data_args(e, required=False)
    e.add_argument("--label-column", help="classifier runs: the label field (default: the "
                   "run's own, else label)")
    e.add_argument("--pair-column", help="sentence-pair classifier runs: the second text's "
                   "field (default: the run's own)")
    e.add_argument("--source-column", help="seq2seq runs: the source field (default: the "
                   "run's own)")
    e.add_argument("--target-column", help="seq2seq runs: the reference translation's field "
                   "(default: the run's own)")
    e.add_argument("--num-beams", type=_positive_int, default=4,
                   help="seq2seq runs: beam width for BLEU/chrF (default 4)")
    e.add_argument("--length-penalty", type=_finite_float, default=1.0,
                   help="seq2seq runs: beam length penalty (default 1.0)")
    e.add_argument("--max-rows", type=_positive_int,
                   help="seq2seq runs: score only the first N pairs")
    e.add_argument("--batch-size", type=_positive_int, help="default: the run's batch size")
    e.add_argument("--eval-steps", type=_positive_int, help="max batches (default: all)")
    e.add_argument("--weights", choices=("final", "best"), default="final",
                   help="final model or best validation checkpoint")
    return parser


def _train(args):
    import dataclasses

    from tfllm import runs
    from tfllm.training import TrainSettings

    if args.resume and not runs.is_run_dir(args.out):
        what = "does not exist" if not os.path.exists(args.out) else \
            f"is not a tfllm run directory (no {runs.CONFIG})"
        raise TfllmError(f"--resume: {args.out} {what}; start a new run without --resume")
    stored = runs.read_run_config(args.out) if args.resume else None
    base = TrainSettings(**stored["training"]) if stored else TrainSettings()
    given = {k: getattr(args, k) for k in (
        "steps", "batch_size", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
        "eval_interval", "eval_steps", "seed", "strategy", "tpu", "precision")}
    changes = {k: v for k, v in given.items() if v is not None}
    if args.no_jit:
        changes["jit_compile"] = False
    if "steps" in changes and "eval_interval" not in changes and \
            changes["steps"] < base.eval_interval:
        changes["eval_interval"] = changes["steps"]
    settings = dataclasses.replace(base, **changes)
    task = tasks.for_objective(args.objective) if args.objective else \
        tasks.of_config(stored) if stored else tasks.for_objective(tasks.DEFAULT_OBJECTIVE)
    preset = args.preset or (stored["preset"] if stored else task.default_preset)
    data = args.data or (stored["data"]["spec"] if stored else None)
    if data is None:
        raise TfllmError("--data is required (tfds:NAME[:SPLIT] or text:GLOB)")
    text_feature = args.text_feature or (stored["data"].get("text_feature") if stored else None)
    overrides = {"dropout": args.dropout, "vocab_size": args.vocab_size,
                 "max_len": args.max_len}
    if stored:
        overrides = {**{k: stored["model"][k] for k in ("dropout", "max_len")},
                     **{k: v for k, v in overrides.items() if v is not None}}
    options = task.train_options({k: getattr(args, k) for k in (
        "source_column", "target_column", "label_smoothing", "truncate",
        "no_protect_placeholders")}, stored)
    record = tasks.train(args.out, data, preset, settings, overrides, text_feature,
                         args.tfds_manual_dir, args.tfds_data_dir, args.resume, args.overwrite,
                         verbose=1 if sys.stdout.isatty() else 2, objective=task.objective,
                         **options)
    print(f"run directory: {args.out}")
    print(json.dumps(record))


def _evaluate(args):
    tasks.of_run(args.run).evaluate(args)


def _finetune(args):
    return tasks.get(args.task).finetune(args)


def _texts(args) -> list[str]:
    """--text values, else the non-empty lines of stdin (when it is not a terminal)."""
    texts = list(args.text or [])
    if not texts and not sys.stdin.isatty():
        texts = [line for line in _read_text("-").splitlines() if line.strip()]
    if not texts:
        raise TfllmError("no text: pass --text TEXT or pipe lines on stdin")
    return texts


def _text_pairs(args, texts, task) -> list[str] | None:
    """The second texts of a sentence-pair classifier: --text-pair values, or the part of
    each stdin line after its first tab (then `texts` is cut to the part before it)."""
    from tfllm.tasks.classify.predict import check_pairs, pair_mode

    pairs = list(args.text_pair or [])
    if pair_mode(task) is True and not pairs and not args.text:
        split = [t.split("\t", 1) for t in texts]
        bad = [n for n, parts in enumerate(split, 1) if len(parts) != 2 or not parts[1].strip()]
        if bad:
            raise TfllmError(f"{args.run} classifies sentence pairs: stdin line {bad[0]} has no "
                             "pair; write text<TAB>pair on each line")
        texts[:] = [a for a, _ in split]
        pairs = [b for _, b in split]
    check_pairs(task, bool(pairs), args.run)
    if pairs and len(pairs) != len(texts):
        raise TfllmError(f"{len(texts)} --text but {len(pairs)} --text-pair; give one pair "
                         "per text")
    return pairs or None


def _classify(args):
    from tfllm.tasks.classify.predict import load_classifier, predict_proba

    texts = _texts(args)
    model, task = load_classifier(args.run, args.weights)
    pairs = _text_pairs(args, texts, task)
    probs = predict_proba(model, task, texts, pairs=pairs)
    names = task["class_names"]
    for n, (text, p) in enumerate(zip(texts, probs)):
        best = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, **({"text_pair": pairs[n]} if pairs else {}),
                              "label": names[best],
                              "probability": round(float(p[best]), 4),
                              "probabilities": {n: round(float(v), 4)
                                                for n, v in zip(names, p)}}))
        else:
            shown = f"{text}\t{pairs[n]}" if pairs else text
            print(f"{names[best]}\t{p[best]:.4f}\t{shown}")


def _embed(args):
    from tfllm import runs
    from tfllm.tasks.embed.embeddings import embed_texts, text_encoder

    texts = _texts(args)
    encoder = text_encoder(runs.load(args.run), args.pooling)
    for text, vector in zip(texts, embed_texts(encoder, texts)):
        print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vector]}))


def _read_text(path) -> str:
    """A UTF-8 text file or stdin ('-'), with a one-line error for anything else."""
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        where = "standard input" if path == "-" else path
        raise TfllmError(f"{where} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                         "give UTF-8 text") from None


def _read_prompts(args) -> list[str]:
    prompts = [p.replace("\\n", "\n") for p in (args.prompt or [])]
    source = args.prompt_file
    if source is None and not prompts and not sys.stdin.isatty():
        source = "-"
    if source:
        # Not isfile: a pipe (`--prompt-file <(...)`) is a prompt file too.
        if source != "-" and (not os.path.exists(source) or os.path.isdir(source)):
            raise TfllmError(f"prompt file {source} "
                             f"{'is a directory' if os.path.isdir(source) else 'does not exist'}")
        lines = _read_text(source).splitlines()
        prompts += [line.replace("\\n", "\n") for line in lines if line.strip()]
    return prompts or [""]


def _generate(args):
    import tfllm
    from tfllm.models.generation import (GenerationParams, check_fits, constraint_of,
                                         encode_prompt, get_generator, new_token_room,
                                         prompt_room)

    # Validate sampling arguments before the (slow) model load.
    GenerationParams(args.max_new_tokens or 1, args.temperature, args.top_k, args.top_p)
    schema = _read_schema(args.json_schema) if args.json_schema else None
    _require_causal(args.run)
    prompts = _read_prompts(args)
    model = tfllm.load(args.run, weights=args.weights)
    tok, gen = model.tokenizer, get_generator(model)
    ids = [encode_prompt(tok, p) for p in prompts]
    longest = max(len(p) for p in ids)
    if args.max_new_tokens is not None:
        check_fits(1, args.max_new_tokens, gen.max_len, "--max-new-tokens")
    if args.truncate == "left":
        keep = prompt_room(gen.max_len, args.max_new_tokens or gen.max_len // 2)
        ids = [p[-keep:] for p in ids]
        longest = max(len(p) for p in ids)
    # Without --max-new-tokens the reply takes what the prompt leaves, at least one token.
    check_fits(longest, args.max_new_tokens or 1, gen.max_len, "--max-new-tokens",
               also=" or pass --truncate left")
    max_new = args.max_new_tokens or new_token_room(gen.max_len, longest)
    params = GenerationParams(max_new, args.temperature, args.top_k, args.top_p, args.seed)
    if args.json_schema or args.regex:
        # Structured output: the outputs alone, for a program to read.
        rows = [p for p in ids for _ in range(args.num_samples)]
        for row in gen.generate_ids(rows, params, constraint_of(model, schema, args.regex)):
            print(tok.decode(row))
        return
    if len(ids) == 1 and args.num_samples == 1:
        # One prompt: stream. Decode the whole continuation each time so multi-byte pieces
        # are never printed half-way.
        sys.stdout.write(prompts[0])
        done_ids, shown = [], ""
        for chunk in gen.stream_ids(ids[0], params):
            done_ids += chunk
            text = tok.decode(done_ids)
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        sys.stdout.write("\n")
        return
    rows = [p for p in ids for _ in range(args.num_samples)]
    texts = [tok.decode(r) for r in gen.generate_ids(rows, params)]
    for i, text in enumerate(texts):
        prompt = prompts[i // args.num_samples]
        header = f"=== prompt {i // args.num_samples + 1}"
        if args.num_samples > 1:
            header += f", sample {i % args.num_samples + 1}"
        print(f"{header} ===")
        print(prompt + text)


def _read_schema(path):
    """A --json-schema file's schema, checked before the model loads."""
    from tfllm.models.token_automaton import read_schema_file

    return read_schema_file(path)


def _add_import_args(p, example):
    p.add_argument("--out", required=True, help=f"run directory to write, e.g. runs/{example}")
    p.add_argument("--max-len", type=_positive_int,
                   help="context length (the KV cache of generation and exports); default "
                        "the model's, at most 2048; RoPE scaling still follows the checkpoint")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the stored weights (default float32; bfloat16 halves "
                        "memory and disk)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _report_import(family, out):
    from tfllm.runs import model_config_of

    cfg = model_config_of(out)
    kv = f" ({cfg.kv_heads} key/value)" if cfg.kv_heads != cfg.num_heads else ""
    print(f"imported {family} ({cfg.num_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.num_heads} heads{kv}, context {cfg.max_len}, vocabulary {cfg.vocab_size}) "
          f"into {out}")


def _import_hf(args):
    from tfllm.checkpoints import FAMILY_NAMES, import_hf, model_type_of

    out = import_hf(args.checkpoint, args.out, args.overwrite, args.max_len, args.dtype)
    # The checkpoint is an input: --out can never have replaced it.
    _report_import(FAMILY_NAMES[model_type_of(args.checkpoint)], out)


def _import_gguf(args):
    from tfllm.checkpoints.gguf import import_gguf
    from tfllm.runs import read_run_config

    out = import_gguf(args.gguf, args.out, args.overwrite, args.max_len, args.dtype)
    _report_import(f"GGUF {read_run_config(out)['preset']}", out)


def _require_causal(run_dir):
    """TfllmError unless `run_dir` is a causal LM run (what `tfllm generate` reads)."""
    task = tasks.of_run(run_dir)
    if not task.causal:
        hint = task.generate_hint()
        raise TfllmError(f"{run_dir} is not a causal language model ({task.summary})"
                         + (f"; {hint}" if hint else ""))


def _translate(args):
    import tfllm
    from tfllm.models.translation import check_num_beams, translate

    check_num_beams(args.num_beams)
    if tasks.of_run(args.run) is not tasks.get("translate"):
        raise TfllmError(f"{args.run} is not a translation run (trained with --objective "
                         "seq2seq); use tfllm generate for language models")
    texts = _texts(args)
    model = tfllm.load(args.run, weights=args.weights)
    out = translate(model, texts, args.max_new_tokens, args.num_beams, args.length_penalty,
                    args.temperature, args.top_k, args.top_p, args.seed, args.truncate,
                    batch_size=args.batch_size, progress=len(texts) > args.batch_size)
    for source, target in zip(texts, out):
        print(json.dumps({"source": source, "translation": target}, ensure_ascii=False)
              if args.json else target)


COMMANDS = {"train": _train, "finetune": _finetune, "generate": _generate,
            "translate": _translate, "chat": chat_cli.chat, "merge": chat_cli.merge,
            "classify": _classify, "embed": _embed, "evaluate": _evaluate,
            "import-hf": _import_hf, "import-gguf": _import_gguf}


# `tfllm export FORMAT` and `tfllm serve` run these modules (installed as tfllm_export and
# tfllm_serving; `python -m export.X` / `python -m serving.dev_server` in a checkout).
EXPORTERS = {"saved-model": "saved_model", "tflite": "tflite", "litertlm": "litertlm",
             "onnx": "onnx", "hf": "hf"}


def _passthrough(argv):
    """(package, module, arguments, name) when `argv` is `[--verbose] export FORMAT ...` or
    `[--verbose] serve ...` or `[--verbose] gateway ...`, else None: their options are the
    exporter's, the server's or the gateway's own, parsed there."""
    verbose = [a for a in argv[:1] if a == "--verbose"]
    rest = argv[len(verbose):]
    if rest[:1] == ["serve"]:
        return "serving", "dev_server", rest[1:] + verbose, "tfllm serve"
    if rest[:1] == ["gateway"]:
        return "serving", "gateway", rest[1:] + verbose, "tfllm gateway"
    if rest[:1] == ["export"] and len(rest) > 1 and rest[1] in EXPORTERS:
        return "export", EXPORTERS[rest[1]], rest[2:] + verbose, f"tfllm export {rest[1]}"
    return None


def _run_module(package, module, args, name) -> int:
    """Become `python -m tfllm_PACKAGE.MODULE ARGS` (or the checkout's `PACKAGE.MODULE`):
    the same options, messages and exit status as that module, its --help answering before
    TensorFlow loads. The process is replaced, not forked: a SIGTERM to `tfllm serve` (a
    service manager, `docker stop`) reaches the server itself instead of orphaning it."""
    import importlib.util

    installed = f"tfllm_{package}"
    if importlib.util.find_spec(installed) is None:
        installed = package  # a checkout without an install
    env = dict(os.environ, TFLLM_PROG=name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", f"{installed}.{module}", *args], env)
    return 1  # not reached


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = _passthrough(argv)
    if passthrough:
        return _run_module(*passthrough)
    parser = build_parser()
    args = parser.parse_args(argv)
    from tfllm.logs import quiet_native

    quiet_native(args.verbose)
    return run_main(f"tfllm {args.command}", COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
