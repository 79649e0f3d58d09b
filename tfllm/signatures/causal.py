"""The signatures every causal LM run gets (the lm and chat tasks): `generate`
(`serving_default`) and `score`, over one in-graph decoding loop with the request checks
of `tfllm.signatures.checks`, and their fresh-process check against `CausalLM.generate`.

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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tensorflow as tf

from tfllm.models.generation import fits, new_token_room
from tfllm.signatures.checks import (DEFAULT_MAX_BATCH, ExportError, after, batch_checks,
                                     child_failure, prompt_bucket, require, text_checks)
from tfllm.tokenizers import max_text_bytes

SAMPLE_PROMPTS = ["", "The ", "ROMEO:\n"]


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
        `text_bytes`) and the sampling inputs, to pass before tokenizing (`after`)."""
        max_len = self.max_len
        first, *others = list(texts.items())
        checks = batch_checks(self.max_batch, first[1], *others,
                               ("max_new_tokens", max_new_tokens),
                               ("temperature", temperature), ("top_k", top_k),
                               ("top_p", top_p), ("seed", seed))
        checks += text_checks(self.text_bytes, **texts)
        return checks + [
            require(tf.reduce_all(tf.logical_and(max_new_tokens >= 1,
                                                  fits(1, max_new_tokens, max_len))),
                     f"max_new_tokens must be from 1 to {max_len - 1} (the model context of "
                     f"{max_len} tokens less the prompt)"),
            require(tf.reduce_all(tf.logical_and(tf.math.is_finite(temperature),
                                                  temperature >= 0.0)),
                     "temperature must be a finite number >= 0 (0 = greedy)"),
            require(tf.reduce_all(top_k >= 0), "top_k must be >= 0 (0 = off)"),
            require(tf.reduce_all(tf.logical_and(top_p > 0.0, top_p <= 1.0)),
                     "top_p must be > 0 and <= 1 (1 = off)"),
        ]

    @staticmethod
    def after(checks, *tensors):
        """`tensors`, usable once every check has passed (see `after`)."""
        return after(checks, *tensors)

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
        fitting = require(fits(longest, room, max_len),
                          f"prompt tokens + max_new_tokens exceed the model context of "
                          f"{max_len} tokens")
        longest, room = after([fitting], longest, room)
        bucket = prompt_bucket(longest, room, max_len)
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
        prompt, max_new_tokens = after(checks, prompt, max_new_tokens)
        # The in-graph tokenizer (+ BOS where the checkpoint adds one).
        return decoder.decode(tokenizer.tokenize(prompt), max_new_tokens, temperature, top_k,
                              top_p, seed)

    def score(text):
        text = after(batch_checks(max_batch, text) + text_checks(text_bytes, text=text),
                      text)
        ids = tokenizer.tokenize(text)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        longest = tf.reduce_max(lengths)
        fits = require(longest <= max_len,
                        f"text longer than the model context of {max_len} tokens")
        longest = after([fits], longest)
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


def verify_saved_model(run_dir, path, prompts=SAMPLE_PROMPTS, max_new_tokens=16, model=None):
    """Greedy text from a fresh-process reload must equal CausalLM.generate.

    `model`: the run's already-loaded CausalLM (loaded here if None).
    """
    if model is None:
        from tfllm import runs

        model = runs.load(run_dir)
    max_new = min(max_new_tokens, new_token_room(
        model.backbone.max_len, max(len(model.tokenizer.encode(p)) for p in prompts)))
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
                          + child_failure(proc))
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got != expected:
        raise ExportError(f"SavedModel greedy output differs from CausalLM.generate: "
                          f"{got!r} != {expected!r}")
    return got


def signatures(model, config, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
    """`(signatures, check)` of a causal LM run (the lm and chat tasks' SavedModel hook):
    `generate` and `score`, and where the run (`config`: its config.json) has a usable chat
    template, `chat` and `chat_with_system`. `check(path, run_dir)` verifies a written
    SavedModel in a fresh process against `CausalLM.generate` and `tfllm chat`."""
    from tfllm.signatures.chat import chat_signatures, verify_chat
    from tfllm.tokenizers.chat_template import ChatTemplateError, usable_chat_config

    decoder = CausalDecoder(model, model.tokenizer, jit_compile, max_batch)
    sigs = causal_lm_signatures(model, model.tokenizer, jit_compile, max_batch, decoder)
    try:
        chat = usable_chat_config(config, model.tokenizer)
        if chat is not None:
            sigs.update(chat_signatures(decoder, chat))
    except ChatTemplateError as e:  # a template the graph cannot apply: noted, not fatal
        print(f"note: no chat signatures: {e}", file=sys.stderr)
        chat = None

    def check(path, run_dir):
        verify_saved_model(run_dir, path, model=model)
        if chat is None:
            return "greedy text as CausalLM.generate"
        verify_chat(path, model, chat)
        return "greedy text as CausalLM.generate and chat replies as tfllm chat"

    return sigs, check
