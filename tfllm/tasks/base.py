"""What a task is: the hooks through which the CLI, training and the exporters ask it.

Each task package (`tfllm/tasks/<name>/`) defines one `Task` subclass and exports an
instance as `TASK`. A hook a task does not have answers with a one-line error naming the
task and the command to use instead, so callers need no list of which task does what.
"""

from __future__ import annotations

from tfllm.errors import TfllmError


class TaskError(TfllmError):
    """A run's task cannot do what was asked of it."""


class Task:
    """The interface of a task. Attributes describe it; methods are its hooks.

    Attributes:
        name: the task's name (`tfllm finetune --task`, docs).
        objectives: the run-config "objective" values of its runs (the first is what its
            runs get; the others are older or imported forms).
        family: the architecture its runs export as: "decoder" (a causal LM), "encoder",
            "classifier" or "encoder-decoder"; exporters choose their conversion by it.
        summary: one line for help texts.
    """

    name = ""
    objectives: tuple = ()
    family = ""
    summary = ""

    @property
    def objective(self) -> str:
        return self.objectives[0]

    @property
    def causal(self) -> bool:
        """Its runs are causal language models (generate, chat, Hugging Face export)."""
        return self.family == "decoder"

    def unsupported(self, what: str, hint: str = "") -> TaskError:
        """The error of a hook this task lacks."""
        return TaskError(f"{what} is not for {self.name} runs ({self.summary})"
                         + (f"; {hint}" if hint else ""))

    # -- training --------------------------------------------------------------------------
    def pretraining(self, options: dict):
        """Hooks of `tfllm.training.pretrain` for `tfllm train --objective` (lm, mlm,
        translate), given the command's task options (e.g. translation's columns)."""
        raise self.unsupported("tfllm train", "tfllm train takes --objective clm, mlm or "
                               "seq2seq")

    def train_options(self, given: dict, stored: dict | None = None) -> dict:
        """This task's own `tfllm train` options among `given` (name -> value, None when
        not given; `stored`: the config.json of a run being resumed), as keyword
        arguments of `tfllm.tasks.train`; TaskError for an option of another task."""
        extra = [k for k, v in given.items() if v not in (None, False)]
        if extra:
            raise TaskError(f"--{extra[0].replace('_', '-')} is not an option of "
                            f"--objective {self.objective}")
        return {}

    def finetune(self, args):
        """`tfllm finetune --task NAME` with the parsed arguments."""
        raise self.unsupported("tfllm finetune --task", "it takes classify or chat")

    # -- using and scoring a run -----------------------------------------------------------
    def evaluate(self, args) -> None:
        """`tfllm evaluate --run RUN`: print the run's scores (a JSON line last)."""
        raise self.unsupported("tfllm evaluate")

    def generate_hint(self) -> str:
        """How to get text from runs of this task, where `tfllm generate` does not."""
        return ""

    # -- exports ---------------------------------------------------------------------------
    def saved_model_signatures(self, model, config: dict, jit_compile: bool, max_batch: int,
                               json_schemas: dict | None = None, tools: dict | None = None):
        """`(signatures, check[, resources])`: {name: (fn, input_signature)} of the
        SavedModel, `check(path, run_dir)` verifying a written SavedModel in a fresh process
        (returns what it verified, for the exporter's report), and trackables the functions
        read beside the model's (saved with it). `json_schemas`: {name: JSON schema} each to
        get a constrained signature, `tools`: {name: function specs} each to get chat
        signatures offering them (`refuse_constraints` where the task has none)."""
        raise self.unsupported("a SavedModel export")

    def refuse_constraints(self, json_schemas, tools=None):
        """TaskError where JSON schemas or tools were given to a task that does not
        generate text."""
        if json_schemas:
            raise self.unsupported("--json-schema", "it constrains generated text")
        if tools:
            raise self.unsupported("--tools", "it offers tools to a chat model")

    def heldout_texts(self, config: dict, split: str = "val"):
        """Texts an exporter holds a quantized model to (`split="val"`) or calibrates it on
        (`"train"`), where the run's data is not a text corpus; None: read the run's
        data as one."""
        return None

    def chat_config(self, config: dict, tokenizer):
        """The run's usable chat entry (template, special-token strings, end of turn) for
        exports that apply a template, or None."""
        return None
