"""The mlm task's pretraining and evaluation hooks: BERT's masked-LM on token windows."""

from __future__ import annotations

import tensorflow as tf

from tfllm.config import ConfigError


class MlmPretraining:
    objective = "mlm"

    def check_preset(self, config, preset):
        if config.is_seq2seq:
            raise ConfigError(f"preset {preset!r} is an encoder-decoder; --objective mlm needs "
                              "a decoder or encoder preset")
        if config.causal:
            raise ConfigError(f"preset {preset!r} is a causal decoder; --objective mlm needs "
                              "an encoder preset (e.g. bert-mini)")

    def matches(self, stored) -> bool:
        return stored.get("objective") == self.objective

    def read(self, data, settings, text_feature, tfds_manual_dir, tfds_data_dir):
        from tfllm.data import Corpus

        return Corpus(data, text_feature, tfds_manual_dir, tfds_data_dir)

    def tokenizer_texts(self, corpus):
        return corpus.sample_texts()

    def tokenizer_options(self) -> dict:
        return {"mask_token": True}

    def prepare(self, corpus, tokenizer, seq_len, verbose):
        from tfllm.data import check_nonempty

        check_nonempty(corpus.train_texts(), tokenizer, seq_len, "training")
        check_nonempty(corpus.val_texts(), tokenizer, seq_len, "validation")

    def static_shapes(self, strategy) -> bool:
        return True

    def datasets(self, corpus, tokenizer, seq_len, global_batch, seed, static_shapes):
        from tfllm.tasks.mlm.data import make_mlm_dataset

        train = make_mlm_dataset(corpus.train_texts(), tokenizer, seq_len, global_batch,
                                 training=True, seed=seed)
        val = make_mlm_dataset(corpus.val_texts(), tokenizer, seq_len, global_batch,
                               training=False, seed=seed)
        return train, val, global_batch * seq_len

    def build(self, model_config, tokenizer):
        from tfllm.models import MaskedLM

        return MaskedLM.from_model_config(model_config, name="masked_lm")

    def run_config(self) -> dict:
        return {}


class MaskedWindows:
    """`tfllm.training.evaluate_windows` hooks: scored on the masked tokens of a fixed draw
    of BERT's masking, with the accuracy of predicting them."""

    @staticmethod
    def eval_dataset(texts, tokenizer, seq_len, batch_size):
        from tfllm.tasks.mlm.data import make_mlm_dataset

        return make_mlm_dataset(texts, tokenizer, seq_len, batch_size, training=False)

    @staticmethod
    def compile_eval(model):
        model.compile(optimizer="sgd", jit_compile=True)

    @staticmethod
    def count_tokens(ds) -> int:
        return int(sum(float(tf.reduce_sum(w)) for _, _, w in ds))

    @staticmethod
    def eval_fields(results) -> dict:
        return {"accuracy": round(float(results["accuracy"]), 4)}
