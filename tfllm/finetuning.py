"""Fine-tuning for classification: `tfllm finetune --task classify`, evaluation, prediction.

A classifier run directory holds what a language model run does (config.json, the
tokenizer, model.keras, best.weights.h5, metrics.jsonl, logs/) with `"objective":
"classify"` and a `"task"` entry: class names, pooling, the padded sequence length.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import weakref

import keras
import numpy as np
import tensorflow as tf

from tfllm import runs
from tfllm.config import ConfigError
from tfllm.data.classification import (added_tokens, choose_seq_len, encode_texts,
                                       make_classification_dataset, round_seq_len,
                                       split_pairs, token_counts)
from tfllm.errors import DataError, RunDirError, TfllmError
from tfllm.tokenizers import tokenizer_files

TASKS = ("classify",)
# "encoder": an imported BERT without a head (sentence-transformers models).
PRETRAINED_OBJECTIVES = ("clm", "mlm", "encoder")


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


# -- encoding: tfllm.data.classification (re-exported here, where callers found it) ------

def label_ids(labels, class_names) -> list[int]:
    """Map label names to ids; DataError listing any label the model never saw."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20])
        raise DataError(f"labels the model never saw: {shown}"
                        f"{' ...' if len(unknown) > 20 else ''}; it knows {class_names}")
    return [index[label] for label in labels]


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
    from tfllm.training import build_model_config, read_metrics

    settings = settings or FinetuneSettings()
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if from_scratch == (run is not None):
        raise ConfigError("pass either --run PRETRAINED or --from-scratch (not both)")
    if run is not None:
        stored = runs.read_run_config(run)
        kind = stored.get("objective", "clm")
        if kind not in PRETRAINED_OBJECTIVES:
            raise RunDirError(f"{run} is a {kind!r} run; --task classify fine-tunes a "
                              "pretrained language model or encoder (tfllm train --objective "
                              "mlm|clm, tfllm import-hf)")
    # Checked before the data is read; nothing is replaced until the new run is complete.
    output = runs.new_run(out, overwrite, (runs.inputs_of(run) if run else []) +
                          data_paths(data, tfds_manual_dir, tfds_data_dir), "finetune")
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
        encoder_pooling = pretrained.pooling if kind == "encoder" else None
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
    with output.staging(in_place=True) as run_dir:
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
    from tfllm.training import MetricsLogger

    if run is not None:
        _copy_tokenizer_files(run, run_dir, tokenizer_spec)
    else:
        tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
    head_dropout = settings.dropout if settings.dropout is not None else 0.1
    # An encoder trained to mean-pool (sentence-transformers) is fine-tuned mean-pooled.
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
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        BestAccuracyCheckpoint(best_path),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                      patience=settings.patience),
        keras.callbacks.TensorBoard(os.path.join(run_dir, runs.LOGS), update_freq="epoch",
                                    write_graph=False),
        MetricsLogger(os.path.join(run_dir, runs.METRICS), eval_interval,
                      settings.batch_size * seq_len),
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        # An untied LM head is not part of a classifier; Keras warns it gets no gradient.
        warnings.filterwarnings("ignore", message=".*Gradients do not exist for variables "
                                r"\['backbone/embedding/output_embeddings'\].*")
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=eval_interval,
                            validation_data=val_ds, callbacks=callbacks, verbose=verbose)
    losses = history.history.get("loss") or [float("nan")]
    if not math.isfinite(losses[-1]):
        kept = ("the run in --out is unchanged" if run_dir != out else
                f"the best finite model so far is in {best_path}" if os.path.isfile(best_path)
                else "no finite model was saved")
        raise TfllmError(f"fine-tuning diverged (the loss became NaN or infinite); {kept}; "
                         f"lower --lr (now {settings.lr:g}) and run again with --overwrite")
    # The model kept is the one with the best validation accuracy (early stopping's choice).
    if os.path.isfile(best_path):
        model.load_weights(best_path)
    model.save(os.path.join(run_dir, runs.MODEL))


# -- using a classifier -----------------------------------------------------------------

