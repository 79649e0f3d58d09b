"""Low-rank adapters (LoRA) on a `CausalLM`'s projections, with Keras' own `enable_lora`.

`enable` freezes every base weight and adds `A (in, r)` and `B (r, out)` to each target
`Dense` (Keras computes `W + alpha / r * A @ B`); `save_adapter` writes only the A/B
matrices (a safetensors file, with the rank, alpha, targets and the base's fingerprint in
its metadata); `apply_adapter` adds them into a plain model's kernels ("merging on the
fly", what inference and every exporter want).

We save the adapter ourselves because Keras' `save_weights` of a LoRA layer writes the
merged kernel and zeroes A and B on load, which would both lose the base/adapter split
and stop training after a restore (with A = B = 0 neither gets a gradient).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from tfllm.errors import TfllmError

# Target names -> the Dense sublayers they cover in each block.
TARGETS = {
    "qkv": ("attention.qkv",),
    "out": ("attention.out",),
    "ffn": ("ffn.inner", "ffn.outer", "ffn.gate", "ffn.up", "ffn.down"),
}
DEFAULT_TARGETS = ("qkv", "out", "ffn")
FORMAT = "tfllm-lora-1"


class LoraError(TfllmError, ValueError):
    """A bad LoRA setting, or an adapter that does not fit the model it is loaded on."""


def parse_targets(targets) -> tuple[str, ...]:
    """`("qkv", "out")` from "qkv,out" or a sequence; LoraError naming an unknown one."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = tuple(dict.fromkeys(targets))
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown:
        raise LoraError(f"--lora-targets {','.join(targets) or '(empty)'}: choose from "
                        f"{', '.join(TARGETS)} (comma-separated)")
    return targets


