"""The translate task's pretraining hooks (`tfllm.training.pretrain`): (source, target)
pairs of a table, one joint vocabulary, length-bucketed batches."""

from __future__ import annotations

import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.errors import DataError
from tfllm.tokenizers import placeholders


class TranslatePretraining:
    """Args: the task's options (see `tfllm.tasks.train`).

        source_column, target_column: the two sides of the parallel data (see
            `tfllm.data.parallel.ParallelData`).
        label_smoothing: of the cross-entropy (0.1, the Transformer's).
        truncate: cut pairs longer than the context instead of failing.
        protect_placeholders: train with format placeholders (`%s`, `{name}`) replaced by
            one sentinel token, which translation puts back
            (`tfllm.tokenizers.placeholders`); a model then keeps them far more reliably.
    """

    objective = "seq2seq"

    def __init__(self, source_column=None, target_column=None, label_smoothing=0.1,
                 truncate=False, protect_placeholders=True):
        from tfllm.training import check_number

        check_number("--label-smoothing", label_smoothing, low=0.0, high=0.99)
        if not target_column:
            raise ConfigError("--objective seq2seq needs --source-column and --target-column "
                              "(e.g. --source-column en --target-column fr)")
        self.source_column, self.target_column = source_column, target_column
        self.label_smoothing, self.truncate = label_smoothing, truncate
        self.protect_placeholders = protect_placeholders

    def check_preset(self, config, preset):
        if not config.is_seq2seq:
            raise ConfigError(f"preset {preset!r} is not an encoder-decoder; --objective "
                              "seq2seq needs an encoder-decoder preset (e.g. "
                              "transformer-mt-small)")

    def matches(self, stored) -> bool:
        return stored.get("objective") == self.objective

    def read(self, data, settings, text_feature, tfds_manual_dir, tfds_data_dir):
        from tfllm.data.parallel import ParallelData

        return ParallelData(data, self.source_column, self.target_column, settings.seed,
                            tfds_manual_dir, tfds_data_dir)

    def tokenizer_texts(self, corpus):
        # A joint vocabulary of both sides, as the model sees them.
        return (placeholders.protect(text) if self.protect_placeholders else text
                for pair in corpus.train for text in pair)

    def tokenizer_options(self) -> dict:
        return {"user_symbols": [placeholders.SENTINEL] if self.protect_placeholders else ()}

    def prepare(self, corpus, tokenizer, max_len, verbose):
        from tfllm.tasks.translate.data import encode_pairs

        self.train_pairs, cut = encode_pairs(corpus.train, tokenizer, max_len, self.truncate,
                                             self.protect_placeholders)
        self.val_pairs, val_cut = encode_pairs(corpus.val, tokenizer, max_len, self.truncate,
                                               self.protect_placeholders)
        if not self.val_pairs:
            raise DataError(f"{corpus.describe()['spec']} has too few pairs to hold some out "
                            "for validation")
        if verbose:
            print(f"{len(self.train_pairs)} training pairs, {len(self.val_pairs)} validation "
                  "pairs"
                  + (f"; {corpus.skipped_empty} rows with an empty side skipped"
                     if corpus.skipped_empty else "")
                  + (f"; {cut + val_cut} long rows cut (--truncate)" if cut + val_cut else ""))

    def static_shapes(self, strategy) -> bool:
        # Seq2seq batches vary in width. XLA would compile one train step per width and
        # fixed widths pad more than padding each batch to its longest pair, so on CPUs
        # and GPUs a plain graph with dynamic widths trains more pairs per minute
        # (benchmarks/README.md, "Fixed or dynamic widths"). TPUs need static shapes.
        return isinstance(strategy, tf.distribute.TPUStrategy)

    def datasets(self, corpus, tokenizer, max_len, global_batch, seed, static_shapes):
        from tfllm.tasks.translate.data import make_seq2seq_dataset

        train = make_seq2seq_dataset(self.train_pairs, tokenizer, max_len, global_batch,
                                     training=True, seed=seed, static_shapes=static_shapes)
        val = make_seq2seq_dataset(self.val_pairs, tokenizer, max_len, global_batch,
                                   training=False)
        # Real (unpadded) source and target tokens of an average step, for tokens/sec.
        tokens = global_batch * sum(len(s) + len(t) + 1 for s, t in self.train_pairs) \
            / len(self.train_pairs)
        return train, val, tokens

    def build(self, model_config, tokenizer):
        from tfllm.models import Seq2SeqLM

        return Seq2SeqLM.from_model_config(model_config, name="seq2seq_lm",
                                           label_smoothing=self.label_smoothing,
                                           protect_placeholders=self.protect_placeholders,
                                           pad_id=tokenizer.pad_id)

    def run_config(self) -> dict:
        return {"seq2seq": {"label_smoothing": self.label_smoothing, "truncate": self.truncate,
                            "protect_placeholders": self.protect_placeholders}}
