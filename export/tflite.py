"""Export a causal LM run to TFLite with an explicit KV cache, and run it like an app does.

    python -m export.tflite --run runs/NAME --out FILE.tflite [--prefill-lengths 32 128]

The model has the signatures the LiteRT-LM runtime expects (docs/on-device.md):
`decode` and `prefill_<N>`, int32 inputs `tokens` [1, T] and `input_pos` [T] (absolute
positions), and per layer `kv_cache_k_<i>` / `kv_cache_v_<i>`
[1, kv_heads, max_len, head_dim]
passed in and out under the same names; `decode` also returns `logits` [1, 1, vocab].
Builtin ops only. It is converted from a SavedModel written by Keras' ExportArchive (a plain
tf.Module wrapper leaves uninitialized variables and NaN outputs), then run with
ai-edge-litert and compared with the Keras model before success is reported.

`--quantize float16|dynamic-int8` store weights in 16/8 bits (the converter's options);
`int8-weight` (int8 weights, float matmuls), `int4-block32` and `int4-block128` (4-bit
weights in blocks of 32/128 with one scale each, activations quantized per token at run
time) and `int4-asym-block32` / `int4-asym-block128` (the same int4 kernels plus one float
offset per block, as GGUF's Q4_1: export/block_offsets.py) and `int4-mixed-block32`
(int4-asym for the weights already on a 4-bit grid, a GGUF's Q4_K and Q4_1 tensors; dynamic
int8 in chunks of 128 input values for the rest and the token table: a GGUF held at its own
precision) are done by ai-edge-quantizer,
with per-part modes (`--quantize-embedding`,
`--quantize-attention`, `--quantize-ffn`). Every mode must pass an accuracy gate before a
file is written: next-token top-1 agreement with the float model and held-out loss, on
the run's validation text or `--data` (thresholds per mode, printed):

    mode            agreement   loss increase
    float16         >= 95%      <= 2%
    dynamic-int8    >= 80%      <= 2%
    int8-weight     >= 85%      <= 2%
    int4-block32    >= 80%      <= 5%
    int4-block128   >= 75%      <= 8%
    int4-asym-block32   >= 80%  <= 5%
    int4-asym-block128  >= 75%  <= 8%
    int4-mixed-block32  >= 80%  <= 5%

`--min-agreement` / `--max-loss-increase` set another gate (the figures are printed
either way).

A translation run (`tfllm train --objective seq2seq`) gets `encode` and `decode` signatures
instead (export/tflite_seq2seq.py).

A classifier run (`tfllm finetune --task classify`) becomes its forward pass instead: one
signature `classify`, input `token_ids` int32 [1, seq_len] (BOS first for encoders, padded
with the pad id 0), output `probabilities` float32 [1, classes]. BERT-style classifiers of
sentence pairs (and imported ones, which may be either) also take `token_type_ids` int32
[1, seq_len] (0 for `[CLS] text [SEP]`, 1 for `pair [SEP]`, 0 for padding). Every quantization mode is
available, including full-integer `int8` (calibrated on the run's training texts), and each
is checked against the Keras classifier's labels on held-out rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

from .archive import write_archive
from .block_offsets import mixed_parts, part_blocks
from .options import (ACCURACY_GATES, DEFAULT_PREFILL, QUANTIZE_MODES, QUANTIZER_MODES,
                      add_gate_options, add_max_len, add_overwrite, add_part_options,
                      error_prog, prog)
from .tflite_converter import convert_or_raise, tflite_converter


def build_parser():
    parser = argparse.ArgumentParser(prog=prog("tflite"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--run", required=True, help="run directory")
    add_max_len(parser)
    parser.add_argument("--out", required=True, help="output .tflite file")
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=list(DEFAULT_PREFILL),
                        help="prefill signature lengths (default 32 128; capped at the context)")
    parser.add_argument("--quantize", default="float32", choices=QUANTIZE_MODES,
                        help="float32 (default), float16 or dynamic-int8 weights; int8-weight, "
                             "int4-block32, int4-block128, int4-asym-block32, "
                             "int4-asym-block128, int4-mixed-block32 (causal LMs); int8 "
                             "(full integer: "
                             "classifiers only; refused for causal LMs)")
    add_part_options(parser)
    add_gate_options(parser)
    parser.add_argument("--data", help="text to check a quantized causal LM's accuracy on "
                        "(default: the run's own validation text, which imported runs lack; "
                        "int4-asym/mixed modes calibrate on its training part), "
                        "or a classifier's texts to calibrate int8 on and check with: a data "
                        "spec such as tsv:PATH or text:PATH")
    parser.add_argument("--text-column", help="with --data: the text field")
    parser.add_argument("--pair-column", help="with --data: the second text's field, for "
                        "sentence-pair classifiers (default: the run's own)")
    parser.add_argument("--seq-len", type=int, help="classifiers: the fixed input length "
                        "(default: the run's; at most its context)")
    parser.add_argument("--keep-tensor-names", action="store_true",
                        help="keep internal tensor names (for debugging with a model viewer; "
                             "signature and input/output names are always kept)")
    add_overwrite(parser)
    return parser


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfllm import runs, tasks  # noqa: E402
from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.models.generation import new_token_room  # noqa: E402
from tfllm.tasks.classify.predict import encode_rows, uses_token_types  # noqa: E402

class TFLiteExportError(TfllmError):
    """The TFLite export failed or disagrees with the Keras model."""


# Windows of training text (this many, of up to CALIBRATION_LENGTH tokens) that pick
# int4-asym's outlier blocks and weigh GPTQ's rounding (export/gptq.py). GPTQ on Gemma 3
# 270M, next-token agreement in Keras: 64 and 128 windows of 128 tokens both 80.8% (loss
# 4.46 and 4.36); its 2,048-wide down projections need more tokens than the 1,024 of the
# 16 x 64 that picked outliers alone.
CALIBRATION_WINDOWS = 64
CALIBRATION_LENGTH = 128


def _cache_names(num_layers):
    return [n for i in range(num_layers) for n in (f"kv_cache_k_{i}", f"kv_cache_v_{i}")]


def _step_fn(model, with_logits):
    num_layers = model.backbone.num_layers
    names = _cache_names(num_layers)

    def fn(inputs):
        tokens, input_pos = inputs["tokens"], inputs["input_pos"]
        caches = [(inputs[f"kv_cache_k_{i}"], inputs[f"kv_cache_v_{i}"])
                  for i in range(num_layers)]
        # Writes start at input_pos[0]; each token's position is its own input_pos.
        logits, caches = model.call_with_cache(tokens, caches, input_pos[0],
                                               positions=input_pos[None, :])
        out = dict(zip(names, [t for pair in caches for t in pair]))
        if with_logits:
            out["logits"] = logits[:, -1:, :]  # (1, 1, vocab)
        return out
    return fn


def _signature(model, length):
    bb = model.backbone
    spec = {"tokens": tf.TensorSpec([1, length], tf.int32, name="tokens"),
            "input_pos": tf.TensorSpec([length], tf.int32, name="input_pos")}
    lengths = [n for n in bb.cache_lengths() for _ in "kv"]
    for name, n in zip(_cache_names(bb.num_layers), lengths):
        spec[name] = tf.TensorSpec([1, bb.kv_heads, n, bb.head_dim], tf.float32, name=name)
    if min(lengths) < bb.max_len:
        # Sliding-window layers keep window-long rings (Gemma 3 270M at 2,048: 15 of 18
        # layers hold 512 slots). The LiteRT-LM runtime takes a bundle's context from a
        # `mask` input's last dimension where a signature has one, otherwise from a cache
        # input's length, which a ring cuts to the window (it refused longer prompts). The
        # runtime fills the mask; the graph ignores it and masks by `input_pos` itself.
        spec["mask"] = tf.TensorSpec([1, 1, length, bb.max_len], tf.float32, name="mask")
    return [spec]




def compact_tflite(data, strip_names=True):
    """Rewrite TFLite bytes smaller without changing what any runtime computes.

    Two things make a small model's file much larger than its weights (the demo model's
    figures: benchmarks/README.md, "On-device quantization"): every signature is its own
    subgraph holding its own copy of each int8 weight's per-channel quantization table (a
    float scale and an int64 zero point per output channel), and every internal tensor
    carries a long debugging name. Identical
    quantization tables are written once and shared (flatbuffers allow several tables to
    point at one object); with `strip_names`, names of internal tensors are dropped, while
    signature definitions and every subgraph's input and output names (`tokens`,
    `kv_cache_k_0`, `logits`, ...) are kept, since runtimes look tensors up by them.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from .weight_quantization import buffers_as_arrays

    model = flatbuffer_utils.read_model_from_bytearray(data)
    packed = {}  # id(shared table) -> its offset in the one builder Pack() runs with

    class SharedQuantization(schema.QuantizationParametersT):
        def Pack(self, builder):
            if id(self) not in packed:
                packed[id(self)] = super().Pack(builder)
            return packed[id(self)]

    buffers_as_arrays(model)
    canonical = {}
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for i, tensor in enumerate(subgraph.tensors):
            if strip_names and i not in keep:
                tensor.name = None
            q = tensor.quantization
            if q is None or q.details is not None:
                continue
            key = tuple(None if v is None else np.asarray(v).tobytes()
                        for v in (q.min, q.max, q.scale, q.zeroPoint)) + (q.quantizedDimension,)
            if key not in canonical:
                shared = SharedQuantization()
                vars(shared).update(vars(q))  # the same fields, packed once
                canonical[key] = shared
            tensor.quantization = canonical[key]
    return flatbuffer_utils.convert_object_to_bytearray(model)


