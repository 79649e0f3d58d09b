"""The mlm task: BERT-style encoders pretrained with masked-LM (`tfllm train --objective
mlm`), scored on masked tokens by `tfllm evaluate`; `tfllm finetune --task classify`
fine-tunes them, `tfllm embed` reads sentence vectors from them."""

from __future__ import annotations

from tfllm.tasks.base import Task


class MlmTask(Task):
    name = "mlm"
    objectives = ("mlm",)
    family = "encoder"
    summary = "a masked-LM encoder"
    default_preset = "bert-mini"

    def pretraining(self, options):
        from tfllm.tasks.mlm.pretraining import MlmPretraining

        self.train_options(options)  # none of its own
        return MlmPretraining()

    def evaluate(self, args):
        from tfllm.tasks.mlm.evaluate import print_evaluation

        print_evaluation(args)

    def generate_hint(self) -> str:
        return "it is a masked-LM encoder: fine-tune it (tfllm finetune --task classify) or " \
            "embed with it (tfllm embed)"


TASK = MlmTask()
