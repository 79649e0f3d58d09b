"""Format placeholders of program messages (`%s`, `%1$s`, `%(name)s`, `{name}`): finding them,
and protecting them through translation.

A translation of a message must keep its placeholders exactly, and a small model copies
`%-10s` or `{filename}` token by token unreliably. Protection replaces every placeholder
with one sentinel token (`SENTINEL`, a single piece of the run's tokenizer) on both sides
for training and in the source when translating, then puts the source's placeholders back
into the output's sentinels, in source order. The model then only has to place (and count)
one token. In-order restoration is what printf needs for unnumbered conversions; numbered
ones (`%1$s`) and named ones may be written in any order.

The same steps exist twice: in Python (training data, `translate`, the TFLite and ONNX
runners) and as TensorFlow ops (`protect_tf`, `restore_tf`) for the SavedModel
`translate` signature; tests check that both agree.
"""

from __future__ import annotations

import re
from collections import Counter

SENTINEL = "⟦ph⟧"

# printf conversions (with positions, flags, width, precision, length: %s, %1$s, %-10s,
# %.2f, %lu, %'d), Python's %(name)s, and brace fields ({name}, {0}, {}). "%%" is a literal
# percent sign: it is matched first so that "100%%d" is not read as a "%d". RE2-compatible,
# for the TensorFlow ops.
_PLACEHOLDER_SOURCE = (
    r"%(?:\d+\$)?(?:\([A-Za-z_][A-Za-z0-9_]*\))?[-+0#']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
    r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcCsSpn]"
    r"|\{[A-Za-z0-9_.\[\]:!<>^=+\-# ]*\}")
_PATTERN_SOURCE = r"%%|" + _PLACEHOLDER_SOURCE
_PATTERN = re.compile(_PATTERN_SOURCE)


def find(text: str) -> list[str]:
    """The placeholders of `text`, in order ("%%" is not one).

    Example:
        >>> find("%s: cannot open '%1$s' ({name}, 100%%)")
        ['%s', '%1$s', '{name}']
    """
    return [m for m in _PATTERN.findall(text) if m != "%%"]


def placeholders(text: str) -> Counter:
    """The placeholders of a message as a multiset (a translation may reorder them:
    `%1$s` exists for that).

    Example:
        >>> sorted(placeholders("%s: cannot open '%1$s' ({name}, 100%%)").elements())
        ['%1$s', '%s', '{name}']
    """
    return Counter(find(text))


def protect(text: str) -> str:
    """`text` with each placeholder replaced by `SENTINEL` ("%%" kept).

    Example:
        >>> protect("cannot open %s (100%%)")
        'cannot open ⟦ph⟧ (100%%)'
    """
    return _PATTERN.sub(lambda m: m.group() if m.group() == "%%" else SENTINEL, text)


def restore(output: str, source: str) -> str:
    """`output` with its sentinels replaced by `source`'s placeholders in order.

    A sentinel beyond the source's placeholders is dropped; placeholders beyond the
    output's sentinels are left out (the translation then fails placeholder checks, as it
    should: nothing is invented).

    Example:
        >>> restore("impossible d'ouvrir ⟦ph⟧", "cannot open %s")
        "impossible d'ouvrir %s"
    """
    found = find(source)
    pieces = output.split(SENTINEL)
    out = [pieces[0]]
    for i, piece in enumerate(pieces[1:]):
        out += [found[i] if i < len(found) else "", piece]
    return "".join(out)


def _park_percent(texts):
    # RE2 has no lookbehind: "%%" is parked on a character a message cannot hold (NUL), so
    # no placeholder match can start inside it, and put back afterwards.
    import tensorflow as tf

    return tf.strings.regex_replace(texts, "%%", "\x00")


def protect_tf(texts):
    """`protect` of a string tensor, as TensorFlow ops (any shape)."""
    import tensorflow as tf

    masked = tf.strings.regex_replace(_park_percent(texts), _PLACEHOLDER_SOURCE, SENTINEL)
    return tf.strings.regex_replace(masked, "\x00", "%%")


def restore_tf(outputs, sources):
    """`restore` of string tensors `[batch]`, as core TensorFlow ops (no tf-text: TF
    Serving and TFLite builds carry their own)."""
    import tensorflow as tf

    outputs = tf.convert_to_tensor(outputs, tf.string)
    # Each placeholder wrapped in \x01 marks; split on them, the odd pieces are the
    # placeholders in order (adjacent ones leave empty even pieces between them).
    marked = tf.strings.regex_replace(_park_percent(sources), _PLACEHOLDER_SOURCE,
                                      "\x01\\0\x01")
    split = tf.strings.split(marked, "\x01")  # (batch, None)

    def one(i):
        found = split[i][1::2]
        pieces = tf.strings.split(outputs[i], SENTINEL)  # (sentinels + 1,)
        n = tf.size(pieces) - 1
        fill = tf.concat([found[:n], tf.fill([tf.maximum(n - tf.size(found), 0)], "")], 0)
        # piece 0, fill 0, piece 1, fill 1, ..., piece n
        woven = tf.reshape(tf.stack([pieces[:n], fill], axis=1), [-1])
        return tf.strings.reduce_join(tf.concat([woven, pieces[n:]], 0))

    return tf.map_fn(one, tf.range(tf.shape(outputs)[0]),
                     fn_output_signature=tf.TensorSpec([], tf.string))
