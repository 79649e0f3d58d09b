"""The translate task: encoder-decoder translators trained on parallel text.

    tfllm train --objective seq2seq     pretraining on (source, target) pairs, placeholders
                                        (`%s`, `{name}`) protected as one sentinel token
    tfllm translate / evaluate          beam search; BLEU, chrF, placeholder accuracy
    exports                             SavedModel `translate` (saved_model.py), TFLite and
                                        ONNX encode/decode graphs
"""

from __future__ import annotations

from tfllm.tasks.base import Task, TaskError


class TranslateTask(Task):
    name = "translate"
    objectives = ("seq2seq",)
    family = "encoder-decoder"
    summary = "an encoder-decoder translator"
    default_preset = "transformer-mt-small"

    def train_options(self, given, stored=None):
        old_data = stored["data"] if stored else {}
        old = (stored or {}).get("seq2seq", {})
        smoothing = given.get("label_smoothing")
        return dict(
            source_column=given.get("source_column") or old_data.get("source_column"),
            target_column=given.get("target_column") or old_data.get("target_column"),
            label_smoothing=smoothing if smoothing is not None else
            old.get("label_smoothing", 0.1),
            truncate=bool(given.get("truncate")) or old.get("truncate", False),
            # Runs from before protection existed trained without it.
            protect_placeholders=(old.get("protect_placeholders", False) if stored
                                  else not given.get("no_protect_placeholders")))

    def pretraining(self, options):
        from tfllm.tasks.translate.pretraining import TranslatePretraining

        unknown = sorted(set(options) - {"source_column", "target_column", "label_smoothing",
                                         "truncate", "protect_placeholders"})
        if unknown:
            raise TaskError(f"unknown option {unknown[0]!r} of --objective seq2seq")
        return TranslatePretraining(**options)

    def evaluate(self, args):
        from tfllm.tasks.translate.evaluate import print_evaluation

        print_evaluation(args)

    def generate_hint(self) -> str:
        return "it is a translation (seq2seq) run; use tfllm translate"

    def saved_model_signatures(self, model, config, jit_compile, max_batch, json_schemas=None,
                               tools=None):
        self.refuse_constraints(json_schemas, tools)
        from tfllm.tasks.translate.saved_model import signatures

        return signatures(model, config, jit_compile, max_batch)


TASK = TranslateTask()
