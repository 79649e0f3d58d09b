"""The run directory: the one hand-off between training, generation, evaluation and export.

    runs/NAME/config.json      {"model": ModelConfig, "preset", "data", "training", ...}
    runs/NAME/tokenizer.model  SentencePiece model
    runs/NAME/model.keras      final model;  best.weights.h5  best-validation weights
    runs/NAME/backup/          BackupAndRestore state for --resume
    runs/NAME/metrics.jsonl    one JSON object per evaluation
    runs/NAME/logs/            TensorBoard
    runs/NAME/adapter.safetensors  a LoRA chat run's adapter (instead of model.keras;
                               its base run is named in config.json)
"""

from __future__ import annotations

import copy
import json
import os

from tfllm.config import ModelConfig
from tfllm.errors import RunDirError
from tfllm.publish import Output
from tfllm.untrusted import read_json_object

CONFIG = "config.json"
TOKENIZER = "tokenizer.model"
MODEL = "model.keras"
BEST_WEIGHTS = "best.weights.h5"
BACKUP = "backup"
METRICS = "metrics.jsonl"
LOGS = "logs"
ADAPTER = "adapter.safetensors"


def is_run_dir(path: str) -> bool:
    """True where `path` holds a tfllm run (its config.json)."""
    return os.path.isfile(os.path.join(path, CONFIG))


def new_run(out: str, overwrite: bool = False, inputs=(), command: str | None = None) \
        -> Output:
    """The publisher of a new run directory `out` (see `tfllm.publish`), checked at once:
    an existing `out` is replaced only with `overwrite` and only when it is a run tfllm
    wrote; `out` never overlaps `inputs`."""
    output = Output(out, "run", overwrite, inputs, command=command)
    output.check()
    return output


def export_output(out: str, kind: str, overwrite: bool, run_dir: str, data: str | None = None,
                  command: str | None = None, companions=()) -> Output:
    """The checked publisher of an output made from `run_dir` (an exporter's): it may not
    overlap the run, its base run or the data files `data` names. `companions`: more
    files published with it (see `tfllm.publish.Output`)."""
    from tfllm.data.spec import data_paths

    output = Output(out, kind, overwrite, inputs_of(run_dir) + (data_paths(data) if data else []),
                    companions, command=command)
    output.check()
    return output


def inputs_of(run_dir: str) -> list[str]:
    """The paths a command reading `run_dir` reads: the run and, for a LoRA run, its base."""
    paths = [run_dir]
    try:
        base = (read_run_config(run_dir).get("base") or {}).get("run")
    except RunDirError:
        base = None
    return paths + ([base] if isinstance(base, str) else [])


# Parsed config.json files by (path, inode, size, mtime): a command asks for a run's config
# from several places (the task registry, runs.load, an exporter) and reads the file once;
# a rewritten file (write_run_config replaces it) is a new key and is read again.
_READ: dict = {}


def read_run_config(run_dir: str) -> dict:
    """The parsed config.json of a run directory (RunDirError if absent or broken); a copy
    the caller may change."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} does not exist")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is None or not os.path.isfile(path):
        raise RunDirError(f"{run_dir} is not a tfllm run directory (no {CONFIG})")
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _READ:  # a run may come from elsewhere: sizes and depth are bounded
        _READ[key] = read_json_object(path, RunDirError)
    return copy.deepcopy(_READ[key])


def write_run_config(run_dir: str, config: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, CONFIG + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True, allow_nan=False)  # standard JSON only
    os.replace(tmp, os.path.join(run_dir, CONFIG))  # atomic: a kill never leaves half a file


def model_config_of(run_dir: str) -> ModelConfig:
    return ModelConfig.from_dict(read_run_config(run_dir)["model"])


def load(run_dir: str, weights: str = "final", max_len: int | None = None,
         adapter: str = "merge"):
    """Load a run's trained model with its tokenizer attached as `model.tokenizer`.

    Args:
        run_dir: a run directory written by `tfllm train`.
        weights: "final" (model.keras) or "best" (best validation checkpoint).
        max_len: another context (KV cache) length for a causal LM (exporters' --max-len).
        adapter: for a LoRA run (an adapter over a base run): "merge" adds the adapter
            into the base's kernels (a plain model, what inference and export want);
            "keep" keeps it apart and trainable (`tfllm.models.lora.load_adapter`).

    Example:
        >>> lm = tfllm.load("runs/demo")  # doctest: +SKIP
        >>> lm.tokenizer.decode(lm.tokenizer.encode("ROMEO:"))  # doctest: +SKIP
        'ROMEO:'
    """
    import keras

    import tfllm.models  # noqa: F401  (registers the serializable classes)
    from tfllm.tokenizers import load_tokenizer

    config = read_run_config(run_dir)
    if config.get("lora"):
        return _load_adapted(run_dir, config, max_len, adapter)
    model_path = os.path.join(run_dir, MODEL)
    if not os.path.isfile(model_path):
        raise RunDirError(f"{run_dir} has no trained model ({MODEL}); is training finished? "
                          f"Resume it with: tfllm train --resume --out {run_dir}")
    if weights not in ("final", "best"):
        raise RunDirError(f"weights must be 'final' or 'best', got {weights!r}")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # Keras reports a damaged archive with many types, some misleading
        raise RunDirError(f"{model_path} cannot be read ({_first_line(e)}); the file is "
                          "damaged or incomplete: train, import or fine-tune the run again") \
            from e
    if weights == "best":
        best = os.path.join(run_dir, BEST_WEIGHTS)
        if not os.path.isfile(best):
            raise RunDirError(f"{run_dir} has no {BEST_WEIGHTS}")
        try:
            model.load_weights(best)
        except Exception as e:
            raise RunDirError(f"{best} cannot be read ({_first_line(e)}); the file is "
                              "damaged or incomplete: use --weights final") from e
    model.tokenizer = load_tokenizer(run_dir, config.get("tokenizer", TOKENIZER))
    if max_len is not None and max_len != getattr(getattr(model, "backbone", None), "max_len",
                                                  max_len):
        if not hasattr(model, "with_max_len"):
            raise RunDirError(f"--max-len applies to causal LM runs; {run_dir} is not one")
        model = model.with_max_len(max_len)
    return model


def _load_adapted(run_dir, config, max_len, adapter):
    from tfllm.models import lora
    from tfllm.tokenizers import load_tokenizer

    path = os.path.join(run_dir, ADAPTER)
    base = (config.get("base") or {}).get("run")
    if not os.path.isfile(path):
        raise RunDirError(f"{run_dir} is a LoRA run without its adapter ({ADAPTER}); is "
                          "fine-tuning finished?")
    if not base or not is_run_dir(base):
        raise RunDirError(f"{run_dir} adapts the base run {base}, which is not there; put "
                          "it back, or set \"base\": {\"run\": PATH} in its config.json")
    if adapter not in ("merge", "keep"):
        raise RunDirError(f"adapter must be 'merge' or 'keep', got {adapter!r}")
    model = load(base)  # at its own context: the adapter checks the base's exact weights
    (lora.apply_adapter if adapter == "merge" else lora.load_adapter)(model, path, base)
    model.tokenizer = load_tokenizer(run_dir, config.get("tokenizer", TOKENIZER))
    if max_len is not None and max_len != model.backbone.max_len:
        if adapter == "keep":
            raise RunDirError("--max-len cannot change a model whose adapter is kept apart")
        model = model.with_max_len(max_len)
    return model


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