def check_parts(quantize, parts):
    """The per-part modes `parts` ({"embedding"|"attention"|"ffn": mode or None}) without
    the unset ones; an error unless `quantize` is one of the quantizer's modes."""
    parts = {k: v for k, v in (parts or {}).items() if v is not None}
    if parts and quantize not in QUANTIZER_MODES:
        flags = " ".join(f"--quantize-{k}" for k in parts)
        raise TFLiteExportError(f"{flags} take effect with --quantize "
                                f"{'|'.join(QUANTIZER_MODES)}, not {quantize}")
    return parts


def convert(run_dir, prefill_lengths=DEFAULT_PREFILL, quantize="float32", strip_names=True,
            max_len=None, parts=None, data=None, text_column=None):
    """Convert a run's CausalLM to TFLite bytes with prefill/decode signatures.

    Args:
        quantize: "float32"; "float16" (weights stored in float16); "dynamic-int8" (int8
            weights, float activations); "int8-weight", "int4-block32", "int4-block128",
            "int4-asym-block32", "int4-asym-block128", "int4-mixed-block32"
            (export/weight_quantization.py).
            Full-integer "int8" is refused for causal LMs: the KV cache passes through the
            signatures as float tensors.
        strip_names: drop internal tensor names (see `compact_tflite`).
        max_len: the KV cache length; default the run's.
        parts: per-part modes, {"embedding" | "attention" | "ffn": mode}.
        data, text_column: the text whose training split calibrates int4-asym modes
            (`block_offsets`'s outlier blocks); default the run's own data.
    """
    if quantize not in QUANTIZE_MODES:
        raise TFLiteExportError(f"unknown --quantize {quantize!r}; choose one of "
                                f"{', '.join(QUANTIZE_MODES)}")
    parts = check_parts(quantize, parts)
    if quantize == "int8":
        raise TFLiteExportError(
            "full-integer int8 is not available for causal LMs: the LiteRT-LM contract passes "
            "the KV cache in and out as float tensors; use --quantize dynamic-int8 (int8 "
            "weights), which gives most of the size reduction")
    config = runs.read_run_config(run_dir)
    task = tasks.of_config(config)
    if not task.causal:
        raise TFLiteExportError(f"{task.name} runs have no TFLite decode export (classifier "
                                "runs: export_classifier_tflite; translation runs: "
                                "export_seq2seq_tflite)")
    model = runs.load(run_dir, max_len=max_len)
    calibration = None
    if quantize in QUANTIZER_MODES and part_blocks(quantize, parts):
        calibration = heldout_windows(run_dir, model.tokenizer,
                                      min(model.backbone.max_len, CALIBRATION_LENGTH),
                                      CALIBRATION_WINDOWS, data, text_column, split="train")
    tflite, lengths = convert_model(model, prefill_lengths, quantize, strip_names, parts,
                                    calibration)
    return tflite, model, lengths