def check_rank(rank, alpha=None) -> None:
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise LoraError(f"--lora-rank must be an integer >= 1, got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise LoraError(f"--lora-alpha must be a positive number, got {alpha!r}")


def target_layers(model, targets) -> list:
    """The Dense layers `targets` name, in block order."""
    layers = []
    for block in model.backbone.blocks:
        for target in parse_targets(targets):
            for dotted in TARGETS[target]:
                owner_name, name = dotted.split(".")
                layer = getattr(getattr(block, owner_name), name, None)
                if layer is not None:
                    layers.append(layer)
    if not layers:
        raise LoraError(f"no projection of this model matches --lora-targets {targets}")
    return layers


def fingerprint(model) -> str:
    """sha256 of the model's weights (names, shapes, values): the base's identity."""
    digest = hashlib.sha256()
    for w in model.weights:
        if "lora_kernel" in w.path:
            continue
        value = np.ascontiguousarray(w.numpy())
        digest.update(f"{w.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def enable(model, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS,
           seed: int | None = None) -> list:
    """Add adapters to `model` in place and freeze everything else; returns the layers.

    Args:
        model: a built `CausalLM`.
        rank: the adapters' rank r (>= 1).
        alpha: the scale numerator (`alpha / r`); default `2 * rank`.
        targets: names from `TARGETS` ("qkv", "out", "ffn") or "qkv,out".
        seed: seed of A's initializer (B starts at zero, so the model starts unchanged).

    Example:
        >>> layers = enable(lm, rank=8, targets="qkv,out")  # doctest: +SKIP
    """
    import keras

    check_rank(rank, alpha)
    alpha = float(2 * rank if alpha is None else alpha)
    layers = target_layers(model, targets)
    for i, layer in enumerate(layers):
        init = keras.initializers.HeUniform(seed=None if seed is None else seed + i)
        layer.enable_lora(int(rank), lora_alpha=alpha, a_initializer=init)
    adapters = {id(v) for layer in layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for w in model.weights:
        if id(w) not in adapters:
            w.trainable = False
    return layers


def adapter_layers(model) -> list:
    """The model's Dense layers with LoRA enabled."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if getattr(layer, "lora_enabled", False)]


def save_adapter(model, path: str, meta: dict) -> None:
    """Write the A/B matrices of an adapted model to `path` (safetensors), atomically.

    Args:
        model: a model adapted by `enable`.
        path: the file to write.
        meta: JSON-able facts kept in the file (rank, alpha, targets, base fingerprint).
    """
    import os

    from safetensors.numpy import save_file

    tensors = {}
    for layer in adapter_layers(model):
        tensors[f"{layer.path}/lora_kernel_a"] = np.asarray(layer.lora_kernel_a.numpy())
        tensors[f"{layer.path}/lora_kernel_b"] = np.asarray(layer.lora_kernel_b.numpy())
    if not tensors:
        raise LoraError("the model has no LoRA adapter to save")
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"format": FORMAT, "tfllm": json.dumps(meta)})
    os.replace(tmp, path)


def read_adapter(path: str) -> tuple[dict, dict]:
    """`(tensors, meta)` of an adapter file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for damaged files
        raise LoraError(f"{path} is not a readable LoRA adapter ({e})") from e
    if metadata.get("format") != FORMAT:
        raise LoraError(f"{path} is not a tfllm LoRA adapter (format "
                        f"{metadata.get('format')!r})")
    return tensors, json.loads(metadata["tfllm"])


def check_base(model, meta: dict, path: str, base_name: str = "the base model") -> None:
    """LoraError unless `model` is the base the adapter at `path` was trained on."""
    expected = meta.get("base_fingerprint")
    found = fingerprint(model)
    if expected != found:
        raise LoraError(f"the adapter {path} was trained on another base model than "
                        f"{base_name} (weights fingerprint {found[:12]}, adapter expects "
                        f"{str(expected)[:12]}); load it on the run it was fine-tuned from")


def _pairs(tensors, path):
    out = {}
    for key, value in tensors.items():
        layer_path, _, kind = key.rpartition("/")
        out.setdefault(layer_path, {})[kind] = value
    for layer_path, pair in out.items():
        if set(pair) != {"lora_kernel_a", "lora_kernel_b"}:
            raise LoraError(f"{path}: layer {layer_path} lacks one of its A/B matrices")
    return out


def load_adapter(model, path: str, base_name: str = "the base model") -> dict:
    """Enable the adapter of `path` on a plain `model` (trainable again) and load its
    A/B values; the base is checked first. Returns the adapter's metadata."""
    tensors, meta = read_adapter(path)
    check_base(model, meta, path, base_name)
    enable(model, meta["rank"], meta["alpha"], meta["targets"])
    by_path = {layer.path: layer for layer in adapter_layers(model)}
    pairs = _pairs(tensors, path)
    if set(pairs) != set(by_path):
        raise LoraError(f"{path} adapts layers {sorted(set(pairs) ^ set(by_path))[:3]} "
                        "that this model does not match")
    for layer_path, pair in pairs.items():
        by_path[layer_path].lora_kernel_a.assign(pair["lora_kernel_a"])
        by_path[layer_path].lora_kernel_b.assign(pair["lora_kernel_b"])
    return meta


def apply_adapter(model, path: str, base_name: str = "the base model") -> dict:
    """Add the adapter of `path` into a plain `model`'s kernels in place
    (`W += alpha / r * A @ B`): the merged model, with no LoRA machinery left.
    Returns the adapter's metadata."""
    tensors, meta = read_adapter(path)
    check_base(model, meta, path, base_name)
    dense = {layer.path: layer for layer in target_layers(model, meta["targets"])}
    pairs = _pairs(tensors, path)
    if set(pairs) != set(dense):
        raise LoraError(f"{path} adapts layers that this model does not match")
    scale = float(meta["alpha"]) / int(meta["rank"])
    for layer_path, pair in pairs.items():
        kernel = dense[layer_path].kernel
        delta = scale * (pair["lora_kernel_a"].astype(np.float32) @
                         pair["lora_kernel_b"].astype(np.float32))
        kernel.assign((kernel.numpy().astype(np.float32) + delta).astype(kernel.dtype))
    return meta
