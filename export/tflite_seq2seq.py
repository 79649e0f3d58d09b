"""TFLite for translation (encoder-decoder) runs: an `encode` and a `decode` signature, and a
runner that drives them as an app does.

    python -m export.tflite --run runs/en-fr --out en-fr.tflite [--quantize dynamic-int8]

Signatures (builtin ops only; H heads, D head width, S = T = the model's context):

    encode  in:  source_ids int32 [1, S] (the source ids + EOS, padded with 0)
            out: cross_k_<i>, cross_v_<i> float32 [1, H, S, D] per decoder block: the
                 cross-attention keys and values, computed once per source
    decode  in:  tokens int32 [1, 1] (BOS first, then each chosen token),
                 input_pos int32 [1] (its position: 0, 1, ...), source_ids [1, S],
                 cross_k_<i> / cross_v_<i> from encode, and the self-attention cache
                 kv_cache_k_<i> / kv_cache_v_<i> float32 [1, H, T, D] (zeros at first)
            out: logits float32 [1, 1, vocab] and the updated kv_cache_k_<i> / _v_<i>

The exporter converts the model, translates sample sources with `Seq2SeqTFLiteRunner` and
requires the same greedy tokens as `Seq2SeqLM.generate` (float32), or, for the quantized
modes, next-token agreement with Keras on held-out pairs of at least `MIN_AGREEMENT`,
before the file is written.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import tensorflow as tf

from .archive import write_archive
from .tflite_converter import convert_or_raise, tflite_converter
from tfllm import runs
from tfllm.errors import TfllmError

MODES = ("float32", "float16", "dynamic-int8")
MIN_AGREEMENT = 0.95
SAMPLE_SOURCES = ["File not found", "cannot open %s", "x", "Save the changes to {name}?"]


class Seq2SeqTFLiteError(TfllmError):
    """The translation TFLite export failed or disagrees with the Keras model."""


def _names(prefix, layers):
    return [n for i in range(layers) for n in (f"{prefix}_k_{i}", f"{prefix}_v_{i}")]


def convert_seq2seq(model, quantize="float32"):
    """TFLite bytes with `encode` and `decode` signatures for a `Seq2SeqLM`."""
    import keras

    from tfllm.layers import export_hooks

    if quantize not in MODES:
        raise Seq2SeqTFLiteError(f"--quantize {quantize!r} is not available for translation "
                                 f"runs; choose one of {', '.join(MODES)}")
    bb = model.backbone
    layers, s = bb.num_decoder_layers, bb.max_len
    cross_shape = [1, bb.num_heads, s, bb.head_dim]
    cache_shape = [1, bb.num_heads, bb.max_len, bb.head_dim]
    cross_names, cache_names = _names("cross", layers), _names("kv_cache", layers)

    def encode(inputs):
        source = inputs["source_ids"]
        kv = bb.project_context(bb.encode(source, model.source_mask(source)))
        return dict(zip(cross_names, [t for pair in kv for t in pair]))

    def decode(inputs):
        source = inputs["source_ids"]
        kv = [(inputs[f"cross_k_{i}"], inputs[f"cross_v_{i}"]) for i in range(layers)]
        caches = [(inputs[f"kv_cache_k_{i}"], inputs[f"kv_cache_v_{i}"]) for i in range(layers)]
        hidden, caches = bb.decode(inputs["tokens"], source_mask=model.source_mask(source),
                                   context_kv=kv, caches=caches,
                                   cache_index=inputs["input_pos"][0])
        out = dict(zip(cache_names, [t for pair in caches for t in pair]))
        out["logits"] = tf.cast(bb.logits(hidden), tf.float32)  # (1, 1, vocab)
        return out

    source_spec = tf.TensorSpec([1, s], tf.int32, name="source_ids")
    decode_spec = {"tokens": tf.TensorSpec([1, 1], tf.int32, name="tokens"),
                   "input_pos": tf.TensorSpec([1], tf.int32, name="input_pos"),
                   "source_ids": source_spec}
    decode_spec.update({n: tf.TensorSpec(cross_shape, tf.float32, name=n) for n in cross_names})
    decode_spec.update({n: tf.TensorSpec(cache_shape, tf.float32, name=n) for n in cache_names})
    archive = keras.export.ExportArchive()
    archive.track(model)
    tmp = tempfile.mkdtemp(prefix="tfllm-tflite-s2s-")
    try:
        with export_hooks.tracing(decode_read="after_write"):  # TFLite's faster form (see export.tflite)
            write_archive(archive, {"encode": (encode, [{"source_ids": source_spec}]),
                                    "decode": (decode, [decode_spec])}, tmp)
        return convert_or_raise(tflite_converter(tmp, ["encode", "decode"], quantize),
                                Seq2SeqTFLiteError)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Seq2SeqTFLiteRunner:
    """Translate with a tfllm translation `.tflite` in ai-edge-litert, as an app would.

    Args:
        path: the `.tflite` file (or `model_content` bytes).
        num_threads: interpreter threads.

    Example:
        >>> Seq2SeqTFLiteRunner("en-fr.tflite").greedy([57, 210, 3], bos_id=2, end_id=3)  # doctest: +SKIP
    """

    def __init__(self, path=None, model_content=None, num_threads=2):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, model_content=model_content,
                                       num_threads=num_threads)
        self.encode = self.interpreter.get_signature_runner("encode")
        self.decode = self.interpreter.get_signature_runner("decode")
        details = self.decode.get_input_details()
        self.cache_names = sorted(k for k in details if k.startswith("kv_cache_"))
        self.cache_shape = tuple(details[self.cache_names[0]]["shape"])
        self.source_len = int(details["source_ids"]["shape"][1])
        self.max_len = self.cache_shape[2]

    def start(self, source_ids):
        """Encode a source (ids ending in EOS): `(source array, cross K/V, empty cache)`."""
        if len(source_ids) > self.source_len:
            raise Seq2SeqTFLiteError(f"the source is {len(source_ids)} tokens, more than the "
                                     f"model's {self.source_len}")
        source = np.zeros((1, self.source_len), np.int32)
        source[0, :len(source_ids)] = source_ids
        cross = self.encode(source_ids=source)
        cache = {k: np.zeros(self.cache_shape, np.float32) for k in self.cache_names}
        return source, cross, cache

    def step(self, token, position, source, cross, cache):
        """Logits (vocab,) after `token` at `position`, and the new cache."""
        out = self.decode(tokens=np.array([[token]], np.int32),
                          input_pos=np.array([position], np.int32), source_ids=source,
                          **cross, **cache)
        return out["logits"][0, -1], {k: out[k] for k in self.cache_names}

    def greedy(self, source_ids, bos_id, end_id, max_new_tokens=None):
        """Greedy target ids (without the end token) for one source."""
        source, cross, cache = self.start(source_ids)
        token, out = bos_id, []
        for pos in range(max_new_tokens or self.max_len):
            logits, cache = self.step(token, pos, source, cross, cache)
            token = int(np.argmax(logits))
            if token == end_id:
                break
            out.append(token)
        return out


def teacher_forced_agreement(runner, model, pairs):
    """Share of target positions where the TFLite model's next-token choice equals
    Keras', feeding both the reference target (held-out pairs: (source ids, target ids))."""
    same = total = 0
    for src, tgt in pairs:
        dec = [model.tokenizer.bos_id] + tgt
        logits = model({"encoder_token_ids": np.array([src]),
                        "decoder_token_ids": np.array([dec])}).numpy()[0]
        source, cross, cache = runner.start(src)
        for pos, token in enumerate(dec):
            got, cache = runner.step(token, pos, source, cross, cache)
            same += int(np.argmax(got) == np.argmax(logits[pos]))
            total += 1
    return same / max(total, 1)


