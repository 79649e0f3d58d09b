"""How an exporter changes the way tfllm's layers trace: one context manager, read at trace
time, never part of a layer's config and never an attribute set on a layer.

    with export_hooks.tracing(cache_write="one_hot"):
        concrete = tf.function(step).get_concrete_function(...)

Settings (each defaults to what training and Python generation use):
    cache_write   "slice" (dynamic-update-slice; XLA, TFLite) or "one_hot": the new rows
                  spread by a one-hot contraction and blended in, exact, for tf2onnx,
                  which cannot convert dynamic-update-slice.
    mask_fill     "constant" (-1e9) or "bounded" (the row's smallest score - 30): a -1e9
                  fill stretches full-integer quantization's one int8 range of the scores.
    decode_read   "before_write" (attend to the cache plus the new token, then write: XLA
                  updates in place) or "after_write" (write, then attend: faster in
                  TFLite). Same results.
    token_lookup  "take" (GATHER) or "embedding_lookup" (TFLite's EMBEDDING_LOOKUP, which
                  weight quantizers reach; one table shared with a tied output projection).

Per-layer hooks:
    replace       {layer: {step: fn}}: `fn(default, *args, **kwargs)` is traced instead of
                  the layer's step, `default` being the layer's own (`"call"` of a Dense
                  inside attention or a feed-forward, or of the token embedding;
                  `"logits"` of the token embedding; `"gate_up"` of a gated feed-forward:
                  its gate and up projections, which read the same input).
    norm_scale    {RMSNorm layer: "per_token"}: multiply by the per-token product
                  `inv_rms * scale` instead of by a constant scale that a converter folds
                  into the next matmul's weights (wrong where those weights are shared or
                  must stay on an int4 grid).
    observe       `fn(layer, step, x)` sees each hookable step's input (calibration).

Layers ask `setting(name)`, `norm_scale(layer)` and `through(layer, step, default, ...)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

SETTINGS = {"cache_write": ("slice", "one_hot"), "mask_fill": ("constant", "bounded"),
            "decode_read": ("before_write", "after_write"),
            "token_lookup": ("take", "embedding_lookup")}


@dataclasses.dataclass
class _Hooks:
    settings: dict
    replace: dict  # id(layer) -> {step: fn}
    norm_scale: dict  # id(layer) -> "per_token"
    observe: object
    layers: list  # keeps the layers of the ids alive for the trace


class _Local(threading.local):
    def __init__(self):
        self.stack: list[_Hooks] = []


# Per thread: a trace runs in the thread that asked for it, and a server thread tracing a
# generation while another thread exports must trace with the defaults.
_local = _Local()


def _current():
    return _local.stack[-1] if _local.stack else None


@contextlib.contextmanager
def tracing(replace=None, norm_scale=None, observe=None, **settings):
    """Trace the layers with `settings` and per-layer hooks inside this block (see the
    module docstring); blocks nest, the inner one's settings and hooks adding to the
    outer's.

    Example:
        >>> with tracing(cache_write="one_hot", mask_fill="bounded"):  # doctest: +SKIP
        ...     archive.add_endpoint("classify", fn, input_signature=spec)
    """
    for name, value in settings.items():
        if name not in SETTINGS:
            raise ValueError(f"unknown trace setting {name!r}; known: {sorted(SETTINGS)}")
        if value not in SETTINGS[name]:
            raise ValueError(f"{name} must be one of {SETTINGS[name]}, got {value!r}")
    outer = _current() or _Hooks({}, {}, {}, None, [])
    hooks = _Hooks({**outer.settings, **settings}, dict(outer.replace),
                   dict(outer.norm_scale), observe or outer.observe, list(outer.layers))
    for layer, steps in (replace or {}).items():
        hooks.replace[id(layer)] = {**hooks.replace.get(id(layer), {}), **steps}
        hooks.layers.append(layer)
    for layer, mode in (norm_scale or {}).items():
        if mode != "per_token":
            raise ValueError(f"norm_scale must be 'per_token', got {mode!r}")
        hooks.norm_scale[id(layer)] = mode
        hooks.layers.append(layer)
    _local.stack.append(hooks)
    try:
        yield hooks
    finally:
        _local.stack.pop()


def setting(name: str) -> str:
    """The value of a trace setting now (its default outside `tracing`)."""
    hooks = _current()
    if hooks is not None and name in hooks.settings:
        return hooks.settings[name]
    return SETTINGS[name][0]


def norm_scale(layer) -> str:
    """"per_token" where `tracing` asks it of this norm, else "folded"."""
    hooks = _current()
    return "folded" if hooks is None else hooks.norm_scale.get(id(layer), "folded")


def through(layer, step: str, default, *args, **kwargs):
    """`default(*args, **kwargs)`, `layer`'s own `step`, or the function `tracing` put in
    its place; an observer sees the step's first input either way."""
    hooks = _current()
    if hooks is None:
        return default(*args, **kwargs)
    if hooks.observe is not None:
        hooks.observe(layer, step, args[0])
    fn = hooks.replace.get(id(layer), {}).get(step)
    return default(*args, **kwargs) if fn is None else fn(default, *args, **kwargs)
