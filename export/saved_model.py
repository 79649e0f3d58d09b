"""Export a run as a SavedModel that TF Serving answers with text.

    python -m export.saved_model --run runs/NAME --out DIR [--name NAME] [--version N]

writes DIR/NAME/N/ (TF Serving's layout) with signatures

    serving_default, generate
        inputs  prompt (string [batch]), max_new_tokens (int32 [batch]),
                temperature (float32 [batch]; 0 = greedy), top_k (int32 [batch]; 0 = off),
                top_p (float32 [batch]; 1 = off), seed (int32 [batch])
        outputs text (string [batch]), token_ids (int32 [batch, max_new]),
                num_generated (int32 [batch])
    score
        inputs  text (string [batch])
        outputs log_likelihood (float32 [batch]): sum of log p(token | previous tokens)
                over every token after the first; num_tokens (int32 [batch]): how many.

Tokenization, the cached decoding loop and detokenization all run inside the graph (the
decoding loop is the same function `CausalLM.generate` runs). Before it reports success the
exporter loads the SavedModel in a fresh process and checks that greedy `serving_default`
output equals `CausalLM.generate` on sample prompts.

A classifier run (`tfllm finetune --task classify`) gets instead

    serving_default, classify
        inputs  text (string [batch]); sentence-pair classifiers also text_pair
                (string [batch]), the second text of each row
        outputs probabilities (float32 [batch, classes]), label (int32 [batch]),
                label_name (string [batch])

(an imported Hugging Face classifier, which may have been fine-tuned on either, gets the
single-text `classify` and the pair form as `classify_pair`)

verified in a fresh process against the Keras classifier's predictions.

A causal LM run with a chat template (a chat fine-tune, or an imported chat model) also
gets `chat` and `chat_with_system` (message [+ system] and generate's sampling inputs ->
the reply `text`; see export/saved_model_chat.py), verified against `tfllm chat`.

A translation run (`tfllm train --objective seq2seq`) gets

    serving_default, translate
        inputs  text (string [batch]), num_beams (int32 [batch]; one value for the whole
                request, 1 = greedy), max_new_tokens (int32 [batch]; one value, at most
                the model's context), length_penalty (float32 [batch]; one value)
        outputs translation (string [batch]), token_ids (int32 [batch, max_len]),
                num_generated (int32 [batch], the end token included)

the encoder pass, the cached beam-search loop and (de)tokenization in the graph, verified
in a fresh process against `Seq2SeqLM.generate` (greedy and beam 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .options import DEFAULT_MAX_BATCH, add_max_len, prog


def build_parser():
    parser = argparse.ArgumentParser(
        prog=prog("saved_model"),
        description="Export a tfllm run as a text-in/text-out SavedModel in TF Serving's "
                    "layout (OUT/NAME/VERSION/).")
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--run", required=True, help="run directory")
    add_max_len(parser)
    parser.add_argument("--out", required=True, help="model base directory")
    parser.add_argument("--name", help="model name (default: the run directory's name)")
    parser.add_argument("--version", type=int, default=1, help="version number (default 1)")
    parser.add_argument("--no-jit", action="store_true",
                        help="do not XLA-compile the decoding loop (slower; for TF Serving "
                             "builds without XLA:CPU)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the fresh-process check against CausalLM.generate")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing version (once the new one is verified)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"most rows one request may carry (default {DEFAULT_MAX_BATCH})")
    return parser


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

import tensorflow as tf  # noqa: E402

from tfllm import runs  # noqa: E402
from tfllm.chat_template import ChatTemplateError, usable_chat_config  # noqa: E402
from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.publish import Output  # noqa: E402

from .saved_model_chat import (SAMPLE_MESSAGES, chat_signatures,  # noqa: E402
                                     expected_replies)
from tfllm.tokenizers import max_text_bytes, tokenizer_files  # noqa: E402

SAMPLE_PROMPTS = ["", "The ", "ROMEO:\n"]
_MIN_BUCKET = 8


class ExportError(TfllmError):
    """The export failed or its output disagrees with the Keras model."""


def _prompt_bucket(longest, room, max_len):
    """Smallest power of two >= longest (at least 8), capped so `room` new tokens still fit."""
    p = tf.maximum(longest, _MIN_BUCKET)
    p = tf.cast(2 ** tf.math.ceil(tf.math.log(tf.cast(p, tf.float32)) / tf.math.log(2.0)),
                tf.int32)
    return tf.maximum(longest, tf.minimum(p, max_len - room))


def _require(condition, message):
    """An in-graph check whose failure is InvalidArgument "assertion failed: [message]"."""
    return tf.debugging.Assert(condition, [tf.constant(message)])


def _after(checks, *tensors):
    """`tensors`, usable only once every check has passed: work that scales with an
    input (tokenizing, padding, the cache, the loop) never starts on a rejected request."""
    with tf.control_dependencies(checks):
        out = tuple(tf.identity(t) for t in tensors)
    return out if len(out) > 1 else out[0]


def _text_checks(limit, **texts):
    """Every string of each named input is at most `limit` bytes (`max_text_bytes`): checked
    before tokenizing, so a huge string is refused in milliseconds."""
    return [_require(tf.reduce_all(tf.strings.length(t) <= limit),
                     f"{name} longer than {limit} bytes; the model's context cannot hold it")
            for name, t in texts.items()]


def _cut_text(text, limit):
    """Strings of more than `limit` bytes cut to `limit` (a character cut in two dropped):
    classifiers and encoders keep only a context's worth of tokens anyway."""
    long = tf.strings.length(text) > limit
    cut = tf.strings.unicode_transcode(tf.strings.substr(text, 0, limit), "UTF-8", "UTF-8",
                                       errors="ignore")
    return tf.where(long, cut, text)


