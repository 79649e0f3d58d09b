"""Fine-tuning for classification: `tfllm finetune --task classify`.

A classifier run directory holds what a language model run does (config.json, the
tokenizer, model.keras, best.weights.h5, metrics.jsonl, logs/) with `"objective":
"classify"` and a `"task"` entry: class names, pooling, the padded sequence length.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import keras

from tfllm import runs
from tfllm.config import ConfigError
from tfllm.errors import DataError, RunDirError, TfllmError
from tfllm.tasks.classify.data import label_ids, make_classification_dataset
from tfllm.tokenizers import tokenizer_files
from tfllm.tokenizers.packing import choose_seq_len, split_pairs

TASKS = ("classify",)


@dataclasses.dataclass
class FinetuneSettings:
    """Settings of a classification fine-tuning run.

    Args:
        epochs: passes over the training rows (at most; early stopping may end sooner).
        batch_size: rows per step.
        lr: peak learning rate of the new head.
        backbone_lr_ratio: the backbone's learning rate as a fraction of `lr` (pretrained
            weights move less than the new head); 1.0 when training from scratch.
        warmup_ratio: fraction of the steps spent warming up linearly.
        weight_decay: AdamW decoupled weight decay (2-D+ weights).
        dropout: dropout of the backbone and before the head (None: the backbone's own).
        eval_interval: steps between validations (default: one epoch, at most 500).
        patience: validations without a better accuracy before stopping early.
        seed: seed of initialization, shuffling and dropout.
        jit_compile: compile steps with XLA.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-4
    backbone_lr_ratio: float = 0.5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float | None = None
    eval_interval: int | None = None
    patience: int = 3
    seed: int = 1337
    jit_compile: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        from tfllm.training import MAX_LR, check_number

        check_number("--lr", self.lr, low=0.0, high=MAX_LR, low_open=True)
        check_number("--backbone-lr-ratio", self.backbone_lr_ratio, low=0.0, high=10.0,
                     low_open=True)
        check_number("--weight-decay", self.weight_decay, low=0.0, high=1.0)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        if self.eval_interval is not None and self.eval_interval <= 0:
            raise ConfigError(f"--eval-interval must be positive, got {self.eval_interval!r}")


# -- fine-tuning ------------------------------------------------------------------------

class BestAccuracyCheckpoint(keras.callbacks.Callback):
    """Save weights at the best validation accuracy; lower validation loss breaks ties.

    Small validation sets hit the same accuracy many times; the first of those is
    rarely the best model, so a plain `ModelCheckpoint` on accuracy keeps an early one.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if logs.get("val_accuracy") is None:
            return
        from tfllm.training import weights_finite

        key = (float(logs["val_accuracy"]), -float(logs.get("val_loss", 0.0)))
        if not all(math.isfinite(k) for k in key) or not weights_finite(self.model):
            return  # a diverged interval is never kept
        if self.best is None or key > self.best:
            self.best = key
            self.model.save_weights(self.path)


def _copy_tokenizer_files(src_run, out, spec):
    files = tokenizer_files(spec)
    for f in files:
        shutil.copyfile(os.path.join(src_run, f), os.path.join(out, f))


def finetune(out: str, data: str, run: str | None = None, task: str = "classify",
             from_scratch: bool = False, preset: str = "bert-mini",
             settings: FinetuneSettings | None = None, text_column=None, label_column=None,
             model_overrides: dict | None = None, overwrite: bool = False,
             tfds_manual_dir=None, tfds_data_dir=None, verbose="auto", pair_column=None,
             holdout: str = "random") -> dict:
    """Fine-tune a pretrained run (or a fresh model) into a classifier run directory.

    Args:
        out: classifier run directory to write.
        data: labeled data spec (`tsv:`, `csv:`, `jsonl:` PATH or `tfds:NAME[:SPLIT]`).
        run: pretrained run directory (masked LM or causal LM); None with `from_scratch`.
        task: "classify".
        from_scratch: train the same classifier without pretraining (a baseline): the
            tokenizer is trained on the labeled text and the backbone built from `preset`.
        preset: model preset for `from_scratch`.
        settings: `FinetuneSettings`.
        text_column, label_column: fields of the labeled data.
        pair_column: field of the second text (sentence pairs: NLI, paraphrase, QA
            relevance); encoded `[CLS] text [SEP] pair [SEP]` with token types 0/1.
        holdout: "random" (a seeded 10%) or "longest" (the longest rows, and no training
            row that occurs inside one: for phrase datasets such as SST-2).
        model_overrides: ModelConfig fields to change from the preset (from scratch only).
        overwrite: replace an existing `out`.

    Returns:
        the final validation metrics: {"val_accuracy", "val_loss", "step", ...}.

    Example:
        >>> finetune("runs/sst2", "tsv:train.tsv", run="runs/bert")  # doctest: +SKIP
    """
    from tfllm.data import LabeledData
    from tfllm.data.spec import data_paths
    from tfllm.models import TransformerBackbone
    from tfllm.models.classifier import copy_backbone
    from tfllm.tokenizers import SentencePieceTokenizer
    from tfllm import tasks
    from tfllm.training import build_model_config, read_metrics, run_output, writing_run

    settings = settings or FinetuneSettings()
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if from_scratch == (run is not None):
        raise ConfigError("pass either --run PRETRAINED or --from-scratch (not both)")
    if run is not None:
        stored = runs.read_run_config(run)
        if tasks.of_config(stored).family not in ("decoder", "encoder"):
            raise RunDirError(f"{run} is a {stored.get('objective')!r} run; --task classify "
                              "fine-tunes a pretrained language model or encoder (tfllm "
                              "train --objective mlm|clm, tfllm import-hf)")
    # Checked before the data is read; nothing is replaced until the new run is complete.
    output = run_output(out, False, overwrite, (runs.inputs_of(run) if run else []) +
                        data_paths(data, tfds_manual_dir, tfds_data_dir), "finetune",
                        resumable=False)
    keras.utils.set_random_seed(settings.seed)

    data_rows = LabeledData(data, text_column, label_column, require_labels=True,
                            seed=settings.seed, tfds_manual_dir=tfds_manual_dir,
                            tfds_data_dir=tfds_data_dir, pair_column=pair_column,
                            holdout=holdout)
    class_names = data_rows.class_names()
    if not data_rows.val:
        raise DataError(f"{data} has too few rows to hold some out for validation")
    train_texts, train_pairs = split_pairs(t for t, _ in data_rows.train)
    train_y = label_ids([y for _, y in data_rows.train], class_names)
    val_texts, val_pairs = split_pairs(t for t, _ in data_rows.val)
    val_y = label_ids([y for _, y in data_rows.val], class_names)
    is_pair = pair_column is not None

    if run is not None:
        pretrained = runs.load(run, weights="final")
        tokenizer = pretrained.tokenizer
        backbone = copy_backbone(pretrained.backbone, settings.dropout)
        model_config = runs.model_config_of(run)
        tokenizer_spec = stored.get("tokenizer", runs.TOKENIZER)
        backbone_lr_ratio = settings.backbone_lr_ratio
        # An encoder trained to mean-pool (sentence-transformers) is fine-tuned mean-pooled.
        encoder_pooling = getattr(pretrained, "pooling", None)
        del pretrained
    else:
        requested = build_model_config(preset, model_overrides)
        if settings.dropout is not None:
            requested = requested.replace(dropout=settings.dropout)
        tokenizer = SentencePieceTokenizer.train(train_texts + (train_pairs or []),
                                                 requested.tokenizer, requested.vocab_size)
        model_config = requested.replace(vocab_size=tokenizer.vocab_size)
        if is_pair and not model_config.type_vocab_size:
            # A model of our own learns which text a token belongs to, as BERT does.
            model_config = model_config.replace(type_vocab_size=2)
        backbone = TransformerBackbone.from_model_config(model_config, name="backbone")
        tokenizer_spec = runs.TOKENIZER
        backbone_lr_ratio = 1.0
        encoder_pooling = None
    model_config = model_config.replace(dropout=backbone.dropout)
    add_bos = not backbone.causal
    seq_len = choose_seq_len(tokenizer, train_texts, backbone.max_len, add_bos, train_pairs)

    steps_per_epoch = max(1, len(train_texts) // settings.batch_size)
    eval_interval = settings.eval_interval or min(steps_per_epoch, 500)
    epochs = max(1, math.ceil(settings.epochs * steps_per_epoch / eval_interval))
    total_steps = epochs * eval_interval
    spe = math.gcd(eval_interval, 50)

    # Data, model and tokenizer are ready: the new run is written in place when nothing is
    # replaced, else beside the old one, which it replaces once complete.
    with writing_run(output, out) as run_dir:
        _fit_classifier(run_dir, out, run, tokenizer, tokenizer_spec, settings, backbone,
                        class_names, model_config, add_bos, seq_len, is_pair, encoder_pooling,
                        data_rows, preset, backbone_lr_ratio, total_steps, eval_interval,
                        epochs, spe, train_texts, train_y, train_pairs, val_texts, val_y,
                        val_pairs, verbose)
    records = read_metrics(out)
    best = max(records, key=lambda r: r.get("val_accuracy") or 0.0) if records else {}
    return {"val_accuracy": best.get("val_accuracy"), "val_loss": best.get("val_loss"),
            "step": best.get("step"), "steps_run": records[-1]["step"] if records else 0,
            "train_rows": len(train_texts), "val_rows": len(val_texts),
            "skipped_empty": data_rows.skipped_empty, "seq_len": seq_len,
            **({"dropped_contained": data_rows.dropped_contained}
               if holdout != "random" else {})}


def _fit_classifier(run_dir, out, run, tokenizer, tokenizer_spec, settings, backbone,
                    class_names, model_config, add_bos, seq_len, is_pair, encoder_pooling,
                    data_rows, preset, backbone_lr_ratio, total_steps, eval_interval, epochs,
                    spe, train_texts, train_y, train_pairs, val_texts, val_y, val_pairs,
                    verbose):
    """Write the classifier run into `run_dir` (`out`, or its staging sibling)."""
    from tfllm.models import SequenceClassifier, make_optimizer
    from tfllm.training import fit

    if run is not None:
        _copy_tokenizer_files(run, run_dir, tokenizer_spec)
    else:
        tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
    head_dropout = settings.dropout if settings.dropout is not None else 0.1
    pooling = "first" if add_bos else "last"
    if encoder_pooling == "mean":
        pooling = "mean"
    task_info = {"type": "classify", "class_names": class_names, "seq_len": seq_len,
                 "add_bos": add_bos, "pooling": pooling}
    task_info["pair"] = is_pair
    runs.write_run_config(run_dir, {
        "model": model_config.to_dict(), "objective": "classify", "task": task_info,
        "data": data_rows.describe(), "tokenizer": tokenizer_spec,
        "pretrained": os.path.abspath(run) if run else None,
        "preset": None if run else preset,
        "finetune": {**dataclasses.asdict(settings), "backbone_lr_ratio": backbone_lr_ratio,
                     "total_steps": total_steps, "eval_interval": eval_interval},
    })

    model = SequenceClassifier(backbone, class_names, pooling=task_info["pooling"],
                               dropout=head_dropout, pad_id=tokenizer.pad_id, name="classifier")
    optimizer = make_optimizer(model, settings.lr, int(settings.warmup_ratio * total_steps),
                               total_steps, 0.0, settings.weight_decay, 0.999, 1.0)
    if backbone_lr_ratio != 1.0:
        optimizer.set_lr_multiplier(model.backbone.trainable_variables, backbone_lr_ratio)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
                  jit_compile=settings.jit_compile, steps_per_execution=spe)

    train_ds = make_classification_dataset(tokenizer, train_texts, train_y, seq_len, add_bos,
                                           settings.batch_size, training=True,
                                           seed=settings.seed, pairs=train_pairs)
    val_ds = make_classification_dataset(tokenizer, val_texts, val_y, seq_len, add_bos,
                                         settings.batch_size, training=False, pairs=val_pairs)
    best_path = os.path.join(run_dir, runs.BEST_WEIGHTS)
    result = fit(model, train_ds, val_ds, run_dir, interval=eval_interval, epochs=epochs,
                 tokens_per_step=settings.batch_size * seq_len,
                 checkpoint=lambda guard: BestAccuracyCheckpoint(best_path),
                 early_stopping=("val_accuracy", "max", settings.patience), verbose=verbose,
                 # An untied LM head is not part of a classifier; Keras warns it gets no
                 # gradient.
                 ignore_warnings=[r".*Gradients do not exist for variables "
                                  r"\['backbone/embedding/output_embeddings'\].*"])
    losses = result.history.get("loss") or [float("nan")]
    if result.guard.diverged or not math.isfinite(losses[-1]):
        kept = ("the run in --out is unchanged" if run_dir != out else
                f"the best finite model so far is in {best_path}" if os.path.isfile(best_path)
                else "no finite model was saved")
        raise TfllmError(f"fine-tuning diverged (the loss became NaN or infinite); {kept}; "
                         f"lower --lr (now {settings.lr:g}) and run again with --overwrite")
    # The model kept is the one with the best validation accuracy (early stopping's choice).
    if os.path.isfile(best_path):
        model.load_weights(best_path)
    model.save(os.path.join(run_dir, runs.MODEL))
