"""The translate task's SavedModel signatures and their fresh-process check.

    serving_default, translate
        inputs  text (string [batch]), num_beams (int32 [batch]; one value for the whole
                request, 1 = greedy), max_new_tokens (int32 [batch]; one value, at most
                the model's context), length_penalty (float32 [batch]; one value)
        outputs translation (string [batch]), token_ids (int32 [batch, max_len]),
                num_generated (int32 [batch], the end token included)

The encoder pass, the cached beam-search loop and (de)tokenization in the graph.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.signatures.checks import (DEFAULT_MAX_BATCH, ExportError, after, batch_checks,
                                     fresh_process_outputs, require, text_checks)
from tfllm.tokenizers import max_text_bytes


def signatures(model, config, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """`(signatures, check)`: the task's SavedModel hook (see `tfllm.tasks.base.Task`)."""
    sigs = seq2seq_signatures(model, model.tokenizer, jit_compile, max_batch)

    def check(path, run_dir):
        verify_translations(path, model)
        return "translations as Seq2SeqLM.generate (greedy and beam 2)"

    return sigs, check


def seq2seq_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """The `translate` endpoint of an encoder-decoder: {name: (fn, input_signature)}.

    The beam width is a request input, so the loop's shapes are not static: it runs as a
    plain TensorFlow graph (`jit_compile` is not used; XLA needs one compiled loop per
    width). Beam search with one beam is greedy decoding (`tfllm.models.beam_search`). A model
    trained with `protect_placeholders` gets the same protection in the graph.
    """
    from tfllm.tokenizers.placeholders import protect_tf, restore_tf
    from tfllm.models.translation import Translator

    tr = Translator(model, tokenizer.bos_id, tokenizer.eos_id, jit_compile=False)
    protect = model.protect_placeholders
    sp = tokenizer.tf_tokenizer
    max_len, eos = tr.max_len, tokenizer.eos_id
    text_bytes = max_text_bytes(tokenizer, max_len)

    def translate(text, num_beams, max_new_tokens, length_penalty):
        checks = batch_checks(max_batch, text, ("num_beams", num_beams),
                               ("max_new_tokens", max_new_tokens),
                               ("length_penalty", length_penalty))
        checks += text_checks(text_bytes, text=text)
        checks += [
            require(tf.reduce_all(tf.logical_and(num_beams >= 1, num_beams <= 64)),
                     "num_beams must be from 1 to 64"),
            require(tf.reduce_all(tf.equal(num_beams, num_beams[0])),
                     "num_beams must be the same for every row of a request"),
            require(tf.reduce_all(tf.logical_and(max_new_tokens >= 1,
                                                  max_new_tokens <= max_len)),
                     f"max_new_tokens must be from 1 to {max_len} (the model context)"),
            require(tf.reduce_all(tf.equal(max_new_tokens, max_new_tokens[0])),
                     "max_new_tokens must be the same for every row of a request"),
            require(tf.reduce_all(tf.math.is_finite(length_penalty)),
                     "length_penalty must be finite"),
        ]
        text, num_beams, max_new_tokens, length_penalty = after(
            checks, text, num_beams, max_new_tokens, length_penalty)
        ids = tokenizer.tokenize(protect_tf(text) if protect else text)
        ids = tf.concat([ids, tf.fill([tf.shape(text)[0], 1], eos)], axis=1)  # + EOS
        fits = require(tf.reduce_max(ids.row_lengths()) <= max_len,
                        f"a source is longer than the model context of {max_len} tokens "
                        "(its end token included)")
        source = after([fits], ids.to_tensor(0))
        out, n = tr._beam_graph(source, max_new_tokens[0], num_beams[0], length_penalty[0])
        ended = tf.logical_and(n > 0, tf.equal(
            tf.gather(out, tf.maximum(n - 1, 0), batch_dims=1), eos))
        text_len = n - tf.cast(ended, tf.int32)
        translation = sp.detokenize(tf.RaggedTensor.from_tensor(out, lengths=text_len))
        if protect:
            translation = restore_tf(translation, text)
        token_ids = tf.where(tf.sequence_mask(n, max_len), out, tokenizer.pad_id)
        return {"translation": translation, "token_ids": token_ids, "num_generated": n}

    spec = [tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.int32, name="num_beams"),
            tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([None], tf.float32, name="length_penalty")]
    return {"serving_default": (translate, spec), "translate": (translate, spec)}


SAMPLE_SOURCES = ["File not found", "cannot open %s", "x", "Save the changes to {name}?"]


def verify_translations(path, model, texts=SAMPLE_SOURCES, max_new_tokens=None):
    """`translate` of a fresh-process reload must equal `Seq2SeqLM.generate`, greedy and
    with 2 beams."""
    max_new = max_new_tokens or model.backbone.max_len
    texts = [t for t in texts if len(model.tokenizer.encode(t)) < model.backbone.max_len]
    k = len(texts)
    calls = [("translate", "translation", {"text": texts, "num_beams": [beams] * k,
                                           "max_new_tokens": [max_new] * k,
                                           "length_penalty": [1.0] * k})
             for beams in (1, 2)]
    got = [g.tolist() for g in fresh_process_outputs(path, calls)]
    for beams, translations in zip((1, 2), got):
        expected = model.generate(texts, max_new_tokens=max_new, num_beams=beams)
        if translations != expected:
            raise ExportError(f"SavedModel translate (num_beams={beams}) differs from "
                              f"Seq2SeqLM.generate: {translations!r} != {expected!r}")
    return got
