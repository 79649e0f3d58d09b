"""Tasks, the unit of tfllm's workflows, and the registry that maps a run to its task.

    lm         causal language modelling (tfllm train --objective clm): generate, score
    mlm        masked language modelling (--objective mlm): an encoder to fine-tune
    classify   text and sentence-pair classification (tfllm finetune --task classify)
    embed      sentence embeddings of encoder runs (an imported sentence-transformers BERT)
    translate  encoder-decoder translation (tfllm train --objective seq2seq)
    chat       chat fine-tuning of a causal LM, LoRA, `tfllm chat` and `merge`

A task owns its data adapter, how its model is built, its fit hooks, its inference, its
evaluation and what it contributes to each export format (`tfllm.tasks.base.Task`). A run's
config.json names its task by "objective" (clm, mlm, classify, encoder, seq2seq, chat: the
names runs have always carried); `of_run` returns the task, and the CLI, training and every
exporter ask it rather than compare strings. A task never imports another task. Task
modules are imported when asked, so `tfllm --help` loads no TensorFlow.

Example:
    >>> from tfllm import tasks
    >>> tasks.for_objective("seq2seq").name
    'translate'
"""

from __future__ import annotations

import importlib

from tfllm.errors import TfllmError

# name -> module; each module's TASK is the task.
_MODULES = {"lm": "tfllm.tasks.lm", "mlm": "tfllm.tasks.mlm",
            "classify": "tfllm.tasks.classify", "embed": "tfllm.tasks.embed",
            "translate": "tfllm.tasks.translate", "chat": "tfllm.tasks.chat"}
# A run's "objective" (config.json) -> its task. Runs written before objectives existed
# are causal LMs.
_OBJECTIVES = {"clm": "lm", "mlm": "mlm", "classify": "classify", "encoder": "embed",
               "seq2seq": "translate", "chat": "chat"}
DEFAULT_OBJECTIVE = "clm"
# The objectives of `tfllm train --objective` and the tasks of `tfllm finetune --task`
# (the CLI offers them without importing a task).
PRETRAINING = ("clm", "mlm", "seq2seq")
FINETUNING = ("classify", "chat")


def get(name: str):
    """The task named `name` (a key of the registry)."""
    if name not in _MODULES:
        raise TfllmError(f"unknown task {name!r}; tasks: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).TASK


def for_objective(objective: str):
    """The task of runs whose config.json says `"objective": objective`."""
    if not isinstance(objective, str) or objective not in _OBJECTIVES:
        raise TfllmError(f"unknown objective {objective!r}; known: {', '.join(_OBJECTIVES)}")
    return get(_OBJECTIVES[objective])


def of_config(config: dict):
    """The task of a run from its parsed config.json."""
    return for_objective(config.get("objective", DEFAULT_OBJECTIVE))


def of_run(run_dir: str):
    """The task of the run directory `run_dir`."""
    from tfllm import runs

    return of_config(runs.read_run_config(run_dir))


def names() -> list[str]:
    return list(_MODULES)


def train(out: str, data: str, preset: str | None = None, settings=None,
          model_overrides: dict | None = None, text_feature: str | None = None,
          tfds_manual_dir: str | None = None, tfds_data_dir: str | None = None,
          resume: bool = False, overwrite: bool = False, verbose="auto", strategy=None,
          objective: str = DEFAULT_OBJECTIVE, extra_callbacks=None, **options) -> dict:
    """Pretrain a model into the run directory `out`; returns the last metrics record.

    Args:
        out: run directory to create (or continue with `resume=True`).
        data: data spec, `tfds:NAME[:SPLIT]`, `text:GLOB` or a labeled table's text
            (`tsv:PATH`, `csv:PATH`, `jsonl:PATH`); translation: a table with two columns.
        preset: a preset name from `tfllm.config.PRESETS` (default: the task's).
        settings: `tfllm.training.TrainSettings` (defaults if None).
        model_overrides: ModelConfig fields to change from the preset (e.g. dropout).
        text_feature, tfds_manual_dir, tfds_data_dir: see `tfllm.data.Corpus`.
        resume: continue a killed run from its last saved interval.
        overwrite: replace an existing run directory.
        verbose: Keras fit verbosity.
        strategy: an existing `tf.distribute.Strategy` (else created from settings).
        objective: "clm" (next-token prediction, causal presets), "mlm" (BERT's masked
            LM, bidirectional presets such as bert-mini) or "seq2seq" (translation:
            encoder-decoder presets such as transformer-mt-small, on parallel data).
        extra_callbacks: more Keras callbacks for `fit`, run after tfllm's own.
        **options: the task's own (translation: source_column, target_column,
            label_smoothing, truncate, protect_placeholders; see `tfllm.tasks.translate`).

    Example:
        >>> train("runs/demo", "tfds:tiny_shakespeare", settings=TrainSettings(steps=100))  # doctest: +SKIP
    """
    from tfllm.training import pretrain

    if objective not in PRETRAINING:
        raise TfllmError(f"unknown objective {objective!r}; choose one of "
                         f"{', '.join(PRETRAINING)}")
    task = for_objective(objective)
    return pretrain(task.pretraining(options), out, data, preset or task.default_preset,
                    settings, model_overrides, text_feature, tfds_manual_dir, tfds_data_dir,
                    resume, overwrite, verbose, strategy, extra_callbacks)


__all__ = ["get", "for_objective", "of_config", "of_run", "names", "train", "PRETRAINING",
           "FINETUNING", "DEFAULT_OBJECTIVE"]
