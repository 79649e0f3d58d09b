"""Scoring a classifier run on labeled data: accuracy, macro-F1, per class, confusion."""

from __future__ import annotations

import numpy as np

from tfllm import runs
from tfllm.errors import DataError
from tfllm.tasks.classify.data import label_ids
from tfllm.tasks.classify.predict import check_pairs, load_classifier, predict_proba
from tfllm.tokenizers.packing import split_pairs


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

