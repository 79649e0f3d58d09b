"""The lm task: causal language models (GPT-style and Llama-style decoders).

    tfllm train --objective clm     pretraining on text (`pretraining`)
    tfllm generate / evaluate       sampling with the KV cache, next-token loss
    exports                         SavedModel `generate`/`score` (and `chat` where an
                                    imported template is: tfllm.signatures), TFLite and
                                    LiteRT-LM with a KV cache, ONNX, Hugging Face

Runs say `"objective": "clm"`; imported checkpoints (GPT-2, Llama, Mistral, Qwen, SmolLM2)
are lm runs too.
"""

from __future__ import annotations

from tfllm.tasks.base import Task


class LmTask(Task):
    name = "lm"
    objectives = ("clm",)
    family = "decoder"
    summary = "a causal language model"
    default_preset = "shakespeare-char"

    def pretraining(self, options):
        from tfllm.tasks.lm.pretraining import LmPretraining

        self.train_options(options)  # none of its own
        return LmPretraining()

    def evaluate(self, args):
        from tfllm.tasks.lm.evaluate import print_evaluation

        print_evaluation(args)

    def saved_model_signatures(self, model, config, jit_compile, max_batch, json_schemas=None,
                               tools=None):
        from tfllm.signatures.causal import signatures  # shared with the chat task

        return signatures(model, config, jit_compile, max_batch, json_schemas, tools)

    def chat_config(self, config, tokenizer):
        from tfllm.tokenizers.chat_template import usable_chat_config

        return usable_chat_config(config, tokenizer)


TASK = LmTask()