def convert_model(model, prefill_lengths=DEFAULT_PREFILL, quantize="float32", strip_names=True,
                  parts=None, calibration=None):
    """Convert a CausalLM object (see `convert`; `calibration`: token id windows for the
    int4-asym modes' outlier blocks, None for none); returns (tflite bytes, prefill
    lengths)."""
    from .block_offsets import block_offsets
    from .weight_quantization import WeightQuantizationError, quantize_weights

    import keras

    from tfllm.layers import RMSNorm, export_hooks

    max_len = model.backbone.max_len
    lengths = sorted({n for n in prefill_lengths if 1 < n <= max_len})
    if not lengths:
        raise TFLiteExportError(f"no usable --prefill-lengths {list(prefill_lengths)} for a "
                                f"context of {max_len}")
    archive = keras.export.ExportArchive()
    archive.track(model)
    tmp = tempfile.mkdtemp(prefix="tfllm-tflite-")
    try:
        # TFLite runs the write-then-attend decode step faster than XLA's in-place form;
        # EMBEDDING_LOOKUP (not GATHER) lets the weight quantizer reach the token table.
        # int4-asym modes trace the weights as int4 grids plus per-block offsets (int4-mixed
        # those on a grid; the rest as int8 chunks).
        offsets = part_blocks(quantize, parts) if quantize in QUANTIZER_MODES else {}
        # A tied output projection keeps the token table's weights (one copy, not a second
        # with the final norm's scale folded in).
        bb = model.backbone
        tied_norm = {bb.norm: "per_token"} if bb.embedding.tie_embeddings and \
            bb.norm_first and isinstance(getattr(bb, "norm", None), RMSNorm) else {}
        if quantize == "int8-weight" and not parts:
            # Weight-only: every norm's scale is applied per token, so the converter folds
            # none into the next matmul. Gemma's scales span -0.1 to 741 across channels;
            # folded, each output channel's one int8 scale flattened the small ones (Gemma
            # 3 270M: 45% top-1 agreement). Activations stay float, so nothing is lost.
            tied_norm = {layer: "per_token" for layer in model._flatten_layers()
                         if isinstance(layer, RMSNorm)}
        with export_hooks.tracing(decode_read="after_write", token_lookup="embedding_lookup",
                                  norm_scale=tied_norm), \
                block_offsets(model, offsets, calibration,
                              head_split_block(quantize, parts, offsets),
                              mixed_parts(quantize, parts)) as (lookup_scopes, holders):
            archive.track(holders)
            endpoints = {"decode": (_step_fn(model, True), _signature(model, 1))}
            for n in lengths:
                endpoints[f"prefill_{n}"] = (_step_fn(model, False), _signature(model, n))
            write_archive(archive, endpoints, tmp)
        by_quantizer = quantize in QUANTIZER_MODES
        converter = tflite_converter(tmp, ["decode"] + [f"prefill_{n}" for n in lengths],
                                     "float32" if by_quantizer else quantize)
        data = convert_or_raise(converter, TFLiteExportError)
        if by_quantizer:  # on the float model, whose tensor names the quantizer needs
            try:
                data = quantize_weights(data, quantize, lookup_scopes=lookup_scopes,
                                        **(parts or {}))
            except WeightQuantizationError as e:
                raise TFLiteExportError(str(e)) from e
        return compact_tflite(data, strip_names), lengths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def head_split_block(quantize, parts, offsets):
    """The block the output projection's outlier columns are cut in under int4-asym modes
    (`block_offsets`): the table's int4 block, 32 for dynamic-int8; None where the table is
    int4-asym itself or its matmul takes float activations."""
    if not offsets or "embedding" in offsets:
        return None
    mode = (parts or {}).get("embedding") or quantize
    if mode == "dynamic-int8":
        return 32
    if mode.startswith("int4-block"):
        return int(mode.rsplit("block", 1)[1])
    return None


