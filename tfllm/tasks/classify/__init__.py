"""The classify task: text and sentence-pair classifiers fine-tuned from a pretrained run
(a masked-LM or causal LM run, an imported BERT) or trained from scratch.

    tfllm finetune --task classify   fine-tuning (finetune.py), best validation accuracy kept
    tfllm classify / evaluate        labels and probabilities (predict.py); accuracy,
                                     macro-F1, confusion (evaluate.py)
    exports                          SavedModel `classify` (saved_model.py), TFLite (int8
                                     too), ONNX

A classifier run says `"objective": "classify"` and holds a `"task"` entry: class names,
pooling, the padded sequence length, whether it reads pairs.
"""

from __future__ import annotations

from tfllm.tasks.base import Task


class ClassifyTask(Task):
    name = "classify"
    objectives = ("classify",)
    family = "classifier"
    summary = "a classifier"

    def finetune(self, args):
        from tfllm.tasks.classify.commands import finetune_command

        return finetune_command(args)

    def evaluate(self, args):
        import json

        from tfllm.tasks.classify.evaluate import evaluate_classifier, format_report

        report = evaluate_classifier(args.run, args.data, args.text_feature, args.label_column,
                                     args.weights, args.batch_size or 64,
                                     args.tfds_manual_dir, args.tfds_data_dir,
                                     args.pair_column)
        print("\n".join(format_report(report)))
        print(json.dumps(report))

    def generate_hint(self) -> str:
        return "it is a classifier; use tfllm classify"

    def saved_model_signatures(self, model, config, jit_compile, max_batch, json_schemas=None,
                               tools=None):
        self.refuse_constraints(json_schemas, tools)
        from tfllm.tasks.classify.saved_model import signatures

        return signatures(model, config, jit_compile, max_batch)


TASK = ClassifyTask()
