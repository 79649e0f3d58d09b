"""The layering of docs/architecture.md holds: imports (function-level ones included) point
down the layers, no two modules import each other through any path, a task never imports
another task, and nothing outside tfllm/tasks/ compares objective or task strings."""

import ast
import os
import re

import pytest

from tests.conftest import REPO

# Lower numbers are lower layers; a module may import its own layer or a lower one.
LAYERS = {
    # core: imports nothing above it
    "tfllm.errors": 0, "tfllm.config": 0, "tfllm.publish": 0, "tfllm.untrusted": 0,
    "tfllm.logs": 0, "tfllm.keras_fixes": 0,
    # building blocks
    "tfllm.layers": 1, "tfllm.tokenizers": 1, "tfllm.data": 1,
    "tfllm.models": 2,
    "tfllm.runs": 3,
    "tfllm.checkpoints": 4, "tfllm.training": 4,
    "tfllm": 5, "tfllm.signatures": 5,
    "tfllm.tasks": 6,
    "tfllm.cli": 7,
    "export": 8, "serving": 8,
}
TOPS = ("tfllm", "export", "serving")


def _modules():
    found = {}
    for top in TOPS:
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module):
    """The tfllm modules `module` imports anywhere in its body."""
    path = MODULES[module]
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                out.add(name)
    return out


EDGES = {m: _imports(m) for m in MODULES}


def _layer(module):
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return LAYERS[module]


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in MODULES)
    assert "tfllm.tasks.translate" in MODULES and "export.saved_model" in MODULES


def test_imports_point_down():
    upward = sorted(f"{m} -> {n}" for m, targets in EDGES.items() for n in targets
                    if _layer(n) > _layer(m))
    assert upward == []


def test_no_import_cycles():
    # Tarjan's strongly connected components over the import graph.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(EDGES):
        if v not in index:
            visit(v)
    assert cycles == []


TASKS = {m.split(".")[2] for m, path in MODULES.items()
         if m.count(".") == 2 and m.startswith("tfllm.tasks.") and path.endswith("__init__.py")}


def _task_of(module):
    """The task package `module` belongs to (tfllm.tasks.base and the registry: none)."""
    parts = module.split(".")
    inside = parts[:2] == ["tfllm", "tasks"] and len(parts) > 2
    return parts[2] if inside and parts[2] in TASKS else None


def test_a_task_never_imports_another_task():
    crossing = sorted(f"{m} -> {n}" for m, targets in EDGES.items() if _task_of(m)
                      for n in targets if _task_of(n) not in (None, _task_of(m)))
    assert crossing == []


# `objective == "seq2seq"`, `task in ("chat", ...)`, `config["objective"] != 'mlm'`
TASK_STRING = re.compile(r"(objective|task)\w*\"?\]?\)?\s*(==|!=|\bnot in\b|\bin\b)\s*"
                         r"[\(\[\{]?\s*[\"']")


@pytest.mark.parametrize("top", TOPS)
def test_no_task_string_branches_outside_the_tasks(top):
    found = []
    for module, path in MODULES.items():
        if module.startswith(top) and not module.startswith("tfllm.tasks"):
            for number, line in enumerate(open(path, encoding="utf-8"), 1):
                if TASK_STRING.search(line):
                    found.append(f"{module}:{number}: {line.strip()}")
    assert found == []


def test_the_checker_sees_what_it_looks_for(tmp_path):
    """The checks above can fail: a planted upward import and a task-string branch."""
    assert TASK_STRING.search('if config["objective"] == "seq2seq":')
    assert TASK_STRING.search("if task in ('chat', 'classify'):")
    assert not TASK_STRING.search("task = tasks.of_run(run)")
    assert _layer("tfllm.tasks.chat.data") > _layer("tfllm.models.lora")
    assert "tfllm.runs" in EDGES["tfllm.tasks"]  # imported inside of_run only
    assert TASKS == {"lm", "mlm", "classify", "embed", "translate", "chat"}
    assert _task_of("tfllm.tasks.chat.data") == "chat" and _task_of("tfllm.tasks.base") is None
