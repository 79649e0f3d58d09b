"""The mlm task's pretraining and evaluation hooks: BERT's masked-LM on token windows."""

from __future__ import annotations

import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.training import TextPretraining


class MlmPretraining(TextPretraining):
    objective = "mlm"

    def check_preset(self, config, preset):
        if config.is_seq2seq:
            raise ConfigError(f"preset {preset!r} is an encoder-decoder; --objective mlm needs "
                              "a decoder or encoder preset")
        if config.causal:
            raise ConfigError(f"preset {preset!r} is a causal decoder; --objective mlm needs "
                              "an encoder preset (e.g. bert-mini)")

    def tokenizer_options(self) -> dict:
        return {"mask_token": True}

    @staticmethod
    def make_dataset(texts, tokenizer, max_len, batch_size, training, seed):
        from tfllm.tasks.mlm.data import make_mlm_dataset

        return make_mlm_dataset(texts, tokenizer, max_len, batch_size, training=training,
                                seed=seed)

    def build(self, model_config, tokenizer):
        from tfllm.models import MaskedLM

        return MaskedLM.from_model_config(model_config, name="masked_lm")


class MaskedWindows:
    """`tfllm.training.evaluate_windows` hooks: scored on the masked tokens of a fixed draw
    of BERT's masking, with the accuracy of predicting them."""

    @staticmethod
    def eval_dataset(texts, tokenizer, max_len, batch_size):
        from tfllm.tasks.mlm.data import make_mlm_dataset

        return make_mlm_dataset(texts, tokenizer, max_len, batch_size, training=False)

    @staticmethod
    def compile_eval(model):
        model.compile(optimizer="sgd", jit_compile=True)

    @staticmethod
    def count_tokens(ds) -> int:
        return int(sum(float(tf.reduce_sum(w)) for _, _, w in ds))

    @staticmethod
    def eval_fields(results) -> dict:
        return {"accuracy": round(float(results["accuracy"]), 4)}
