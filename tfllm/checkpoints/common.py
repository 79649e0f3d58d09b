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
    """`(path, tensors by name)` of the checkpoint's weights, as stored (float32, float16
    or bfloat16 arrays): `model.safetensors`, or the shards `model.safetensors.index.json`
    lists. Pickle checkpoints (`pytorch_model.bin`) are refused: loading one runs code."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    single = os.path.join(checkpoint, "model.safetensors")
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(single):
        files, path = [single], single
    elif os.path.isfile(index):
        path = index
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = [os.path.join(checkpoint, name) for name in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (a JSON object with a "
                                  f"weight_map): {e}") from e
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that are not there: "
                                  f"{', '.join(os.path.basename(m) for m in missing)}")
    else:
        pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                   if os.path.isfile(os.path.join(checkpoint, n))]
        if pickles:
            raise CheckpointError(
                f"{checkpoint} holds {pickles[0]}, a pickle checkpoint, which tfllm does not "
                "load (unpickling runs arbitrary code); convert it to safetensors first, e.g. "
                "with transformers: AutoModelForCausalLM.from_pretrained(DIR)"
                ".save_pretrained(OUT, safe_serialization=True)")
        raise CheckpointError(f"{checkpoint} has no model.safetensors or "
                              "model.safetensors.index.json")
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(name))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{name} cannot be read as safetensors: {e}") from e
    bad = sorted(f"{k} ({v.dtype})" for k, v in tensors.items()
                 if v.dtype.name not in ("float32", "float16", "bfloat16"))
    if bad:
        raise CheckpointError(f"{path}: tensors of an unsupported dtype (float32, float16 and "
                              f"bfloat16 are): {', '.join(bad[:5])}")
    return path, tensors


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
        save_through_disk(model, os.path.join(tmp, runs.MODEL))
        runs.write_run_config(tmp, run_config)
        runs.check_new_run_dir(out, overwrite)  # still a run (or nothing) to replace
    return out


def save_through_disk(model, path: str) -> None:
    """`model.save(path)`, with the weights written to a temporary file beside `path`.

    Keras 3.15 assembles the weights file in memory whenever RAM looks sufficient
    (`saving_lib.is_memory_sufficient`), a second copy of every weight at the peak of an
    import (+560 MB for SmolLM2-135M). Its own low-memory branch streams through a
    temporary file; it is chosen here. Without that private hook, a plain save.
    """
    try:
        from keras.src.saving import saving_lib
        check = saving_lib.is_memory_sufficient
    except (ImportError, AttributeError):
        model.save(path)
        return
    saving_lib.is_memory_sufficient = lambda *args, **kwargs: False
    try:
        model.save(path)
    finally:
        saving_lib.is_memory_sufficient = check
