"""Placeholder protection around translation: the Python and graph versions agree."""

import tensorflow as tf

from tfllm.tokenizers.placeholders import protect, protect_tf, restore, restore_tf


def test_placeholder_protection_python_and_graph_agree():
    sources = ["cannot open %s (100%%)", "100%%d %1$s and %2$s {name}", "no placeholder",
               "%s", "", "%%%s:%-10s%lu"]
    protected = [protect(t) for t in sources]
    assert protected == ["cannot open ⟦ph⟧ (100%%)", "100%%d ⟦ph⟧ and ⟦ph⟧ ⟦ph⟧",
                         "no placeholder", "⟦ph⟧", "", "%%⟦ph⟧:⟦ph⟧⟦ph⟧"]
    assert [t.decode() for t in protect_tf(tf.constant(sources)).numpy()] == protected
    # Restoring what protect made gives the source back; outputs with fewer or more
    # sentinels than the source has placeholders keep what they have, invent nothing.
    assert [restore(p, t) for p, t in zip(protected, sources)] == sources
    outputs = ["impossible ⟦ph⟧ x", "a ⟦ph⟧ ⟦ph⟧ b ⟦ph⟧ ⟦ph⟧ ⟦ph⟧", "⟦ph⟧ de trop", "⟦ph⟧",
               "", "⟦ph⟧"]
    expected = ["impossible %s x", "a %1$s %2$s b {name}  ", " de trop", "%s", "", "%s"]
    assert [restore(o, t) for o, t in zip(outputs, sources)] == expected
    assert [t.decode() for t in restore_tf(tf.constant(outputs),
                                           tf.constant(sources)).numpy()] == expected
    assert [t.decode() for t in restore_tf(tf.constant(protected),
                                           tf.constant(sources)).numpy()] == sources