def _batch_checks(max_batch, first, *others):
    """Every input has the same batch size, from 1 to `max_batch`."""
    batch = tf.shape(first)[0]
    checks = [_require(tf.logical_and(batch >= 1, batch <= max_batch),
                       f"the batch must hold 1 to {max_batch} rows")]
    for name, t in others:
        checks.append(_require(tf.equal(tf.shape(t)[0], batch),
                               f"{name} must have one value per row"))
    return checks


class CausalDecoder:
    """The in-graph decoding of a causal LM endpoint: checks of a request's inputs, then
    the cached decoding loop from token ids (the `generate` and `chat` signatures share it).

    Every input is checked in the graph before anything that scales with it is allocated;
    an out-of-range value fails the request with InvalidArgument naming the input and its
    limit (see README, "Limits and errors").
    """

    def __init__(self, model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
        from tfllm.models.generation import Generator

        self.tokenizer, self.max_batch = tokenizer, max_batch
        self.eos_ids = getattr(tokenizer, "eos_ids", [tokenizer.eos_id])
        self.gen = Generator(model, end_token_id=self.eos_ids, jit_compile=jit_compile)
        self.max_len = self.gen.max_len
        self.text_bytes = max_text_bytes(tokenizer, self.max_len)

    def checks(self, texts: dict, max_new_tokens, temperature, top_k, top_p, seed):
        """In-graph checks of the string inputs `texts` (name -> tensor, bounded by
        `text_bytes`) and the sampling inputs, to pass before tokenizing (`_after`)."""
        max_len = self.max_len
        first, *others = list(texts.items())
        checks = _batch_checks(self.max_batch, first[1], *others,
                               ("max_new_tokens", max_new_tokens),
                               ("temperature", temperature), ("top_k", top_k),
                               ("top_p", top_p), ("seed", seed))
        checks += _text_checks(self.text_bytes, **texts)
        return checks + [
            _require(tf.reduce_all(tf.logical_and(max_new_tokens >= 1,
                                                  max_new_tokens <= max_len - 1)),
                     f"max_new_tokens must be from 1 to {max_len - 1} (the model context of "
                     f"{max_len} tokens less the prompt)"),
            _require(tf.reduce_all(tf.logical_and(tf.math.is_finite(temperature),
                                                  temperature >= 0.0)),
                     "temperature must be a finite number >= 0 (0 = greedy)"),
            _require(tf.reduce_all(top_k >= 0), "top_k must be >= 0 (0 = off)"),
            _require(tf.reduce_all(tf.logical_and(top_p > 0.0, top_p <= 1.0)),
                     "top_p must be > 0 and <= 1 (1 = off)"),
        ]

    @staticmethod
    def after(checks, *tensors):
        """`tensors`, usable once every check has passed (see `_after`)."""
        return _after(checks, *tensors)

    def decode(self, ids, max_new_tokens, temperature, top_k, top_p, seed):
        """Generate after the prompts' ragged token ids (batch, None); the outputs of the
        `generate` signature."""
        tokenizer, max_len, eos_ids = self.tokenizer, self.max_len, self.eos_ids
        batch = ids.nrows(out_type=tf.int32)
        # An empty prompt starts from BOS, as CausalLM.generate does.
        empty = tf.cast(tf.equal(ids.row_lengths(), 0), tf.int64)
        ids = tf.concat([tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(empty)], tokenizer.bos_id), empty), ids], axis=1)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        longest = tf.reduce_max(lengths)
        room = tf.reduce_max(max_new_tokens)
        # Subtraction, not addition: a huge max_new_tokens must not wrap around.
        fits = _require(room <= max_len - longest,
                        f"prompt tokens + max_new_tokens exceed the model context of "
                        f"{max_len} tokens")
        longest, room = _after([fits], longest, room)
        bucket = _prompt_bucket(longest, room, max_len)
        # Left-pad into (batch, bucket): row b's tokens end in the last column.
        right = ids.to_tensor(0, shape=tf.stack([batch, bucket]))
        src = tf.range(bucket)[None, :] - (bucket - lengths)[:, None]
        padded = tf.where(src >= 0, tf.gather(right, tf.maximum(src, 0), batch_dims=1), 0)
        out, n_gen = self.gen._generate(padded, lengths, max_new_tokens, temperature, top_k,
                                        top_p, seed, tf.constant(True))
        width = room
        new_ids = out[:, :width]
        keep = tf.sequence_mask(n_gen, width)
        # Drop the end token itself from the text (CausalLM.generate does the same).
        is_end = tf.logical_and(keep, tf.reduce_any(
            tf.equal(new_ids[:, :, None], tf.constant(eos_ids, tf.int32)), axis=2))
        text_len = n_gen - tf.cast(tf.reduce_any(is_end, axis=1), tf.int32)
        # detokenize: the tracked layer itself (tf-text SentencePiece ops ship with TF
        # Serving).
        text = tokenizer.tf_tokenizer.detokenize(
            tf.RaggedTensor.from_tensor(new_ids, lengths=text_len))
        token_ids = tf.where(keep, new_ids, tokenizer.pad_id)
        return {"text": text, "token_ids": token_ids, "num_generated": n_gen}


