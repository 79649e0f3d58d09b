"""Translating with a `Seq2SeqLM`: one encoder pass, then a cached decoder loop.

The encoder runs once per request and each decoder block's cross-attention keys and
values are computed from its output once (`Seq2SeqBackbone.project_context`); the loop
then feeds one token per step through the decoder's self-attention KV cache, inside a
`tf.while_loop` compiled with XLA per (batch bucket, source-length bucket, beams).
Greedy and sampled decoding share `tfllm.models.generation.sample_next` with the causal LM;
beam search is `tfllm.models.beam_search.beam_search`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfllm.tokenizers import placeholders
from tfllm.models.beam_search import beam_search
from tfllm.models.generation import GenerationError, GenerationParams, row_seeds, sample_next


def check_num_beams(num_beams) -> int:
    """`num_beams` as an int >= 1, else a GenerationError naming it."""
    if isinstance(num_beams, bool) or not isinstance(num_beams, (int, np.integer)) or \
            num_beams < 1:
        raise GenerationError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    return int(num_beams)



# The narrowest padded batch width (decoding batches and translation training's buckets).
MIN_WIDTH = 8

def bucket_widths(max_len: int) -> list[int]:
    """Padded widths: 8, 12, 16, 24, 32, 48, ... (steps of 1.5x and 2x), up to `max_len`.

    Example:
        >>> bucket_widths(64)
        [8, 12, 16, 24, 32, 48, 64]
    """
    widths, w = [], MIN_WIDTH
    while w < max_len:
        widths += [w, w * 3 // 2] if w * 3 // 2 < max_len else [w]
        w *= 2
    return sorted(set(widths + [max_len]))

class Translator:
    """Cached, XLA-compiled decoding for a `Seq2SeqLM` (source ids in, target ids out).

    Args:
        model: a `Seq2SeqLM`.
        bos_id, end_id: the decoder's start token and the token that ends a row.
        jit_compile: compile the loops with XLA.

    Example:
        >>> tr = Translator(mt, bos_id=2, end_id=3)  # doctest: +SKIP
        >>> tr.translate_ids([[17, 40, 3]], max_new_tokens=20, num_beams=4)  # doctest: +SKIP
    """

    def __init__(self, model, bos_id, end_id, jit_compile: bool = True):
        self.model = model
        self.bos_id, self.end_id = int(bos_id), int(end_id)
        self.max_len = int(model.backbone.max_len)
        self._greedy = tf.function(self._greedy_graph, jit_compile=jit_compile)
        self._beam = tf.function(self._beam_graph, jit_compile=jit_compile)

    # -- graph functions (also what the SavedModel export traces) ---------------------------
    def encode(self, source):
        """`(context_kv, source_mask)` of source ids (batch, src_len), right-padded with 0."""
        bb = self.model.backbone
        mask = self.model.source_mask(source)
        return bb.project_context(bb.encode(source, mask)), mask

    def decode_step(self, token, caches, step, context_kv, source_mask):
        """Logits (batch, vocab) of the next token after `token` (batch,) at `step`."""
        bb = self.model.backbone
        hidden, caches = bb.decode(token[:, None], source_mask=source_mask,
                                   context_kv=context_kv, caches=caches, cache_index=step)
        return tf.cast(bb.logits(hidden)[:, -1, :], tf.float32), caches

    def _greedy_graph(self, source, max_new, temperature, top_k, top_p, seeds):
        context_kv, mask = self.encode(source)
        batch = tf.shape(source)[0]
        caches = self.model.backbone.empty_caches(batch)
        end = tf.constant(self.end_id, tf.int32)

        def cond(step, token, caches, done, out, n):
            return tf.logical_and(step < max_new, tf.logical_not(tf.reduce_all(done)))

        def body(step, token, caches, done, out, n):
            logits, caches = self.decode_step(token, caches, step, context_kv, mask)
            token = sample_next(logits, temperature, top_k, top_p, seeds, step)
            token = tf.where(done, end, token)
            at_step = tf.one_hot(step, self.max_len, on_value=True, off_value=False,
                                 dtype=tf.bool)
            out = tf.where(at_step[None, :], token[:, None], out)
            n = n + tf.cast(tf.logical_not(done), tf.int32)
            done = tf.logical_or(done, tf.equal(token, end))
            return step + 1, token, caches, done, out, n

        _, _, _, _, out, n = tf.while_loop(
            cond, body, (tf.constant(0), tf.fill([batch], tf.constant(self.bos_id)), caches,
                         tf.zeros([batch], tf.bool), tf.fill([batch, self.max_len], end),
                         tf.zeros([batch], tf.int32)),
            maximum_iterations=self.max_len)
        return out, n

    def _beam_graph(self, source, max_new, num_beams, length_penalty):
        context_kv, mask = self.encode(source)
        batch = tf.shape(source)[0]
        # Every beam of a row reads the same source: its keys/values repeated per beam.
        context_kv = tf.nest.map_structure(lambda x: tf.repeat(x, num_beams, axis=0),
                                           context_kv)
        mask = tf.repeat(mask, num_beams, axis=0)
        caches = self.model.backbone.empty_caches(batch * num_beams)

        def step_fn(tokens, caches, step):
            return self.decode_step(tokens, caches, step, context_kv, mask)

        out, lengths, _ = beam_search(step_fn, caches, self.bos_id, batch, num_beams, max_new,
                                      self.end_id, length_penalty, max_len=self.max_len)
        return out, lengths

    # -- host side ----------------------------------------------------------------------
    def _pack(self, sources: Sequence[Sequence[int]]):
        if not sources:
            raise GenerationError("no source texts given")
        longest = max(len(s) for s in sources)
        if longest > self.max_len:
            raise GenerationError(f"a source is {longest} tokens, more than the model's "
                                  f"context of {self.max_len}; shorten it or pass truncate")
        width = next(w for w in bucket_widths(self.max_len) if w >= longest)
        batch = 1 << (len(sources) - 1).bit_length()  # batch bucket: next power of two
        ids = np.zeros((batch, width), np.int32)
        for i, s in enumerate(sources):
            ids[i, :len(s)] = s
        ids[len(sources):] = ids[0]  # filler rows: copies of row 0
        return tf.constant(ids)

    def translate_ids(self, sources, max_new_tokens=None, num_beams=1, length_penalty=1.0,
                      params: GenerationParams | None = None):
        """Target ids (without the end token) for source-id lists (each ending in EOS).

        Args:
            sources: token-id lists.
            max_new_tokens: at most this many target tokens (default: the context).
            num_beams: 1 for greedy/sampled decoding, more for beam search.
            length_penalty: beam search's length exponent.
            params: sampling parameters for num_beams=1 (default greedy).
        """
        num_beams = check_num_beams(num_beams)
        max_new = self.max_len if max_new_tokens is None else max_new_tokens
        params = params or GenerationParams(max_new)
        if not 1 <= max_new <= self.max_len:
            raise GenerationError(f"max_new_tokens must be in [1, {self.max_len}] (the "
                                  f"model's context), got {max_new}")
        ids = self._pack(sources)
        batch = ids.shape[0]
        if num_beams == 1:
            out, n = self._greedy(
                ids, tf.constant(max_new),
                tf.fill([batch], tf.constant(float(params.temperature), tf.float32)),
                tf.fill([batch], tf.constant(int(params.top_k or 0), tf.int32)),
                tf.fill([batch], tf.constant(float(params.top_p or 1.0), tf.float32)),
                tf.constant(row_seeds(params.seed, batch)))
        else:
            if params.temperature > 0:
                raise GenerationError("beam search is deterministic: use temperature 0 "
                                      "with num_beams > 1, or num_beams 1 to sample")
            out, n = self._beam(ids, tf.constant(max_new), num_beams,
                                tf.constant(float(length_penalty), tf.float32))
        out, n = out.numpy(), n.numpy()
        results = []
        for i in range(len(sources)):
            row = out[i, :n[i]].tolist()
            if row and row[-1] == self.end_id:
                row = row[:-1]
            results.append(row)
        return results


def get_translator(model) -> Translator:
    """The model's Translator, made once per model (`Seq2SeqLM.translator`)."""
    return model.translator()


