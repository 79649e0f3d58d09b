"""The run directory: the one hand-off between training, generation, evaluation and export.

    runs/NAME/config.json      {"model": ModelConfig, "preset", "data", "training", ...}
    runs/NAME/tokenizer.model  SentencePiece model
    runs/NAME/model.keras      final model;  best.weights.h5  best-validation weights
    runs/NAME/backup/          BackupAndRestore state for --resume
    runs/NAME/metrics.jsonl    one JSON object per evaluation
    runs/NAME/logs/            TensorBoard
"""

from __future__ import annotations

import json
import os

from tfllm.config import ModelConfig
from tfllm.errors import RunDirError

CONFIG = "config.json"
TOKENIZER = "tokenizer.model"
MODEL = "model.keras"
BEST_WEIGHTS = "best.weights.h5"
BACKUP = "backup"
METRICS = "metrics.jsonl"
LOGS = "logs"


def read_run_config(run_dir: str) -> dict:
    """The parsed config.json of a run directory (RunDirError if absent or broken)."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not os.path.isfile(path):
        raise RunDirError(f"{run_dir} is not a tfllm run directory (no {CONFIG})")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON: {e}") from e


def write_run_config(run_dir: str, config: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, CONFIG + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(run_dir, CONFIG))  # atomic: a kill never leaves half a file


def model_config_of(run_dir: str) -> ModelConfig:
    return ModelConfig.from_dict(read_run_config(run_dir)["model"])


def load(run_dir: str, weights: str = "final"):
    """Load a run's trained model with its tokenizer attached as `model.tokenizer`.

    Args:
        run_dir: a run directory written by `tfllm train`.
        weights: "final" (model.keras) or "best" (best validation checkpoint).

    Example:
        >>> lm = tfllm.load("runs/demo")  # doctest: +SKIP
        >>> lm.tokenizer.decode(lm.tokenizer.encode("ROMEO:"))  # doctest: +SKIP
        'ROMEO:'
    """
    import keras

    import tfllm.models  # noqa: F401  (registers the serializable classes)
    from tfllm.tokenizers import load_tokenizer

    config = read_run_config(run_dir)
    model_path = os.path.join(run_dir, MODEL)
    if not os.path.isfile(model_path):
        raise RunDirError(f"{run_dir} has no trained model ({MODEL}); is training finished? "
                          f"Resume it with: tfllm train --resume --out {run_dir}")
    model = keras.saving.load_model(model_path, compile=False)
    if weights == "best":
        best = os.path.join(run_dir, BEST_WEIGHTS)
        if not os.path.isfile(best):
            raise RunDirError(f"{run_dir} has no {BEST_WEIGHTS}")
        model.load_weights(best)
    elif weights != "final":
        raise RunDirError(f"weights must be 'final' or 'best', got {weights!r}")
    model.tokenizer = load_tokenizer(run_dir, config.get("tokenizer", TOKENIZER))
    return model