def causal_lm_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH,
                         decoder=None):
    """Endpoint functions of a causal LM: {name: (fn, input_signature)} (`decoder`: a
    `CausalDecoder` to share with the chat signatures)."""
    decoder = decoder or CausalDecoder(model, tokenizer, jit_compile, max_batch)
    max_len, text_bytes = decoder.max_len, decoder.text_bytes

    def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed):
        checks = decoder.checks({"prompt": prompt}, max_new_tokens, temperature, top_k,
                                top_p, seed)
        prompt, max_new_tokens = _after(checks, prompt, max_new_tokens)
        # The in-graph tokenizer (+ BOS where the checkpoint adds one).
        return decoder.decode(tokenizer.tokenize(prompt), max_new_tokens, temperature, top_k,
                              top_p, seed)

    def score(text):
        text = _after(_batch_checks(max_batch, text) + _text_checks(text_bytes, text=text),
                      text)
        ids = tokenizer.tokenize(text)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        longest = tf.reduce_max(lengths)
        fits = _require(longest <= max_len,
                        f"text longer than the model context of {max_len} tokens")
        longest = _after([fits], longest)
        # At least one column, so that a batch of empty texts still runs (and scores 0).
        dense = ids.to_tensor(tokenizer.pad_id,
                              shape=tf.stack([tf.shape(text)[0], tf.maximum(longest, 1)]))
        mask = tf.sequence_mask(lengths, tf.shape(dense)[1])
        logits = model({"token_ids": dense, "padding_mask": mask})
        logp = tf.nn.log_softmax(logits[:, :-1], axis=-1)
        target_logp = tf.gather(logp, dense[:, 1:], axis=-1, batch_dims=2)
        scored = mask[:, 1:]
        ll = tf.reduce_sum(tf.where(scored, target_logp, 0.0), axis=1)
        return {"log_likelihood": ll,
                "num_tokens": tf.reduce_sum(tf.cast(scored, tf.int32), axis=1)}

    batch = [None]
    gen_sig = [tf.TensorSpec(batch, tf.string, name="prompt"),
               tf.TensorSpec(batch, tf.int32, name="max_new_tokens"),
               tf.TensorSpec(batch, tf.float32, name="temperature"),
               tf.TensorSpec(batch, tf.int32, name="top_k"),
               tf.TensorSpec(batch, tf.float32, name="top_p"),
               tf.TensorSpec(batch, tf.int32, name="seed")]
    return {"serving_default": (generate, gen_sig), "generate": (generate, gen_sig),
            "score": (score, [tf.TensorSpec(batch, tf.string, name="text")])}