def load_classifier(run_dir: str, weights: str = "final"):
    """`(model, task_info)` of a classifier run (RunDirError for other runs)."""
    stored = runs.read_run_config(run_dir)
    if stored.get("objective") != "classify":
        raise RunDirError(f"{run_dir} is not a classifier run (objective "
                          f"{stored.get('objective', 'clm')!r}); fine-tune one with "
                          "tfllm finetune --task classify")
    return runs.load(run_dir, weights=weights), stored["task"]


def pair_mode(task_info):
    """True: the classifier reads sentence pairs; False: single texts; None: either (an
    imported checkpoint, which does not say what it was fine-tuned on)."""
    if "pair" not in task_info:
        return False  # runs from before sentence pairs
    return None if task_info["pair"] is None else bool(task_info["pair"])


def check_pairs(task_info, given: bool, run_dir="the run"):
    """DataError when sentence pairs go to a single-text classifier, or the reverse."""
    mode = pair_mode(task_info)
    if mode is True and not given:
        raise DataError(f"{run_dir} classifies sentence pairs: give each text its pair "
                        "(--text-pair, --pair-column, or text<TAB>pair lines)")
    if given and mode is False:
        raise DataError(f"{run_dir} classifies single texts, not pairs; drop --text-pair / "
                        "--pair-column, or fine-tune a pair classifier with --pair-column")


def uses_token_types(model, task_info) -> bool:
    """Whether a fixed-input export (TFLite, ONNX) of the classifier takes `token_type_ids`:
    a backbone with token types (BERT) serving sentence pairs (runs fine-tuned on pairs,
    imported checkpoints)."""
    return bool(model.backbone.type_vocab_size) and pair_mode(task_info) is not False


def encode_rows(tokenizer, task_info, texts, token_types=False) -> dict:
    """{"token_ids"[, "token_type_ids"]}: int32 numpy (n, seq_len) of texts (strings or
    `(text, pair)` tuples) padded to the run's length, as the exporters feed them."""
    first, pairs = split_pairs(texts)
    inputs = encode_texts(tokenizer, tf.constant(first), task_info["seq_len"],
                          task_info["add_bos"], None if pairs is None else tf.constant(pairs))
    out = {"token_ids": inputs["token_ids"].numpy()}
    if token_types:
        types = inputs.get("token_type_ids")
        out["token_type_ids"] = (np.zeros_like(out["token_ids"]) if types is None
                                 else types.numpy().astype(np.int32))
    return out


