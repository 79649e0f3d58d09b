"""Special-token handling the tokenizer kinds share."""

import tensorflow as tf


def prepend_bos(ids, bos_id: int):
    """`bos_id` before every row of `ids`: (n,) -> (n + 1,), ragged (batch, None) likewise.

    For checkpoints whose tokenizers add BOS themselves (Llama, Mistral), in-graph, so the
    SavedModel and Keras see the same ids.
    """
    if isinstance(ids, tf.RaggedTensor):
        bos = tf.fill([ids.nrows(), 1], tf.constant(bos_id, ids.dtype))
        return tf.concat([bos, ids], axis=1)
    return tf.concat([tf.constant([bos_id], ids.dtype), ids], 0)