def classifier_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """Endpoint functions of a classifier run: text (and text_pair, for sentence-pair
    classifiers) -> probabilities, label, label_name.

    A run fine-tuned on pairs answers `classify(text, text_pair)`; one fine-tuned on single
    texts `classify(text)`; an imported checkpoint (which does not say) both, the pair form
    as `classify_pair`. `jit_compile` is accepted for the builders' common signature and
    not used: the one forward pass runs as TensorFlow ops, so TF Serving needs no XLA.
    """
    from tfllm.data.classification import encode_to_longest
    from tfllm.finetuning import pair_mode

    task = model.task_info
    names = tf.constant(model.class_names)
    max_len = model.backbone.max_len
    text_bytes = max_text_bytes(tokenizer, max_len)

    def run(text, text_pair=None):
        pair = text_pair is not None
        others = [("text_pair", text_pair)] if pair else []
        checked = _after(_batch_checks(max_batch, text, *others), text, *(
            [text_pair] if pair else []))
        text, text_pair = checked if pair else (checked, None)
        text = _cut_text(text, text_bytes)
        text_pair = None if text_pair is None else _cut_text(text_pair, text_bytes)
        # Padded to the longest row of the request (masked: the padding length does not
        # change the result), at most the model's context. The run's tokenizer object adds
        # the checkpoint's own BOS where it has one.
        inputs = encode_to_longest(tokenizer, text, max_len, task["add_bos"], pairs=text_pair)
        probabilities = tf.nn.softmax(model(inputs), axis=-1)
        label = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "label": label,
                "label_name": tf.gather(names, label)}

    def classify(text):
        return run(text)

    def classify_pair(text, text_pair):
        return run(text, text_pair)

    single = (classify, [tf.TensorSpec([None], tf.string, name="text")])
    pair = (classify_pair, [tf.TensorSpec([None], tf.string, name="text"),
                            tf.TensorSpec([None], tf.string, name="text_pair")])
    mode = pair_mode(task)
    if mode is True:
        return {"serving_default": pair, "classify": pair}
    if mode is False:
        return {"serving_default": single, "classify": single}
    return {"serving_default": single, "classify": single, "classify_pair": pair}


def encoder_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """Endpoint functions of an encoder run (an imported sentence-transformers BERT): text
    -> unit-length embedding, as `tfllm embed` computes it.

    `jit_compile` is accepted for the builders' common signature and not used.
    """
    from tfllm.data.classification import encode_to_longest

    max_len = model.backbone.max_len
    text_bytes = max_text_bytes(tokenizer, max_len)

    def embed(text):
        text = _cut_text(_after(_batch_checks(max_batch, text), text), text_bytes)
        inputs = encode_to_longest(tokenizer, text, max_len, add_bos=True)
        return {"embedding": model(inputs)}

    spec = [tf.TensorSpec([None], tf.string, name="text")]
    return {"serving_default": (embed, spec), "embed": (embed, spec)}


# One builder per task (the run's config.json "objective").
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
        checks = _batch_checks(max_batch, text, ("num_beams", num_beams),
                               ("max_new_tokens", max_new_tokens),
                               ("length_penalty", length_penalty))
        checks += _text_checks(text_bytes, text=text)
        checks += [
            _require(tf.reduce_all(tf.logical_and(num_beams >= 1, num_beams <= 64)),
                     "num_beams must be from 1 to 64"),
            _require(tf.reduce_all(tf.equal(num_beams, num_beams[0])),
                     "num_beams must be the same for every row of a request"),
            _require(tf.reduce_all(tf.logical_and(max_new_tokens >= 1,
                                                  max_new_tokens <= max_len)),
                     f"max_new_tokens must be from 1 to {max_len} (the model context)"),
            _require(tf.reduce_all(tf.equal(max_new_tokens, max_new_tokens[0])),
                     "max_new_tokens must be the same for every row of a request"),
            _require(tf.reduce_all(tf.math.is_finite(length_penalty)),
                     "length_penalty must be finite"),
        ]
        text, num_beams, max_new_tokens, length_penalty = _after(
            checks, text, num_beams, max_new_tokens, length_penalty)
        ids = tokenizer.tokenize(protect_tf(text) if protect else text)
        ids = tf.concat([ids, tf.fill([tf.shape(text)[0], 1], eos)], axis=1)  # + EOS
        fits = _require(tf.reduce_max(ids.row_lengths()) <= max_len,
                        f"a source is longer than the model context of {max_len} tokens "
                        "(its end token included)")
        source = _after([fits], ids.to_tensor(0))
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