class TFLiteRunner:
    """Drive a tfllm TFLite model's prefill/decode signatures with ai-edge-litert.

    Does what an app's runtime does: the prompt (all but its last token) goes through the
    smallest prefill that holds it, padded with token 0 / position 0; the last prompt token
    is fed to `decode`, whose logits choose the next token, and so on.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads.

    Example:
        >>> TFLiteRunner("demo.tflite").generate([5, 6, 7], max_new_tokens=20)  # doctest: +SKIP
    """

    def __init__(self, path, num_threads=2):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        sigs = self.interpreter.get_signature_list()
        self.prefill_lengths = sorted(int(k.split("_")[1]) for k in sigs if k.startswith("prefill_"))
        self.decode = self.interpreter.get_signature_runner("decode")
        self.prefills = {n: self.interpreter.get_signature_runner(f"prefill_{n}")
                         for n in self.prefill_lengths}
        details = self.decode.get_input_details()
        self.cache_names = sorted((k for k in details if k.startswith("kv_cache_")),
                                  key=lambda k: (int(k.rsplit("_", 1)[1]), k))
        # A sliding-window layer's cache is a ring of window slots: shapes differ, and a
        # `mask` input then carries the context length (as the LiteRT-LM runtime reads it).
        self.cache_shapes = {k: tuple(details[k]["shape"]) for k in self.cache_names}
        self.has_mask = "mask" in details
        self.max_len = int(details["mask"]["shape"][3]) if self.has_mask else \
            max(shape[2] for shape in self.cache_shapes.values())

    def empty_cache(self):
        return {k: np.zeros(shape, np.float32) for k, shape in self.cache_shapes.items()}

    def prefill(self, ids, cache):
        """Write `ids` (positions 0..len-1) into the cache; returns the new cache."""
        pos = 0
        while pos < len(ids):
            chunk = ids[pos:pos + self.prefill_lengths[-1]]
            n = next(n for n in self.prefill_lengths if n >= len(chunk))
            tokens = np.zeros((1, n), np.int32)
            positions = np.zeros((n,), np.int32)
            tokens[0, :len(chunk)] = chunk
            positions[:len(chunk)] = np.arange(pos, pos + len(chunk))
            out = self.prefills[n](tokens=tokens, input_pos=positions,
                                   **self._mask(pos, len(chunk), n), **cache)
            cache = {k: out[k] for k in self.cache_names}
            pos += len(chunk)
        return cache

    def step(self, token, position, cache):
        out = self.decode(tokens=np.array([[token]], np.int32),
                          input_pos=np.array([position], np.int32),
                          **self._mask(position, 1, 1), **cache)
        return out["logits"][0, -1], {k: out[k] for k in self.cache_names}

    def _mask(self, start, steps, length):
        """{"mask": ...} as the LiteRT-LM runtime fills it (0 where a query row sees a
        position, a large negative value elsewhere; padded rows see nothing), or {}."""
        if not self.has_mask:
            return {}
        mask = np.full((1, 1, length, self.max_len), np.finfo(np.float32).min, np.float32)
        for i in range(steps):
            mask[0, 0, i, :start + i + 1] = 0.0
        return {"mask": mask}

    def generate(self, prompt_ids, max_new_tokens, end_token_id=None, temperature=0.0,
                 top_k=None, top_p=None, seed=None):
        """Continue `prompt_ids`; returns the new token ids (without the prompt).

        Greedy by default. With `temperature` > 0 each token is drawn by tfllm's own sampler
        (`tfllm.models.generation.sample_next`: temperature, then top-k, then top-p), so a seeded
        run draws the tokens `CausalLM.generate(..., seed=seed)` draws from the same logits.

        Args:
            prompt_ids: the prompt's token ids (at least one; start from BOS for none).
            max_new_tokens: how many tokens to generate at most.
            end_token_id: stop (without returning it) when this token is chosen.
            temperature, top_k, top_p, seed: as in `CausalLM.generate`.
        """
        from tfllm.models.generation import (GenerationError, GenerationParams, check_fits,
                                             row_sampler)

        if not prompt_ids:
            raise TFLiteExportError("empty prompt: start from BOS")
        try:
            check_fits(len(prompt_ids), max_new_tokens, self.max_len)
            params = GenerationParams(max_new_tokens, temperature, top_k, top_p, seed)
        except GenerationError as e:
            raise TFLiteExportError(str(e)) from e
        sample = row_sampler(params)
        cache = self.prefill(list(prompt_ids[:-1]), self.empty_cache())
        token, pos, out = prompt_ids[-1], len(prompt_ids) - 1, []
        for step in range(max_new_tokens):
            logits, cache = self.step(token, pos, cache)
            token = sample(logits, step)
            pos += 1
            if token == end_token_id:
                break
            out.append(token)
        return out


