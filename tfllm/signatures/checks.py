"""What every task's SavedModel signatures share: in-graph request checks that run before
anything that grows with an input, byte limits of strings, and the fresh-process check of a
written SavedModel (TF Serving loads it so: nothing of the exporting process helps).

An out-of-range input fails the request with InvalidArgument "assertion failed: [the
message]" naming the input and its limit (README, "Limits and errors").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.models.generation import prompt_room

_MIN_BUCKET = 8
# Most rows one request may carry by default (export/options.py offers it to the CLI).
DEFAULT_MAX_BATCH = 64


class ExportError(TfllmError):
    """The export failed or its output disagrees with the Keras model."""


def prompt_bucket(longest, room, max_len):
    """Smallest power of two >= longest (at least 8), capped so `room` new tokens still fit."""
    p = tf.maximum(longest, _MIN_BUCKET)
    p = tf.cast(2 ** tf.math.ceil(tf.math.log(tf.cast(p, tf.float32)) / tf.math.log(2.0)),
                tf.int32)
    return tf.maximum(longest, tf.minimum(p, prompt_room(max_len, room)))


def require(condition, message):
    """An in-graph check whose failure is InvalidArgument "assertion failed: [message]"."""
    return tf.debugging.Assert(condition, [tf.constant(message)])


def after(checks, *tensors):
    """`tensors`, usable only once every check has passed: work that scales with an
    input (tokenizing, padding, the cache, the loop) never starts on a rejected request."""
    with tf.control_dependencies(checks):
        out = tuple(tf.identity(t) for t in tensors)
    return out if len(out) > 1 else out[0]


def text_checks(limit, **texts):
    """Every string of each named input is at most `limit` bytes (`max_text_bytes`): checked
    before tokenizing, so a huge string is refused in milliseconds."""
    return [require(tf.reduce_all(tf.strings.length(t) <= limit),
                     f"{name} longer than {limit} bytes; the model's context cannot hold it")
            for name, t in texts.items()]


def cut_text(text, limit):
    """Strings of more than `limit` bytes cut to `limit` (a character cut in two dropped):
    classifiers and encoders keep only a context's worth of tokens anyway."""
    long = tf.strings.length(text) > limit
    cut = tf.strings.unicode_transcode(tf.strings.substr(text, 0, limit), "UTF-8", "UTF-8",
                                       errors="ignore")
    return tf.where(long, cut, text)


def batch_checks(max_batch, first, *others):
    """Every input has the same batch size, from 1 to `max_batch`."""
    batch = tf.shape(first)[0]
    checks = [require(tf.logical_and(batch >= 1, batch <= max_batch),
                       f"the batch must hold 1 to {max_batch} rows")]
    for name, t in others:
        checks.append(require(tf.equal(tf.shape(t)[0], batch),
                               f"{name} must have one value per row"))
    return checks


def fresh_process_outputs(path, calls):
    """Outputs of SavedModel signatures, loaded once in a fresh process (as TF Serving
    loads it: nothing of this process's state helps). `calls`: a list of
    (signature, output name, {input name: list of values}); string outputs come back
    as str."""
    import numpy as np

    code = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "got = []\n"
        "def values(v):\n"
        "    v = v.numpy()\n"
        "    return [x.decode('utf-8', 'replace') for x in v.tolist()] if v.dtype == object"
        " else v.tolist()\n"
        "for sig, name, kw in json.loads(sys.argv[2]):\n"
        "    out = m.signatures[sig](**{k: tf.constant(v) for k, v in kw.items()})\n"
        "    got.append({n: values(out[n]) for n in name} if isinstance(name, list)"
        " else values(out[name]))\n"
        "print(json.dumps(got))\n")
    proc = subprocess.run([sys.executable, "-c", code, path, json.dumps(calls)],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        raise ExportError("the exported SavedModel failed to load or run in a fresh process: "
                          + child_failure(proc))
    return [{k: np.array(v) for k, v in g.items()} if isinstance(g, dict) else np.array(g)
            for g in json.loads(proc.stdout.strip().splitlines()[-1])]


def schema_budget(model, name, schema, room, max_new_tokens):
    """`answer_budget` of a JSON schema's signature."""
    from tfllm.models.generation import constraint_of

    shortest = constraint_of(model, json_schema=schema).shortest_completion()
    return answer_budget(shortest, f"JSON schema {name!r}", room, max_new_tokens)


def answer_budget(shortest, what, room, max_new_tokens):
    """New tokens a check gives a constrained signature: room for the answer the model
    prefers (twice the `shortest`, at least `max_new_tokens`) within the `room` the
    check's prompts leave; ExportError where not even the shortest answer fits (`what`:
    the constraint, for the message)."""
    if shortest > room:
        raise ExportError(f"the shortest answer of {what} takes {shortest} tokens; the "
                          f"check's prompts leave {room} in the context: export with a "
                          "longer --max-len")
    return min(room, max(max_new_tokens, 2 * shortest))


def verify_outputs(path, checks):
    """Run every check in one fresh process (one load: TF Serving's view of the files);
    `checks`: [(signature, {input: values}, expected texts, what gave them)], the expected
    texts those of the `text` output, or {output: values} for several outputs. Returns
    each check's `text` values."""
    got = fresh_process_outputs(path, [
        (sig, list(want) if isinstance(want, dict) else "text", inputs)
        for sig, inputs, want, _ in checks])
    for (sig, _, want, source), outputs in zip(checks, got):
        if not isinstance(want, dict):
            want, outputs = {"text": want}, {"text": outputs}
        for name, values in want.items():
            if outputs[name].tolist() != values:
                raise ExportError(f"SavedModel {sig} greedy {name} differs from {source}: "
                                  f"{outputs[name].tolist()!r} != {values!r}")
    return [g["text"] if isinstance(g, dict) else g for g in got]


def child_failure(proc) -> str:
    """One line of a failed fresh-process check: its last error line, not its traceback."""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()
             and not line.startswith((" ", "Traceback", "I0000", "W0000", "E0000"))]
    return (lines[-1] if lines else f"exit status {proc.returncode}")[:300]
