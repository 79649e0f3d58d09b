"""The classify task's batches: `(inputs, label ids)`, rows bucketed by length."""

from __future__ import annotations

import tensorflow as tf

from tfllm.data.windows import training_options
from tfllm.errors import DataError
from tfllm.tokenizers.packing import pack

_BUCKET = 16


def label_ids(labels, class_names) -> list[int]:
    """Map label names to ids; DataError listing any label the model never saw."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:20])
        raise DataError(f"labels the model never saw: {shown}"
                        f"{' ...' if len(unknown) > 20 else ''}; it knows {class_names}")
    return [index[label] for label in labels]


def make_classification_dataset(tokenizer, texts, labels, seq_len, add_bos, batch_size,
                                training, seed=0, pairs=None):
    """`(inputs, label ids)` batches; training data is shuffled and repeats forever.

    Rows are batched with others of similar length and padded to their bucket (multiples
    of 16 tokens, then seq_len): short texts such as SST-2's phrases then cost a fraction
    of full-length padding, and XLA sees only a few shapes.
    """
    columns = [tf.constant(texts, tf.string)]
    if pairs is not None:
        columns.append(tf.constant(pairs, tf.string))
    ds = tf.data.Dataset.from_tensor_slices((tuple(columns), tf.constant(labels, tf.int32)))
    if training:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True).repeat()

    def encode(columns, label):
        ids, types = pack(tokenizer, columns[0], seq_len, add_bos,
                          columns[1] if pairs is not None else None)
        return ids, types, label

    # Tokenized a few hundred rows at a time (one op call each), then one row per element
    # again for bucketing.
    ds = ds.batch(256).map(encode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    ds = ds.map(lambda ids, types, y: (ids, types, tf.ones_like(ids, tf.bool), y))
    # A length < boundary goes to that bucket, padded to boundary - 1.
    boundaries = sorted({*range(_BUCKET + 1, seq_len + 1, _BUCKET), seq_len + 1})
    ds = ds.bucket_by_sequence_length(
        lambda ids, types, mask, label: tf.shape(ids)[0], boundaries,
        [batch_size] * (len(boundaries) + 1), padded_shapes=([None], [None], [None], []),
        padding_values=(tokenizer.pad_id, 0, False, 0), pad_to_bucket_boundary=True,
        drop_remainder=training)

    def as_inputs(ids, types, mask, y):
        inputs = {"token_ids": ids, "padding_mask": mask}
        if pairs is not None:
            inputs["token_type_ids"] = types
        return inputs, y

    ds = ds.map(as_inputs)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(training_options())
