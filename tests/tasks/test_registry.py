"""The task registry: every task is reachable by name and by its runs' objectives, a hook a
task lacks answers with a one-line TaskError, and runs of every age map to their task."""

import json

import pytest

from tfllm import tasks
from tfllm.errors import TfllmError
from tfllm.tasks.base import Task, TaskError

FAMILIES = {"decoder", "encoder", "classifier", "encoder-decoder"}


def test_every_task_is_registered_by_name_and_objective():
    assert tasks.names() == ["lm", "mlm", "classify", "embed", "translate", "chat"]
    seen = set()
    for name in tasks.names():
        task = tasks.get(name)
        assert isinstance(task, Task) and task.name == name
        assert task.family in FAMILIES and task.summary
        for objective in task.objectives:
            assert tasks.for_objective(objective) is task
            assert objective not in seen
            seen.add(objective)
    assert seen == {"clm", "mlm", "classify", "encoder", "seq2seq", "chat"}
    # Causal-LM abilities (generate, chat, Hugging Face export) follow the family.
    assert {n for n in tasks.names() if tasks.get(n).causal} == {"lm", "chat"}


def test_command_choices_match_the_tasks_hooks():
    columns = dict(source_column="en", target_column="fr")
    for objective in tasks.PRETRAINING:
        task = tasks.for_objective(objective)
        assert task.default_preset  # `tfllm train --objective X` without --preset
        assert task.pretraining(columns if objective == "seq2seq" else {}) is not None
    for name in ("classify", "embed", "chat"):
        with pytest.raises(TaskError, match="tfllm train"):
            tasks.get(name).pretraining({})
    assert set(tasks.FINETUNING) == {"classify", "chat"}
    for name in ("lm", "mlm", "embed", "translate"):
        with pytest.raises(TaskError, match=f"not for {name} runs.*classify or chat"):
            tasks.get(name).finetune(None)
    with pytest.raises(TaskError, match="tfllm evaluate is not for embed runs"):
        tasks.get("embed").evaluate(None)
    with pytest.raises(TaskError, match="SavedModel export is not for mlm runs"):
        tasks.get("mlm").saved_model_signatures(None, {}, False, 1)


def test_a_task_takes_only_its_own_train_options():
    assert tasks.get("lm").train_options({"source_column": None, "truncate": False}) == {}
    with pytest.raises(TaskError, match="--source-column is not an option of --objective clm"):
        tasks.get("lm").train_options({"source_column": "en"})
    assert tasks.get("translate").train_options(
        {"source_column": "en", "target_column": "fr"})["source_column"] == "en"


def test_runs_map_to_their_task(tmp_path):
    # Runs written before objectives existed are causal LMs.
    assert tasks.of_config({}).name == "lm"
    assert tasks.of_config({"objective": "encoder"}).name == "embed"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"objective": "seq2seq", "model": {}}))
    assert tasks.of_run(str(run)).name == "translate"


@pytest.mark.parametrize("call, value", [
    (lambda: tasks.get("summarize"), "'summarize'"),
    (lambda: tasks.for_objective("rlhf"), "'rlhf'"),
    (lambda: tasks.for_objective(["clm"]), r"\['clm'\]"),
    (lambda: tasks.of_config({"objective": 3}), "3"),
])
def test_unknown_names_are_one_line_errors_that_list_the_known_ones(call, value):
    with pytest.raises(TfllmError, match=f"unknown (task|objective) {value}; (tasks|known): ") as e:
        call()
    assert "\n" not in str(e.value)


def test_train_refuses_an_objective_that_is_not_pretraining(tmp_path):
    with pytest.raises(TfllmError, match="unknown objective 'chat'; choose one of clm, mlm, "
                                         "seq2seq"):
        tasks.train(str(tmp_path / "x"), "text:nothing", objective="chat")
    assert not (tmp_path / "x").exists()
