"""What every checkpoint importer shares: reading `config.json` and safetensors, reporting
every mismatch at once, and writing the run directory in one step."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from tfllm import atomic, runs
from tfllm.errors import TfllmError


class CheckpointError(TfllmError):
    """The checkpoint is missing, incomplete or does not fit its config."""


def read_hf_config(checkpoint: str) -> tuple[str, dict]:
    """`(path, parsed config.json)` of a Hugging Face checkpoint directory."""
    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint} has no config.json (is it a Hugging Face "
                              "checkpoint?)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return path, cfg


def require_fields(path: str, cfg: dict, fields, family: str) -> None:
    """CheckpointError naming every missing field, and every one that is not a positive
    integer."""
    missing = [k for k in fields if k not in cfg]
    if missing:
        raise CheckpointError(f"{path} lacks the field(s) {', '.join(missing)} that a "
                              f"{family} config.json has; is it a complete Hugging Face "
                              "checkpoint?")
    bad = [k for k in fields if not isinstance(cfg[k], int) or isinstance(cfg[k], bool)
           or cfg[k] <= 0]
    if bad:
        raise CheckpointError(f"{path}: {', '.join(f'{k}={cfg[k]!r}' for k in bad)} must be "
                              "positive integers")


def read_safetensors(checkpoint: str) -> tuple[str, dict[str, np.ndarray]]:
    """`(path, tensors by name)` of the checkpoint's `model.safetensors`."""
    from safetensors.numpy import load_file

    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint} has no model.safetensors")
    return path, load_file(path)


def check_tensors(path: str, tensors: dict, expected: dict[str, tuple]) -> None:
    """CheckpointError listing every missing, unexpected and mis-shaped tensor at once."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k} {tuple(tensors[k].shape)} (expected {expected[k]})"
                   for k in set(expected) & set(tensors)
                   if tuple(tensors[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra)}")
    if wrong:
        problems.append(f"mis-shaped tensors: {', '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{path} does not match its config.json: " + "; ".join(problems))


def write_imported_run(out: str, overwrite: bool, model, run_config: dict,
                       files: dict[str, str]) -> str:
    """Write an imported model, its run config and its tokenizer files (name -> source
    path) beside `out`, then swap them in: an old run is replaced in one step."""
    with atomic.staging_dir(out) as tmp:
        for name, source in files.items():
            shutil.copy(source, os.path.join(tmp, name))
        model.save(os.path.join(tmp, runs.MODEL))
        runs.write_run_config(tmp, run_config)
        runs.check_new_run_dir(out, overwrite)  # still a run (or nothing) to replace
    return out
