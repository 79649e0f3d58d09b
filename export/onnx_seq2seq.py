"""ONNX for translation (encoder-decoder) runs: the encoder and a cached decode step.

    python -m export.onnx --run runs/en-fr --out en-fr.onnx

FILE.onnx encodes: input `source_ids` int32 [batch, src_len] (ids + EOS, right-padded with
0), outputs `cross_k_<i>`, `cross_v_<i>` float32 [batch, heads, src_len, head_dim] per
decoder block. FILE.decode.onnx is one decoder step: inputs `token_ids` int32 [batch, 1],
`cache_index` int32 [] (its position), `source_ids`, the cross K/V, and
`kv_cache_k_<i>` / `kv_cache_v_<i>` float32 [batch, heads, max_len, head_dim]; outputs
`logits` [batch, 1, vocab] and `new_kv_cache_k_<i>` / `new_kv_cache_v_<i>`. The cache write
is traced as a one-hot blend (tf2onnx cannot convert dynamic-update-slice).
`OnnxTranslator` drives both as an app would; the exporter requires its greedy output to
equal `Seq2SeqLM.generate` before it writes the files.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfllm import runs
from tfllm.errors import TfllmError

from .onnx_convert import convert, decode_path, session

SAMPLE_SOURCES = ["File not found", "cannot open %s", "x"]


class OnnxSeq2SeqError(TfllmError):
    """The translation ONNX export failed or disagrees with the Keras model."""


def _names(prefix, layers):
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in ("k", "v")]


def functions(model):
    """(encode, decode) tf.functions with ONNX-friendly ops."""
    from tfllm.layers import export_hooks

    bb = model.backbone
    layers = bb.num_decoder_layers
    src = tf.TensorSpec([None, None], tf.int32, name="source_ids")
    cross = [tf.TensorSpec([None, bb.num_heads, None, bb.head_dim], tf.float32, name=n)
             for n in _names("cross", layers)]
    cache = [tf.TensorSpec([None, bb.num_heads, bb.max_len, bb.head_dim], tf.float32, name=n)
             for n in _names("kv_cache", layers)]

    @tf.function(input_signature=[src])
    def encode(source_ids):
        kv = bb.project_context(bb.encode(source_ids, model.source_mask(source_ids)))
        return dict(zip(_names("cross", layers), [t for pair in kv for t in pair]))

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.int32, name="token_ids"),
                                  tf.TensorSpec([], tf.int32, name="cache_index"), src,
                                  *cross, *cache])
    def decode(token_ids, cache_index, source_ids, *flat):
        kv = [(flat[2 * i], flat[2 * i + 1]) for i in range(layers)]
        caches = [(flat[2 * (layers + i)], flat[2 * (layers + i) + 1]) for i in range(layers)]
        with export_hooks.tracing(cache_write="one_hot"):
            hidden, caches = bb.decode(token_ids, source_mask=model.source_mask(source_ids),
                                       context_kv=kv, caches=caches, cache_index=cache_index)
        out = {"logits": tf.cast(bb.logits(hidden), tf.float32)}
        for i, (k, v) in enumerate(caches):
            out[f"new_kv_cache_k_{i}"], out[f"new_kv_cache_v_{i}"] = k, v
        return out

    return encode, decode


class OnnxTranslator:
    """Greedy translation with the two ONNX files in onnxruntime.

    Example:
        >>> OnnxTranslator("en-fr.onnx").greedy([57, 210, 3], bos_id=2, end_id=3)  # doctest: +SKIP
    """

    def __init__(self, encode_path, decode_path):
        self.encoder, self.decoder = session(encode_path), session(decode_path)
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        self.cache_names = sorted(n for n in inputs if n.startswith("kv_cache_"))
        self.cache_shape = [int(d) for d in inputs[self.cache_names[0]].shape[1:]]
        self.outputs = ["logits"] + ["new_" + n for n in self.cache_names]

    def greedy(self, source_ids, bos_id, end_id, max_new_tokens=None):
        source = np.array([source_ids], np.int32)
        names = [o.name for o in self.encoder.get_outputs()]
        cross = dict(zip(names, self.encoder.run(names, {"source_ids": source})))
        cache = {n: np.zeros([1] + self.cache_shape, np.float32) for n in self.cache_names}
        token, out = bos_id, []
        for pos in range(max_new_tokens or self.cache_shape[1]):
            got = self.decoder.run(self.outputs, {
                "token_ids": np.array([[token]], np.int32),
                "cache_index": np.array(pos, np.int32), "source_ids": source, **cross,
                **cache})
            cache = dict(zip(self.cache_names, got[1:]))
            token = int(np.argmax(got[0][0, -1]))
            if token == end_id:
                break
            out.append(token)
        return out


def export_seq2seq_onnx(run_dir, out, opset=17, overwrite=False):
    """Convert, check greedy output against `generate`, publish both files; a report."""
    from tfllm.models.translation import encode_sources

    output = runs.export_output(out, "onnx", overwrite, run_dir, command="export onnx",
                                companions=[decode_path(out)])
    model = runs.load(run_dir)
    tok = model.tokenizer
    encode, decode = functions(model)
    with output.staging() as tmp_enc:
        tmp_dec = output.staged(decode_path(out))
        convert(encode, tmp_enc, opset)
        convert(decode, tmp_dec, opset)
        runner = OnnxTranslator(tmp_enc, tmp_dec)
        texts = [t for t in SAMPLE_SOURCES if len(tok.encode(t)) < model.backbone.max_len]
        expected = model.generate(texts, return_ids=True)[1]
        got = [runner.greedy(s, tok.bos_id, tok.eos_id)
               for s in encode_sources(tok, texts, model.backbone.max_len,
                                         protect=model.protect_placeholders)]
        if got != expected:
            raise OnnxSeq2SeqError(f"ONNX greedy translations differ from Seq2SeqLM.generate: "
                                   f"{got} != {expected}")
        sizes = os.path.getsize(tmp_enc), os.path.getsize(tmp_dec)
    return {"path": out, "decode_path": decode_path(out), "bytes": sizes[0],
            "decode_bytes": sizes[1], "sources_agreeing": len(texts)}