def predict_proba(model, task_info, texts, batch_size=64, pairs=None) -> np.ndarray:
    """Class probabilities (n, num_classes) for a list of strings (and, for a sentence-pair
    classifier, the list of their second texts).

    Rows are sorted by length and each batch padded to its longest row (rounded up to 8
    tokens): padding is masked, so results do not depend on it, and short texts cost a
    fraction of the run's full length.
    """
    check_pairs(task_info, pairs is not None)
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(pairs)} pairs; give one pair per text")
    if not texts:
        return np.zeros((0, model.num_classes), np.float32)
    tokenizer, add_bos, max_len = model.tokenizer, task_info["add_bos"], model.backbone.max_len
    counts = token_counts(tokenizer, list(texts), add_bos, pairs)
    order = np.argsort(counts, kind="stable")
    forward = _forward_fn(model)
    out = np.zeros((len(texts), model.num_classes), np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        seq_len = round_seq_len(max(counts[i] for i in rows), max_len)
        inputs = encode_texts(tokenizer, tf.constant([texts[i] for i in rows]), seq_len,
                              add_bos, None if pairs is None else
                              tf.constant([pairs[i] for i in rows]))
        out[rows] = forward(inputs).numpy()
    return out


def _forward_fn(model):
    """The classifier's softmax as one graph for every batch shape (traced per shape once,
    then for any shape)."""
    fn = _FORWARD.get(model)
    if fn is None:
        fn = tf.function(lambda inputs: tf.nn.softmax(model(inputs, training=False), axis=-1),
                         reduce_retracing=True)
        _FORWARD[model] = fn
    return fn


# Kept beside the model, not on it: Keras would track a tf.function attribute as state.
_FORWARD = weakref.WeakKeyDictionary()


def classification_report(y_true, y_pred, class_names) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    `confusion[i][j]` counts rows of true class i predicted as class j.
    """
    k = len(class_names)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (np.asarray(y_true), np.asarray(y_pred)), 1)
    per_class, f1s = {}, []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4),
                           "recall": round(float(recall), 4), "f1": round(float(f1), 4),
                           "support": int(actual)}
        f1s.append(f1)
    total = confusion.sum()
    return {"accuracy": round(float(np.trace(confusion) / total), 4) if total else 0.0,
            "macro_f1": round(float(np.mean(f1s)), 4), "per_class": per_class,
            "confusion_matrix": confusion.tolist(), "class_names": list(class_names),
            "rows": int(total)}


def evaluate_classifier(run_dir, data=None, text_column=None, label_column=None,
                        weights="final", batch_size=64, tfds_manual_dir=None,
                        tfds_data_dir=None, pair_column=None) -> dict:
    """Score a classifier run on labeled data.

    Args:
        run_dir: a classifier run directory.
        data: labeled data spec; default (or the spec it was trained on) evaluates the
            run's own held-out validation rows, another file is evaluated whole.
        text_column, label_column: fields (default: those the run was trained with).
        weights: "final" or "best".
        pair_column: the second text's field, for sentence-pair classifiers (default: the
            run's own).

    Returns:
        `classification_report(...)` plus "data" and "skipped_empty".
    """
    from tfllm.data import LabeledData

    stored = runs.read_run_config(run_dir)
    model, task_info = load_classifier(run_dir, weights)
    trained = stored.get("data") or {}
    if data is None and not trained.get("spec"):
        raise DataError(f"{run_dir} has no data of its own (an imported classifier); pass "
                        "--data SPEC with labeled rows to evaluate on")
    own = data is None or data == trained.get("spec")
    data = data or trained.get("spec")
    pair_column = pair_column or trained.get("pair_column")
    check_pairs(task_info, bool(pair_column), run_dir)
    if own:
        text_column = text_column or trained.get("text_column")
        label_column = label_column or trained.get("label_column")
    seed = stored.get("finetune", {}).get("seed", 0)
    rows = LabeledData(data, text_column, label_column, require_labels=True,
                       seed=seed if own else 0, tfds_manual_dir=tfds_manual_dir,
                       tfds_data_dir=tfds_data_dir, pair_column=pair_column,
                       holdout=trained.get("holdout", "random") if own else "random")
    if own:
        pairs = rows.val
    elif data.startswith("tfds:") and data.count(":") < 2:
        pairs = rows.val
    elif data.startswith("tfds:"):
        pairs = rows.train
    else:
        pairs = rows.all
    y_true = label_ids([y for _, y in pairs], task_info["class_names"])
    texts, second = split_pairs(t for t, _ in pairs)
    probs = predict_proba(model, task_info, texts, batch_size, pairs=second)
    report = classification_report(y_true, probs.argmax(axis=1), task_info["class_names"])
    report.update(data=data, skipped_empty=rows.skipped_empty)
    return report


def format_report(report) -> list[str]:
    """Human-readable lines of a `classification_report` (the CLI prints these)."""
    names = report["class_names"]
    width = max(8, *(len(n) for n in names))
    lines = [f"data: {report['data']}  rows: {report['rows']}"
             + (f"  (skipped {report['skipped_empty']} with empty text)"
                if report.get("skipped_empty") else ""),
             f"accuracy: {report['accuracy']:.4f}",
             f"macro-F1: {report['macro_f1']:.4f}",
             "",
             f"{'class':<{width}}  precision  recall  f1      support"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:<9.4f}  {c['recall']:<6.4f}  "
                     f"{c['f1']:<6.4f}  {c['support']}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              " " * (width + 2) + "  ".join(f"{n:>{max(6, len(n))}}" for n in names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(
            f"{v:>{max(6, len(n))}}" for v, n in zip(row, names)))
    return lines


__all__ = ["FinetuneSettings", "finetune", "load_classifier", "predict_proba",
           "check_pairs", "pair_mode", "uses_token_types", "encode_rows", "classification_report", "evaluate_classifier", "format_report",
           "encode_texts", "added_tokens", "choose_seq_len", "make_classification_dataset"]