SIGNATURE_BUILDERS = {"clm": causal_lm_signatures, "chat": causal_lm_signatures,
                      "classify": classifier_signatures,
                      "encoder": encoder_signatures, "seq2seq": seq2seq_signatures}


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
    got = [g.tolist() for g in _fresh_process_outputs(path, calls)]
    for beams, translations in zip((1, 2), got):
        expected = model.generate(texts, max_new_tokens=max_new, num_beams=beams)
        if translations != expected:
            raise ExportError(f"SavedModel translate (num_beams={beams}) differs from "
                              f"Seq2SeqLM.generate: {translations!r} != {expected!r}")
    return got


def export_saved_model(run_dir, out, name=None, version=1, jit_compile=True, verify=True,
                       overwrite=False, max_batch=DEFAULT_MAX_BATCH, max_len=None):
    """Write `out/name/version/` and return its path.

    Args:
        run_dir: a run directory.
        out: the model base directory (TF Serving's --model_base_path parent).
        name: model name (default: the run directory's name).
        version: integer version directory.
        jit_compile: XLA-compile the decoding loop (TF Serving needs
            --xla_cpu_compilation_enabled=true to run it; see serving/README.md).
        verify: reload in a fresh process and compare with CausalLM.generate.
        overwrite: replace an existing version directory (only once the new one is
            written and verified, in one step: a server never sees it missing).
        max_batch: most rows one request may carry.
    """
    import keras

    config = runs.read_run_config(run_dir)
    task = config.get("objective", "clm")
    if task not in SIGNATURE_BUILDERS:
        raise ExportError(f"no SavedModel signatures for runs of objective {task!r}")
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"--version must be a positive integer, got {version!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ExportError(f"--max-batch must be a positive integer, got {max_batch!r}")
    name = name or os.path.basename(os.path.normpath(run_dir))
    if not name or name.startswith(".") or os.sep in name:
        raise ExportError(f"--name {name!r} is not a model name (a plain directory name)")
    target = os.path.join(out, name, str(version))
    for path in (out, os.path.join(out, name)):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ExportError(f"{path} is a file, not a directory; give --out a directory")
    output = Output(target, "saved-model", overwrite, runs.inputs_of(run_dir),
                    option="the version directory", command="export saved-model")
    output.check()

    model = runs.load(run_dir, max_len=max_len)
    if task == "classify":
        model.task_info = config["task"]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(model.tokenizer.tf_tokenizer)
    signatures = SIGNATURE_BUILDERS[task](model, model.tokenizer, jit_compile, max_batch)
    chat = None
    if task in ("clm", "chat"):
        chat, extra = _chat_signatures(config, CausalDecoder(model, model.tokenizer, jit_compile,
                                                             max_batch))
        signatures.update(extra)
    for sig_name, (fn, spec) in signatures.items():
        archive.add_endpoint(sig_name, fn, input_signature=spec)
    # The tokenizer files travel as assets too, for clients that tokenize themselves.
    spec = config.get("tokenizer", runs.TOKENIZER)
    files = tokenizer_files(spec)
    archive._tf_trackable.tokenizer_assets = [
        tf.saved_model.Asset(os.path.join(run_dir, f)) for f in files]
    # Written beside the target (TF Serving ignores non-numeric names), verified, made
    # readable to the server's user, then swapped in: a server polling the base path sees
    # the old version or the new one, never a half-written or missing one.
    with output.staging() as tmp:
        archive.write_out(tmp, verbose=False)
        if verify:
            if task == "classify":
                verify_classifier(run_dir, tmp, model=model)
            elif task == "encoder":
                verify_embeddings(tmp, model)
            elif task == "seq2seq":
                verify_translations(tmp, model)
            else:
                verify_saved_model(run_dir, tmp, model=model)
                if chat is not None:
                    verify_chat(tmp, model, chat)
    return target


