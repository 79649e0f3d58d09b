"""The embed task: sentence embeddings of encoder runs (an imported sentence-transformers
BERT such as all-MiniLM-L6-v2; `tfllm embed` also reads them from masked-LM and
classifier runs' backbones). Exports: the SavedModel `embed` signature (saved_model.py).

Runs say `"objective": "encoder"`.
"""

from __future__ import annotations

from tfllm.tasks.base import Task


class EmbedTask(Task):
    name = "embed"
    objectives = ("encoder",)
    family = "encoder"
    summary = "a sentence encoder"

    def generate_hint(self) -> str:
        return "it is a sentence encoder; use tfllm embed"

    def saved_model_signatures(self, model, config, jit_compile, max_batch, json_schemas=None,
                               tools=None):
        self.refuse_constraints(json_schemas, tools)
        from tfllm.tasks.embed.saved_model import signatures

        return signatures(model, config, jit_compile, max_batch)


TASK = EmbedTask()