def export_seq2seq_tflite(run_dir, out, quantize="float32", overwrite=False, check_pairs=50):
    """Convert a translation run, check it against Keras, publish `out`; returns a report."""
    from tfllm.data.parallel import ParallelData
    from tfllm.tasks.translate.data import encode_pairs
    from tfllm.models.translation import encode_sources

    output = runs.export_output(out, "tflite", overwrite, run_dir, command="export tflite")
    model = runs.load(run_dir)
    tok = model.tokenizer
    data = convert_seq2seq(model, quantize)
    runner = Seq2SeqTFLiteRunner(model_content=data)
    report = {"path": out, "bytes": len(data), "quantize": quantize}
    texts = [t for t in SAMPLE_SOURCES if len(tok.encode(t)) < model.backbone.max_len]
    sources = encode_sources(tok, texts, model.backbone.max_len,
                             protect=model.protect_placeholders)
    expected = model.generate(texts, num_beams=1, return_ids=True)[1]
    got = [runner.greedy(s, tok.bos_id, tok.eos_id) for s in sources]
    report["sources_agreeing"] = sum(g == e for g, e in zip(got, expected))
    report["sources_checked"] = len(texts)
    stored = runs.read_run_config(run_dir)
    d = stored["data"]
    held = ParallelData(d["spec"], d["source_column"], d["target_column"],
                        stored["training"]["seed"]).val[:check_pairs]
    pairs, _ = encode_pairs(held, tok, model.backbone.max_len, truncate=True,
                            protect=model.protect_placeholders)
    report["top1_agreement"] = round(teacher_forced_agreement(runner, model, pairs), 4)
    if quantize == "float32" and report["sources_agreeing"] != len(texts):
        raise Seq2SeqTFLiteError(f"TFLite greedy translations differ from Seq2SeqLM.generate "
                                 f"on {len(texts) - report['sources_agreeing']} of "
                                 f"{len(texts)} sample sources: {got} != {expected}")
    if report["top1_agreement"] < MIN_AGREEMENT:
        raise Seq2SeqTFLiteError(
            f"--quantize {quantize} agrees with the float model on "
            f"{report['top1_agreement']:.1%} of held-out next tokens, below the "
            f"{MIN_AGREEMENT:.0%} required; nothing was written (use float32 or float16)")
    with output.staging() as staged:
        with open(staged, "wb") as f:
            f.write(data)
    return report