def heldout_windows(run_dir, tokenizer, length, count, data=None, text_column=None,
                    split="val"):
    """Up to `count` windows of `length` tokens from the run's validation text, or that of
    the data spec `data` (its `text_column`); None when there is none. `split="train"`
    reads the training text instead (calibration, kept apart from the gate's windows).
    Each window starts with the model's BOS where its tokenizer adds one."""
    from tfllm.data import Corpus, lm_windows
    from tfllm.data.windows import bos_start

    if data is not None:
        corpus = Corpus(data, text_column)
        texts = corpus.train_texts() if split == "train" else corpus.val_texts()
    else:
        config = runs.read_run_config(run_dir)
        stored = config.get("data")
        if not stored:
            return None
        # A task whose data is not a corpus (chat: conversations) says what text it is.
        texts = tasks.of_config(config).heldout_texts(config, split)
        if texts is not None:
            texts = tf.data.Dataset.from_tensor_slices(tf.constant(texts or [""], tf.string))
        else:
            corpus = Corpus(stored["spec"], stored.get("text_feature"))
            texts = corpus.train_texts() if split == "train" else corpus.val_texts()
    ds = lm_windows(texts, tokenizer, length - 1, start_id=bos_start(tokenizer)).take(count)
    return [w.numpy().tolist() for w in ds] or None


def agreement(runner, model, windows):
    """Top-1 next-token agreement and mean cross-entropy, TFLite (decode steps) vs Keras."""
    same = total = 0
    ce_tfl = ce_keras = 0.0
    for w in windows:
        keras_logits = model(np.array([w], np.int32))[0].numpy()
        cache = runner.empty_cache()
        for t in range(len(w) - 1):
            logits, cache = runner.step(w[t], t, cache)
            same += int(np.argmax(logits) == np.argmax(keras_logits[t]))
            total += 1
            for acc_logits, name in ((logits, "tfl"), (keras_logits[t], "keras")):
                z = acc_logits - acc_logits.max()
                ce = float(np.log(np.exp(z).sum()) - z[w[t + 1]])
                if name == "tfl":
                    ce_tfl += ce
                else:
                    ce_keras += ce
    return same / total, ce_tfl / total, ce_keras / total


def export_tflite(run_dir, out, prefill_lengths=DEFAULT_PREFILL, quantize="float32",
                  check_prompts=("ROMEO:",), min_agreement=None, max_loss_increase=None,
                  strip_names=True, max_len=None, parts=None, data=None, text_column=None,
                  overwrite=False):
    """Convert, verify and publish `out` (see `write_tflite`); returns a report.

    An existing `out` is replaced only with `overwrite`, and only when this exporter wrote
    it (`tfllm.publish`).
    """
    output = runs.export_output(out, "tflite", overwrite, run_dir, data, "export tflite")
    with output.staging() as path:
        report = write_tflite(run_dir, path, prefill_lengths, quantize, check_prompts,
                              min_agreement, max_loss_increase, strip_names, max_len, parts,
                              data, text_column)
    return {**report, "path": out}


def write_tflite(run_dir, out, prefill_lengths=DEFAULT_PREFILL, quantize="float32",
                 check_prompts=("ROMEO:",), min_agreement=None, max_loss_increase=None,
                 strip_names=True, max_len=None, parts=None, data=None, text_column=None):
    """Convert, write to the path `out` and verify; returns a report (`max_len`: the KV
    cache length). The caller publishes `out` (it is a staging path).

    float32 must match Keras (logits within 1e-3, identical greedy tokens). Quantized modes
    must agree with Keras on >= `min_agreement` of next tokens over held-out text and stay
    within `max_loss_increase` (relative) of its loss (defaults: the mode's
    `ACCURACY_GATES`); otherwise an error is raised. The held-out text is the run's
    validation text, or `data` (a data spec; `text_column` its field).
    """
    gate = ACCURACY_GATES.get(quantize, (1.0, 0.0))
    min_agreement = gate[0] if min_agreement is None else min_agreement
    max_loss_increase = gate[1] if max_loss_increase is None else max_loss_increase
    if quantize != "float32":  # a missing text fails before the conversion's minutes
        _check_windows(run_dir, data, text_column, quantize)
    tflite, model, lengths = convert(run_dir, prefill_lengths, quantize, strip_names,
                                     max_len, parts, data, text_column)
    with open(out, "wb") as f:
        f.write(tflite)
    report = _verify(out, model, check_prompts, quantize, run_dir, min_agreement,
                     max_loss_increase, data, text_column)
    return {**report, "path": out, "bytes": len(tflite), "prefill_lengths": lengths,
            "quantize": quantize, "parts": check_parts(quantize, parts), "model": model,
            "gate": (min_agreement, max_loss_increase)}


