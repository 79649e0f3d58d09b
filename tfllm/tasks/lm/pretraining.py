"""The lm task's pretraining hooks (`tfllm.training.pretrain`): next-token prediction on
token windows of a text corpus."""

from __future__ import annotations

from tfllm.config import ConfigError
from tfllm.training import TextPretraining


class LmPretraining(TextPretraining):
    objective = "clm"

    def check_preset(self, config, preset):
        if config.is_seq2seq:
            raise ConfigError(f"preset {preset!r} is an encoder-decoder; --objective clm needs "
                              "a decoder or encoder preset")
        if not config.causal:
            raise ConfigError(f"preset {preset!r} is a bidirectional encoder; --objective clm "
                              "needs a causal preset (e.g. shakespeare-char)")

    def matches(self, stored) -> bool:
        # Runs written before objectives existed are causal LMs.
        return stored.get("objective", self.objective) == self.objective

    @staticmethod
    def make_dataset(texts, tokenizer, max_len, batch_size, training, seed):
        from tfllm.data.windows import make_lm_dataset

        return make_lm_dataset(texts, tokenizer, max_len, batch_size, training=training,
                               seed=seed)

    def build(self, model_config, tokenizer):
        from tfllm.models import CausalLM

        return CausalLM.from_model_config(model_config, name="causal_lm")