def verify_saved_model(run_dir, path, prompts=SAMPLE_PROMPTS, max_new_tokens=16, model=None):
    """Greedy text from a fresh-process reload must equal CausalLM.generate.

    `model`: the run's already-loaded CausalLM (loaded here if None).
    """
    model = model if model is not None else runs.load(run_dir)
    limit = model.backbone.max_len
    max_new = min(max_new_tokens, limit - max(len(model.tokenizer.encode(p)) for p in prompts))
    expected = model.generate(prompts, max_new_tokens=max_new)
    code = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "p = json.loads(sys.argv[2]); n = len(p)\n"
        "out = m.signatures['serving_default'](prompt=tf.constant(p),"
        " max_new_tokens=tf.fill([n], int(sys.argv[3])), temperature=tf.zeros([n]),"
        " top_k=tf.zeros([n], tf.int32), top_p=tf.ones([n]), seed=tf.zeros([n], tf.int32))\n"
        "print(json.dumps([t.decode('utf-8', 'replace') for t in out['text'].numpy()]))\n")
    proc = subprocess.run([sys.executable, "-c", code, path, json.dumps(prompts), str(max_new)],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        raise ExportError("the exported SavedModel failed to load or run in a fresh process: "
                          + _child_failure(proc))
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got != expected:
        raise ExportError(f"SavedModel greedy output differs from CausalLM.generate: "
                          f"{got!r} != {expected!r}")
    return got


def _chat_signatures(config, decoder):
    """`(chat entry, signatures)` of a run with a usable chat template, else (None, {}).
    A template the graph cannot apply is reported and left out, not fatal."""
    try:
        chat = usable_chat_config(config, decoder.tokenizer)
        if chat is None:
            return None, {}
        return chat, chat_signatures(decoder, chat)
    except ChatTemplateError as e:
        print(f"note: no chat signatures: {e}", file=sys.stderr)
        return None, {}


def verify_chat(path, model, chat, messages=SAMPLE_MESSAGES[:2], max_new_tokens=16):
    """Greedy `chat` and `chat_with_system` replies of a fresh-process reload must equal
    `tfllm chat`'s first replies. The reply length is cut to what the context leaves after
    the longest sample prompt (a short-context run is checked on fewer tokens)."""
    from tfllm.chat import ChatSession

    from tfllm.errors import TfllmError

    system = "Be brief."
    context = model.backbone.max_len
    lengths = {}
    for message in messages:  # the prompt's tokens with and without the system text
        for sys_text in (None, system):
            session = ChatSession(model, chat, sys_text, max_new_tokens=1)
            turns = session.history + [{"role": "user", "content": message}]
            try:
                size = len(session.prompt_ids(turns)[0])
            except TfllmError:  # longer than the context
                size = context
            lengths[message] = max(lengths.get(message, 0), size)
    messages = [m for m in messages if lengths[m] < context]
    if not messages:
        raise ExportError(f"the chat check's sample messages do not fit the context of "
                          f"{context} tokens with the template; export with a longer "
                          "--max-len")
    max_new_tokens = min(max_new_tokens, context - max(lengths[m] for m in messages))
    n = len(messages)
    sampling = {"max_new_tokens": [max_new_tokens] * n, "temperature": [0.0] * n,
                "top_k": [0] * n, "top_p": [1.0] * n, "seed": [0] * n}
    got_plain, got_system = _fresh_process_outputs(path, [
        ("chat", "text", {"message": list(messages), **sampling}),
        ("chat_with_system", "text", {"message": list(messages), "system": [system] * n,
                                      **sampling})])
    for got, sys_text in ((got_plain, None), (got_system, system)):
        expected = expected_replies(model, chat, messages, max_new_tokens, sys_text)
        if got.tolist() != expected:
            raise ExportError(f"SavedModel chat reply differs from tfllm chat: "
                              f"{got.tolist()!r} != {expected!r}")


def _child_failure(proc) -> str:
    """One line of a failed fresh-process check: its last error line, not its traceback."""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()
             and not line.startswith((" ", "Traceback", "I0000", "W0000", "E0000"))]
    return (lines[-1] if lines else f"exit status {proc.returncode}")[:300]


SAMPLE_TEXTS = ["a gripping , funny and moving film", "dull and lifeless", "x",
                "it is what it is"]


