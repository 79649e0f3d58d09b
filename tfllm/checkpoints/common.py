"""What every checkpoint importer shares: reading `config.json` and safetensors, reporting
every mismatch at once, and writing the run directory in one step."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping

import numpy as np

from tfllm import runs
from tfllm.errors import TfllmError
from tfllm.untrusted import Fields, read_json_object


class CheckpointError(TfllmError):
    """The checkpoint is missing, incomplete or does not fit its config."""


# A config.json is a few kB; one far larger is not a checkpoint's.
MAX_CONFIG_BYTES = 1 << 20


def read_hf_config(checkpoint: str) -> tuple[str, dict]:
    """`(path, parsed config.json)` of a Hugging Face checkpoint directory."""
    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint directory {checkpoint} does not exist")
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint} has no config.json (is it a Hugging Face "
                              "checkpoint?)")
    return path, read_json_object(path, CheckpointError, MAX_CONFIG_BYTES)


def config_fields(checkpoint: str) -> Fields:
    """Typed access to a checkpoint's config.json (`tfllm.untrusted.Fields`)."""
    return Fields(*read_hf_config(checkpoint), CheckpointError)


def read_optional_json(checkpoint: str, name: str) -> dict:
    """A JSON object file beside config.json (tokenizer_config.json,
    generation_config.json), {} when absent; CheckpointError naming it when malformed."""
    path = os.path.join(checkpoint, name)
    if not os.path.isfile(path):
        return {}
    return read_json_object(path, CheckpointError, 64 << 20)


class TensorFiles(Mapping):
    """Tensors by name in safetensors files, each read from disk when it is looked up: an
    import holds one checkpoint tensor at a time, not the whole checkpoint.

    `shapes` and `dtypes` come from the file headers without reading any tensor.
    """

    def __init__(self, where: dict[str, str], shapes: dict[str, tuple], dtypes: dict[str, str]):
        self.where, self.shapes, self.dtypes = where, shapes, dtypes

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(self.where[name], framework="numpy") as f:
            return f.get_tensor(name)

    def __iter__(self):
        return iter(self.where)

    def __len__(self):
        return len(self.where)


_SAFETENSORS_FLOATS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def read_safetensors(checkpoint: str, ignore=()) -> tuple[str, TensorFiles]:
    """`(path, tensors by name)` of the checkpoint's weights, as stored (float32, float16
    or bfloat16 arrays, read when looked up): `model.safetensors`, or the shards
    `model.safetensors.index.json` lists. Pickle checkpoints (`pytorch_model.bin`) are
    refused: loading one runs code. Tensors whose names end with one of `ignore` (buffers
    such as BERT's int64 position ids) are left out."""
    from safetensors import SafetensorError, safe_open

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
    where, shapes, dtypes = {}, {}, {}
    for name in files:
        try:
            with safe_open(name, framework="numpy") as f:
                for key in f.keys():
                    if ignore and key.endswith(tuple(ignore)):
                        continue
                    info = f.get_slice(key)
                    where[key] = name
                    shapes[key] = tuple(int(d) for d in info.get_shape())
                    dtypes[key] = info.get_dtype()
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{name} cannot be read as safetensors: {e}") from e
    bad = sorted(f"{k} ({dtypes[k]})" for k in where if dtypes[k] not in _SAFETENSORS_FLOATS)
    if bad:
        raise CheckpointError(f"{path}: tensors of an unsupported dtype (float32, float16 and "
                              f"bfloat16 are): {', '.join(bad[:5])}")
    return path, TensorFiles(where, shapes, dtypes)


def check_tensors(path: str, shapes: dict[str, tuple], expected: dict[str, tuple]) -> None:
    """CheckpointError listing every missing, unexpected and mis-shaped tensor at once.

    Args:
        shapes: the checkpoint's tensor names and shapes.
        expected: the names and shapes the config implies.
    """
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(f"{k} {tuple(shapes[k])} (expected {expected[k]})"
                   for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    def listed(names, most=8):  # a message names a few, and counts the rest
        more = f" and {len(names) - most:,} more" if len(names) > most else ""
        return ", ".join(n[:120] for n in names[:most]) + more

    problems = []
    if missing:
        problems.append(f"missing tensors: {listed(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {listed(extra)}")
    if wrong:
        problems.append(f"mis-shaped tensors: {listed(wrong)}")
    if problems:
        raise CheckpointError(f"{path} does not match its config.json: " + "; ".join(problems))


def build_deferred(build):
    """`build()` with its Keras variables left unallocated (their values are written by
    `save_with_weights`, one at a time): an import never holds two copies of a weight."""
    import keras

    with keras.StatelessScope(initialize_variables=False):
        return build()


def write_imported_run(output, model, weights, run_config: dict, files: dict[str, str]) -> str:
    """Write an imported model (see `save_with_weights`), its run config and its tokenizer
    files (name -> source path) into the staging sibling of `output` (a
    `tfllm.publish.Output`), then publish it: an old run is replaced in one step."""
    with output.staging() as tmp:
        for name, source in files.items():
            shutil.copy(source, os.path.join(tmp, name))
        save_with_weights(model, weights, os.path.join(tmp, runs.MODEL))
        runs.write_run_config(tmp, run_config)
    return output.path


def save_with_weights(model, weights, path: str) -> None:
    """`model.save(path)` for a model built by `build_deferred`, each variable's value made
    by its function in `weights` (pairs of variable and a no-argument function returning a
    NumPy array) just when Keras writes it, then dropped.

    The peak of an import is then the libraries plus one tensor, not the model plus the
    checkpoint (SmolLM2-135M's GGUF import: 1.7 GB -> about 0.75 GB). Two hooks into Keras
    3.15's saving do it: its low-memory branch that streams the weights through a temporary
    file (`saving_lib.is_memory_sufficient`; otherwise the weights file is assembled in
    memory), and `backend.convert_to_numpy`, through which every variable passes on its
    way to the file. A variable Keras did not write, or a value of the wrong shape or dtype,
    is an error, so a change in Keras cannot go unnoticed.
    """
    import keras
    from keras.src import backend
    from keras.src.saving import saving_lib

    makers = {id(var): (var, make) for var, make in weights}
    unplanned = [v for v in model.variables if id(v) not in makers]
    missing = [v.path for v in unplanned if v.trainable]
    if missing:
        raise CheckpointError(f"internal: no imported value for {', '.join(missing[:5])}")
    for var in unplanned:  # dropout seed states: small, their initial values
        var._deferred_initialize()
    convert = backend.convert_to_numpy

    def value_of(x):
        if id(x) not in makers:
            return convert(x)
        var, make = makers.pop(id(x))
        value = np.asarray(make())
        if tuple(value.shape) != tuple(var.shape) or value.dtype.name != var.dtype:
            raise CheckpointError(f"internal: {var.path} is {tuple(var.shape)} {var.dtype}, "
                                  f"its imported value {value.shape} {value.dtype.name}")
        return value

    check = saving_lib.is_memory_sufficient
    saving_lib.is_memory_sufficient = lambda *args, **kwargs: False
    backend.convert_to_numpy = value_of
    try:
        model.save(path)
    finally:
        saving_lib.is_memory_sufficient = check
        backend.convert_to_numpy = convert
    if makers:
        raise CheckpointError(f"internal: keras {keras.__version__} did not save "
                              f"{', '.join(v.path for v, _ in list(makers.values())[:5])}; "
                              "tfllm's importer needs keras 3.15")