def encode_sources(tokenizer, texts, max_len, truncate=False, protect=False):
    """Source ids (each ending in EOS) of `texts`; a source over `max_len` tokens is a
    GenerationError naming it, or with `truncate` is cut. `protect`: placeholders become
    the sentinel first (a model trained with `protect_placeholders`)."""
    out = []
    for n, text in enumerate(texts):
        ids = tokenizer.encode(placeholders.protect(text) if protect else text)
        if len(ids) + 1 > max_len:
            if not truncate:
                raise GenerationError(
                    f"source {n + 1} is {len(ids) + 1} tokens with its end token, more than "
                    f"the model's context of {max_len}; shorten it or pass --truncate")
            ids = ids[: max_len - 1]
        out.append(ids + [tokenizer.eos_id])
    return out


def translate(model, texts, max_new_tokens=None, num_beams=1, length_penalty=1.0,
              temperature=0.0, top_k=None, top_p=None, seed=None, truncate=False,
              return_ids=False, batch_size=32, progress=False):
    """Translate strings with a trained `Seq2SeqLM` (its tokenizer attached).

    Args:
        model: a `Seq2SeqLM` from `tfllm.load`.
        texts: a string or a list of strings.
        max_new_tokens: target tokens at most (default: the model's context).
        num_beams: 1: greedy (or sampled with temperature > 0); more: beam search.
        length_penalty: beam search scores `log p / length ** length_penalty`.
        temperature, top_k, top_p, seed: sampling, as `CausalLM.generate`.
        truncate: cut sources longer than the context instead of raising.
        return_ids: also return the target ids.
        batch_size: sources decoded together.
        progress: show a progress bar (stderr) over the batches.

    Returns:
        The translations (a string for a string); with `return_ids`, `(texts, ids)`.

    Example:
        >>> mt = tfllm.load("runs/en-fr")  # doctest: +SKIP
        >>> translate(mt, "File not found", num_beams=4)  # doctest: +SKIP
        'Fichier introuvable'
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise GenerationError("translate needs the run's tokenizer: load the model with "
                              "tfllm.load(run_dir)")
    num_beams = check_num_beams(num_beams)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    max_new = model.backbone.max_len if max_new_tokens is None else max_new_tokens
    params = GenerationParams(max_new, temperature, top_k, top_p, seed)
    protect = getattr(model, "protect_placeholders", False)
    sources = encode_sources(tokenizer, texts, model.backbone.max_len, truncate, protect)
    tr = get_translator(model)
    # Sorted by length, so each batch pads to a near width.
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    ids = [None] * len(sources)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="translating", unit="batch", leave=False)
    for start in starts:
        chunk = order[start:start + batch_size]
        for i, row in zip(chunk, tr.translate_ids([sources[i] for i in chunk], max_new,
                                                  num_beams, length_penalty, params)):
            ids[i] = row
    out = [tokenizer.decode(row) for row in ids]
    if protect:
        out = [placeholders.restore(o, text) for o, text in zip(out, texts)]
    if single:
        out, ids = out[0], ids[0]
    return (out, ids) if return_ids else out