def _check_windows(run_dir, data, text_column, quantize):
    if data is None and not runs.read_run_config(run_dir).get("data"):
        raise TFLiteExportError(f"--quantize {quantize} needs held-out text to check accuracy "
                                "and this run has no data of its own (an imported model): "
                                "pass --data SPEC, e.g. --data text:notes.txt or --data "
                                "tsv:messages.tsv --text-column en")


def _verify(path, model, check_prompts, quantize, run_dir, min_agreement, max_loss_increase,
            data=None, text_column=None):
    runner = TFLiteRunner(path)
    tok = model.tokenizer
    ids = tok.encode(check_prompts[0]) or [tok.bos_id]
    cache = runner.prefill(ids[:-1], runner.empty_cache())
    logits, _ = runner.step(ids[-1], len(ids) - 1, cache)
    keras_logits = model(np.array([ids], np.int32))[0, -1].numpy()
    diff = float(np.abs(logits - keras_logits).max())
    if not np.isfinite(logits).all():
        raise TFLiteExportError("the TFLite model outputs NaN/inf")
    report = {"max_logit_diff": diff}
    if quantize == "float32":
        if diff > 1e-3:
            raise TFLiteExportError(f"TFLite logits differ from Keras by {diff} (over 1e-3)")
        for prompt in check_prompts:
            ids = tok.encode(prompt) or [tok.bos_id]
            n = min(16, new_token_room(runner.max_len, len(ids)))
            expected = model.generate([ids], max_new_tokens=n, return_ids=True)[1][0]
            got = runner.generate(ids, n, end_token_id=tok.eos_id)
            if got != expected:
                raise TFLiteExportError(f"TFLite greedy tokens differ from CausalLM.generate "
                                        f"for {prompt!r}: {got} != {expected}")
        report["prompts_agreeing"] = len(check_prompts)
        return report
    windows = heldout_windows(run_dir, tok, min(runner.max_len, 64), 8, data, text_column)
    if windows is None:
        _check_windows(run_dir, data, text_column, quantize)
        raise TFLiteExportError(f"--data {data} holds no text to check accuracy on")
    agree, loss_q, loss_f = agreement(runner, model, windows)
    report.update(top1_agreement=agree, loss=loss_q, keras_loss=loss_f)
    if agree < min_agreement or loss_q > loss_f * (1 + max_loss_increase):
        raise TFLiteExportError(
            f"--quantize {quantize} is not accurate enough for this model: next-token "
            f"agreement {agree:.1%} (needs >= {min_agreement:.0%}), loss {loss_q:.4f} vs "
            f"{loss_f:.4f} (needs <= +{max_loss_increase:.0%}); refusing to write it (another "
            "mode or part mode, or --min-agreement / --max-loss-increase to accept less)")
    return report


# -- classifiers ------------------------------------------------------------------------

def _classifier_rows(run_dir, count, data=None, text_column=None, pair_column=None):
    """(calibration texts, check texts): the run's training and held-out rows, or those of
    `data` (labels not needed); texts are `(text, pair)` tuples for pair classifiers."""
    from tfllm.data import LabeledData
    from tfllm.tasks.classify.predict import check_pairs

    config = runs.read_run_config(run_dir)
    seed = (config.get("finetune") or {}).get("seed", 0)
    stored = config.get("data") or {}
    pair_column = pair_column or stored.get("pair_column")
    check_pairs(config["task"], bool(pair_column), run_dir)
    if data is not None:
        rows = LabeledData(data, text_column, require_labels=False, seed=seed,
                           pair_column=pair_column)
    elif stored:
        rows = LabeledData(stored["spec"], stored.get("text_column"),
                           stored.get("label_column"), seed=seed, pair_column=pair_column,
                           holdout=stored.get("holdout", "random"))
    else:
        raise TFLiteExportError(f"{run_dir} has no data of its own (an imported classifier): "
                                "pass --data SPEC with texts to calibrate and check the "
                                "TFLite model on, e.g. --data tsv:reviews.tsv")
    return [t for t, _ in rows.train[:count]], [t for t, _ in rows.val[:count]]


def _encode_one(tokenizer, task, texts):
    return encode_rows(tokenizer, task, texts)["token_ids"]


