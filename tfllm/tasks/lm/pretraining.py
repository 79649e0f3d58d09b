"""The lm task's pretraining hooks (`tfllm.training.pretrain`): next-token prediction on
token windows of a text corpus."""

from __future__ import annotations

from tfllm.config import ConfigError


class LmPretraining:
    objective = "clm"

    def check_preset(self, config, preset):
        if config.is_seq2seq:
            raise ConfigError(f"preset {preset!r} is an encoder-decoder; --objective clm needs "
                              "a decoder or encoder preset")
        if not config.causal:
            raise ConfigError(f"preset {preset!r} is a bidirectional encoder; --objective clm "
                              "needs a causal preset (e.g. shakespeare-char)")

    def matches(self, stored) -> bool:
        return stored.get("objective", self.objective) == self.objective

    def read(self, data, settings, text_feature, tfds_manual_dir, tfds_data_dir):
        from tfllm.data import Corpus

        return Corpus(data, text_feature, tfds_manual_dir, tfds_data_dir)

    def tokenizer_texts(self, corpus):
        return corpus.sample_texts()

    def tokenizer_options(self) -> dict:
        return {}

    def prepare(self, corpus, tokenizer, seq_len, verbose):
        from tfllm.data import check_nonempty

        check_nonempty(corpus.train_texts(), tokenizer, seq_len, "training")
        check_nonempty(corpus.val_texts(), tokenizer, seq_len, "validation")

    def static_shapes(self, strategy) -> bool:
        return True

    def datasets(self, corpus, tokenizer, seq_len, global_batch, seed, static_shapes):
        from tfllm.data.windows import make_lm_dataset

        train = make_lm_dataset(corpus.train_texts(), tokenizer, seq_len, global_batch,
                                training=True, seed=seed)
        val = make_lm_dataset(corpus.val_texts(), tokenizer, seq_len, global_batch,
                              training=False, seed=seed)
        return train, val, global_batch * seq_len

    def build(self, model_config, tokenizer):
        from tfllm.models import CausalLM

        return CausalLM.from_model_config(model_config, name="causal_lm")

    def run_config(self) -> dict:
        return {}