SAMPLE_PAIRS = ["a film", "it is not", "x", "what it is and what it is not"]


def verify_classifier(run_dir, path, texts=SAMPLE_TEXTS, model=None):
    """Labels and probabilities of a fresh-process reload must match the Keras classifier
    (on sample pairs too, for pair classifiers and imported ones)."""
    import numpy as np

    from tfllm.finetuning import load_classifier, pair_mode, predict_proba

    if model is None:
        model, _ = load_classifier(run_dir)
    task = runs.read_run_config(run_dir)["task"]
    mode = pair_mode(task)
    checks = []  # (signature, pairs or None)
    if mode is not True:
        checks.append(("classify", None))
    if mode is not False:
        checks.append(("classify" if mode else "classify_pair", SAMPLE_PAIRS[:len(texts)]))
    calls = [(signature, "probabilities",
              {"text": texts, **({"text_pair": pairs} if pairs is not None else {})})
             for signature, pairs in checks]
    for (signature, pairs), got in zip(checks, _fresh_process_outputs(path, calls)):
        expected = predict_proba(model, task, texts, pairs=pairs)
        if not np.array_equal(got.argmax(1), expected.argmax(1)) or \
                not np.allclose(got, expected, atol=1e-4):
            raise ExportError(f"SavedModel {signature} output differs from the Keras "
                              f"classifier: {got.tolist()} != {expected.tolist()}")
    return got


def _fresh_process_outputs(path, calls):
    """Outputs of SavedModel signatures, loaded once in a fresh process (as TF Serving
    loads it: nothing of this process's state helps). `calls`: a list of
    (signature, output name, {input name: list of values}); string outputs come back
    as str."""
    import numpy as np

    code = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "got = []\n"
        "for sig, name, kw in json.loads(sys.argv[2]):\n"
        "    out = m.signatures[sig](**{k: tf.constant(v) for k, v in kw.items()})\n"
        "    v = out[name].numpy()\n"
        "    got.append([x.decode('utf-8', 'replace') for x in v.tolist()]"
        " if v.dtype == object else v.tolist())\n"
        "print(json.dumps(got))\n")
    proc = subprocess.run([sys.executable, "-c", code, path, json.dumps(calls)],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        raise ExportError("the exported SavedModel failed to load or run in a fresh process: "
                          + _child_failure(proc))
    return [np.array(g) for g in json.loads(proc.stdout.strip().splitlines()[-1])]


def verify_embeddings(path, model, texts=SAMPLE_TEXTS):
    """Embeddings of a fresh-process reload must equal `tfllm embed`'s (within 1e-4)."""
    import numpy as np

    from tfllm.embeddings import embed_texts

    expected = embed_texts(model, texts)
    got, = _fresh_process_outputs(path, [("embed", "embedding", {"text": texts})])
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
        raise ExportError(f"SavedModel embed output {got.shape} differs from tfllm embed's "
                          f"{expected.shape} (or by more than 1e-4)")
    return got


def describe_signatures(path):
    """Lines describing each signature's inputs and outputs."""
    loaded = tf.saved_model.load(path)
    lines = []
    for name, fn in sorted(loaded.signatures.items()):
        inputs = fn.structured_input_signature[1]
        ins = ", ".join(f"{k} {v.dtype.name}{v.shape.as_list()}" for k, v in sorted(inputs.items()))
        outs = ", ".join(f"{k} {v.dtype.name}{v.shape.as_list()}"
                         for k, v in sorted(fn.structured_outputs.items()))
        lines.append(f"  {name}({ins}) -> {outs}")
    return lines


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main("export.saved_model", _main, args)


def _main(args):
    path = export_saved_model(args.run, args.out, args.name, args.version,
                              jit_compile=not args.no_jit, verify=not args.no_verify,
                              overwrite=args.overwrite, max_batch=args.max_batch,
                              max_len=args.max_len)
    print(f"SavedModel written to {path}")
    if not args.no_verify:
        task = runs.read_run_config(args.run).get("objective", "clm")
        print("verified: a fresh process gives the same " + {
            "classify": "probabilities as the Keras classifier",
            "encoder": "embeddings as tfllm embed",
            "seq2seq": "translations as Seq2SeqLM.generate (greedy and beam 2)"}.get(
                task, "greedy text as CausalLM.generate"))
    print("signatures:")
    print("\n".join(describe_signatures(path)))


if __name__ == "__main__":
    sys.exit(main())