def convert_classifier(run_dir, quantize="float32", calibration_rows=200, strip_names=True,
                       data=None, text_column=None, seq_len=None, pair_column=None):
    """A classifier run's forward pass as TFLite bytes; returns (bytes, model, task).

    `data`/`text_column`: texts for int8 calibration where the run has none of its own;
    `seq_len`: the fixed input length in place of the run's.
    """
    from tfllm.tasks.classify.predict import load_classifier

    if quantize not in QUANTIZE_MODES or quantize in QUANTIZER_MODES:
        raise TFLiteExportError(f"--quantize {quantize!r} is not available for classifiers; "
                                "choose one of float32, float16, dynamic-int8, int8")
    model, task = load_classifier(run_dir)
    if seq_len is not None:
        if not 2 <= seq_len <= model.backbone.max_len:
            raise TFLiteExportError(f"--seq-len must be from 2 to the run's context "
                                    f"{model.backbone.max_len}, got {seq_len}")
        task = {**task, "seq_len": seq_len}
    calibration = None
    token_types = uses_token_types(model, task)
    if quantize == "int8":
        texts, _ = _classifier_rows(run_dir, calibration_rows, data, text_column, pair_column)
        calibration = encode_rows(model.tokenizer, task, texts, token_types)
    data = convert_classifier_model(model, task["seq_len"], quantize, calibration,
                                    token_types=token_types)
    return compact_tflite(data, strip_names), model, task


def convert_classifier_model(model, seq_len, quantize="float32", calibration_ids=None,
                             mask_fill=None, token_types=False):
    """A `SequenceClassifier`'s forward pass as TFLite bytes (see `convert_classifier`).

    Args:
        model: the classifier.
        seq_len: the fixed input length.
        quantize: one of QUANTIZE_MODES.
        calibration_ids: int (rows, seq_len) token ids, padded as at inference, or a dict
            of such arrays by input name; "int8" only.
        mask_fill: attention mask fill to trace with (default: "bounded" for int8).
        token_types: a second input `token_type_ids` [1, seq_len] (sentence pairs).
    """
    import keras

    from tfllm.layers import export_hooks

    def classify(token_ids):
        return {"probabilities": tf.nn.softmax(model(token_ids), axis=-1)}

    def classify_pair(token_ids, token_type_ids):
        inputs = {"token_ids": token_ids, "token_type_ids": token_type_ids}
        return {"probabilities": tf.nn.softmax(model(inputs), axis=-1)}

    spec = [tf.TensorSpec([1, seq_len], tf.int32, name="token_ids")]
    if token_types:
        spec.append(tf.TensorSpec([1, seq_len], tf.int32, name="token_type_ids"))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # Full integer: a -1e9 attention-mask fill would take over the scores' int8 range
    # (labels agreed on 86% of SST-2 rows); the bounded fill keeps it (99.5%).
    fill = mask_fill or ("bounded" if quantize == "int8" else "constant")
    tmp = tempfile.mkdtemp(prefix="tfllm-tflite-")
    try:
        with export_hooks.tracing(mask_fill=fill):
            write_archive(archive, {"classify": (classify_pair if token_types else classify,
                                                 spec)}, tmp)
        converter = tflite_converter(tmp, ["classify"], quantize)
        if quantize == "int8":
            rows = (calibration_ids if isinstance(calibration_ids, dict)
                    else {"token_ids": calibration_ids})
            rows = {k: np.asarray(v, np.int32) for k, v in rows.items()}

            def representative():
                for i in range(len(rows["token_ids"])):
                    yield {k: v[i][None, :] for k, v in rows.items()}

            converter.representative_dataset = representative
            # Integer kernels only; the int32 ids stay int32 (they index the embedding).
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return convert_or_raise(converter, TFLiteExportError)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tflite_classify(path, token_ids):
    """Probabilities (n, classes) of a classifier .tflite for ids (n, seq_len), or a dict
    of (n, seq_len) arrays by input name (`token_ids`, `token_type_ids`), row by row."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("classify")
    inputs = token_ids if isinstance(token_ids, dict) else {"token_ids": token_ids}
    wanted = set(runner.get_input_details())
    inputs = {k: np.asarray(v, np.int32) for k, v in inputs.items() if k in wanted}
    if "token_type_ids" in wanted and "token_type_ids" not in inputs:  # single texts
        inputs["token_type_ids"] = np.zeros_like(inputs["token_ids"])
    n = len(inputs["token_ids"])
    return np.concatenate([runner(**{k: v[i][None, :] for k, v in inputs.items()})
                           ["probabilities"] for i in range(n)])


def export_classifier_tflite(run_dir, out, quantize="float32", check_rows=200,
                             min_agreement=0.95, strip_names=True, data=None, text_column=None,
                             seq_len=None, pair_column=None, overwrite=False):
    """Convert, write and verify a classifier; returns a report.

    float32 must give the Keras probabilities (within 1e-4) and labels on held-out rows;
    quantized modes must agree with Keras' labels on >= `min_agreement` of them. `data`:
    the texts to calibrate and check on where the run has none (imported classifiers).
    """
    output = runs.export_output(out, "tflite", overwrite, run_dir, data, "export tflite")
    _classifier_rows(run_dir, 0, data, text_column, pair_column)  # no texts: fail first
    tflite, model, task = convert_classifier(run_dir, quantize, strip_names=strip_names,
                                             data=data, text_column=text_column,
                                             seq_len=seq_len, pair_column=pair_column)
    _, held_out = _classifier_rows(run_dir, check_rows, data, text_column, pair_column)
    ids = encode_rows(model.tokenizer, task, held_out, uses_token_types(model, task))
    expected = tf.nn.softmax(model(ids), axis=-1).numpy()
    with output.staging() as tmp:
        with open(tmp, "wb") as f:
            f.write(tflite)
        got = tflite_classify(tmp, ids)
        diff = float(np.abs(got - expected).max())
        agree = float(np.mean(got.argmax(1) == expected.argmax(1)))
        if not np.isfinite(got).all():
            raise TFLiteExportError("the TFLite classifier outputs NaN/inf")
        if quantize == "float32" and (diff > 1e-4 or agree < 1.0):
            raise TFLiteExportError(f"TFLite probabilities differ from Keras by {diff} "
                                    f"(label agreement {agree:.1%})")
        if agree < min_agreement:
            raise TFLiteExportError(
                f"--quantize {quantize} is not accurate enough for this classifier: labels "
                f"agree with Keras on {agree:.1%} of {len(held_out)} held-out rows (needs >= "
                f"{min_agreement:.0%}); refusing to write it")
    return {"path": out, "bytes": len(tflite), "quantize": quantize, "max_prob_diff": diff,
            "label_agreement": agree, "rows_checked": len(held_out),
            "seq_len": task["seq_len"], "class_names": task["class_names"],
            "inputs": sorted(ids)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(error_prog("tflite"), _main, args)


def _main(args):
    strip = not args.keep_tensor_names
    # The conversion follows the run's architecture: a causal LM's prefill and decode
    # steps with a KV cache, a classifier's one forward pass, a translator's encoder and
    # decode step.
    family = tasks.of_run(args.run).family
    if family not in ("decoder", "classifier", "encoder-decoder"):
        raise TFLiteExportError(f"no TFLite export for {family} runs (causal LMs, classifiers "
                                "and translators have one)")
    if family != "decoder" and (args.quantize in QUANTIZER_MODES
                                or any(parts_of(args).values())):
        raise TFLiteExportError(f"--quantize {args.quantize} and the per-part modes are for "
                                f"causal LMs; a {family} run takes float32, float16, "
                                "dynamic-int8" + (" or int8" if family == "classifier" else ""))
    if family == "encoder-decoder":
        from .tflite_seq2seq import export_seq2seq_tflite

        report = export_seq2seq_tflite(args.run, args.out, args.quantize, args.overwrite)
        print(f"TFLite translation model written to {report['path']} "
              f"({report['bytes'] / 1e6:.2f} MB, {args.quantize}, signatures encode and decode)")
        print(f"greedy translations equal Seq2SeqLM.generate on {report['sources_agreeing']} of "
              f"{report['sources_checked']} sample sources; held-out next-token agreement "
              f"with Keras {report['top1_agreement']:.1%}")
        return 0
    if family == "classifier":
        report = export_classifier_tflite(args.run, args.out, args.quantize,
                                          strip_names=strip, data=args.data,
                                          text_column=args.text_column, seq_len=args.seq_len,
                                          pair_column=args.pair_column,
                                          overwrite=args.overwrite)
    else:
        report = export_tflite(args.run, args.out, args.prefill_lengths, args.quantize,
                               strip_names=strip, max_len=args.max_len, parts=parts_of(args),
                               data=args.data, text_column=args.text_column,
                               min_agreement=args.min_agreement,
                               max_loss_increase=args.max_loss_increase,
                               overwrite=args.overwrite)
    if "label_agreement" in report:
        inputs = " and ".join(f"{name} [1, {report['seq_len']}]" for name in report["inputs"])
        print(f"TFLite classifier written to {report['path']} ({report['bytes'] / 1e6:.2f} MB, "
              f"{args.quantize}, input {inputs}, classes {report['class_names']})")
        print(f"labels agree with Keras on {report['label_agreement']:.1%} of "
              f"{report['rows_checked']} held-out rows; largest probability difference "
              f"{report['max_prob_diff']:.2e}")
        return 0
    print(f"TFLite model written to {report['path']} ({report['bytes'] / 1e6:.2f} MB, "
          f"prefill lengths {report['prefill_lengths']})")
    print(f"largest logit difference from Keras: {report['max_logit_diff']:.2e}")
    if "prompts_agreeing" in report:
        print(f"greedy tokens agree with CausalLM.generate on {report['prompts_agreeing']} "
              "prompt(s)")
    else:
        print(gate_line(report))
    return 0


def parts_of(args):
    """The per-part modes of parsed `--quantize-*` options."""
    return {part: getattr(args, f"quantize_{part}", None)
            for part in ("embedding", "attention", "ffn")}


def gate_line(report):
    """The accuracy gate's figures and thresholds, as the exporters print them."""
    agree, loss_up = report["gate"]
    parts = "".join(f", {k} {v}" for k, v in report.get("parts", {}).items())
    return (f"{report['quantize']}{parts}: held-out next-token agreement with Keras "
            f"{report['top1_agreement']:.1%} (gate >= {agree:.0%}), loss "
            f"{report['loss']:.4f} vs {report['keras_loss']:.4f} (gate <= +{loss_up:.0%})")


if __name__ == "__main__":
    sys.exit(main())
