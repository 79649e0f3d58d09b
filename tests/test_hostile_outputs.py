"""Every command that writes, against the same hostile `--out` cases: nothing is lost.

The matrix: train, finetune (classify and chat), merge, import-hf, import-gguf and the
five exporters, each given as `--out` a folder of the user's, a file, its input itself, a
parent of its input, and an output of another kind (with --overwrite every time): each is
refused with exit status 2 and one line, and every file is still there byte for byte.
Then each command is killed (SIGKILL) while it writes over an output of its own kind,
which stays as it was, and run again, which replaces it and removes the killed run's
staging leftover (recognised by its marker) but not a hidden folder of the user's.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, labeled_rows, quiet_env, snapshot, write_tsv
from tfllm.publish import MARKER, Output, is_ours

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_run):
    """What the commands read: a trained run, a chat base run and a LoRA run of it, data
    files, a Llama checkpoint and a GGUF file."""
    from tests.chat_fixtures import make_base_run, write_pairs_tsv
    from tests.checkpoints.llama_fixtures import write_checkpoint
    from tests.checkpoints.test_gguf import write_gguf
    from tests.tokenizers.hf_fixtures import make_tokenizer_json
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat

    root = tmp_path_factory.mktemp("inputs")
    base = make_base_run(str(root / "base"))
    pairs = write_pairs_tsv(str(root / "pairs.tsv"))
    lora = str(root / "lora")
    finetune_chat(lora, pairs, base, ChatSettings(steps=2, eval_interval=2, batch_size=4,
                                                  lora_rank=2),
                  prompt_column="en", response_column="fr", verbose=0)
    gguf_path = str(root / "tiny.gguf")
    write_gguf(gguf_path, make_tokenizer_json(str(root / "gguf-tok.json"), "smollm2"))
    from tests.conftest import shakespeare_text

    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text(20_000), encoding="utf-8")
    return {"run": tiny_run, "corpus": str(corpus),
            "labeled": write_tsv(root / "labeled.tsv", labeled_rows(40))[4:],
            "base": base, "pairs": pairs[4:], "lora": lora,
            "checkpoint": write_checkpoint(str(root / "ckpt"), "llama"), "gguf": gguf_path}


def _saved_model_args(out):
    version_dir = os.path.dirname(out)
    return ["--out", os.path.dirname(version_dir), "--name", os.path.basename(version_dir),
            "--version", os.path.basename(out)]


# name -> (output kind, module, the input the hostile cases move, args(out, inputs))
COMMANDS = {
    "train": ("run", "tfllm.cli", "corpus", lambda out, i: [
        "train", "--data", f"text:{i['corpus']}", "--steps", "4", "--eval-interval", "2",
        "--eval-steps", "1", "--batch-size", "4", "--max-len", "32", "--no-jit", "--out", out]),
    "finetune": ("run", "tfllm.cli", "run", lambda out, i: [
        "finetune", "--run", i["run"], "--data", f"tsv:{i['labeled']}", "--epochs", "1",
        "--batch-size", "8", "--no-jit", "--out", out]),
    "finetune-chat": ("run", "tfllm.cli", "base", lambda out, i: [
        "finetune", "--task", "chat", "--run", i["base"], "--data", f"tsv:{i['pairs']}",
        "--prompt-column", "en", "--response-column", "fr", "--steps", "2",
        "--eval-interval", "2", "--batch-size", "4", "--out", out]),
    "merge": ("run", "tfllm.cli", "lora", lambda out, i: ["merge", "--run", i["lora"],
                                                          "--out", out]),
    "import-hf": ("run", "tfllm.cli", "checkpoint", lambda out, i: [
        "import-hf", "--checkpoint", i["checkpoint"], "--out", out]),
    "import-gguf": ("run", "tfllm.cli", "gguf", lambda out, i: [
        "import-gguf", "--gguf", i["gguf"], "--out", out]),
    # --no-verify: what is checked here is the publishing, not the fresh-process check
    # (test_saved_model's), which would double this command's time.
    "export.saved_model": ("saved-model", "export.saved_model", "run", lambda out, i: [
        "--run", i["run"], *_saved_model_args(out), "--no-verify"]),
    "export.tflite": ("tflite", "export.tflite", "run", lambda out, i: [
        "--run", i["run"], "--out", out, "--prefill-lengths", "8"]),
    "export.litertlm": ("litertlm", "export.litertlm", "run", lambda out, i: [
        "--run", i["run"], "--out", out, "--prefill-lengths", "8"]),
    "export.onnx": ("onnx", "export.onnx", "run", lambda out, i: [
        "--run", i["run"], "--out", out, "--no-decode"]),
    "export.hf": ("hf-checkpoint", "export.hf", "run", lambda out, i: [
        "--run", i["run"], "--out", out]),
}
# An output of another kind to aim each kind at.
OTHER = {"run": "saved-model", "saved-model": "run", "hf-checkpoint": "run",
         "tflite": "onnx", "onnx": "tflite", "litertlm": "tflite"}
SUFFIX = {"tflite": ".tflite", "litertlm": ".litertlm", "onnx": ".onnx"}


def _path(root, kind, name="out"):
    """A path `kind` can be written to: a version directory for SavedModels."""
    if kind == "saved-model":
        return os.path.join(root, name, "m", "7")
    return os.path.join(root, name + SUFFIX.get(kind, ""))


def _publish_dummy(path, kind):
    """An output of `kind` that tfllm published (a marker), holding a file of the user's."""
    with Output(path, kind).staging() as tmp:
        with open(tmp if kind in SUFFIX else os.path.join(tmp, "notes.txt"), "w") as f:
            f.write(f"a {kind} the user keeps")


def _moved_inputs(inputs, key, where):
    """A copy of `inputs` whose `key` input lives at `where`."""
    source = inputs[key]
    os.makedirs(os.path.dirname(where), exist_ok=True)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, where)
    return {**inputs, key: where}


def _main(module, args, capsys):
    """`module`'s entry point run in this process: (exit status, its stderr)."""
    import importlib

    status = importlib.import_module(module).main(args)
    return status, capsys.readouterr().err.strip()


CASES = ("folder", "file", "input", "parent", "other-kind")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hostile_out_is_refused_and_nothing_is_lost(command, inputs, tmp_path, capsys):
    kind, module, key, args = COMMANDS[command]
    for case in CASES:
        root = str(tmp_path / case)
        given = inputs
        if case == "folder":
            out = _path(root, kind)
            os.makedirs(out if kind not in SUFFIX else os.path.join(out + ".d"))
            if kind in SUFFIX:  # a folder named like the file
                os.rename(out + ".d", out)
            with open(os.path.join(out, "thesis.txt"), "w") as f:
                f.write("years of work")
        elif case == "file":
            out = _path(root, kind)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "w") as f:
                f.write("a file of the user's")
        elif case == "input":  # --out is the input itself
            out = _path(root, kind) if kind == "saved-model" else os.path.join(root, "in")
            given = _moved_inputs(inputs, key, out)
        elif case == "parent":  # --out contains the input
            out = _path(root, kind)
            given = _moved_inputs(inputs, key, os.path.join(out, "inside"))
        else:
            out = _path(root, kind)
            _publish_dummy(out, OTHER[kind])
        before = snapshot(root)
        started = time.time()
        status, err = _main(module, args(out, given) + ["--overwrite"], capsys)
        assert status == 2, (case, err[-2000:])
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
        assert "does not replace it" in err or "the input" in err or "is a file" in err \
            or "is a directory" in err, (case, err)
        assert time.time() - started < 120, case
        assert snapshot(root) == before, case


def _staging_leftovers(path):
    parent = os.path.dirname(os.path.abspath(path))
    return sorted(n for n in os.listdir(parent) if ".tfllm-staging-" in n)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_killed_while_writing_the_old_output_stays_then_is_replaced(command, inputs,
                                                                    tmp_path, capsys):
    kind, module, _, args = COMMANDS[command]
    out = _path(str(tmp_path), kind)
    _publish_dummy(out, kind)
    before = snapshot(out)
    parent = os.path.dirname(os.path.abspath(out))
    name = os.path.basename(out)
    users = os.path.join(parent, f".{name}.tfllm-staging-1-users")  # no marker: not ours
    os.makedirs(users)
    # Folders named as earlier versions named their scratch space are the user's now.
    others = [os.path.join(parent, n) for n in (f"{name}.tmp-merge", ".hf-x", f"{name}.tmp",
                                                f".{name}.partial-1-x")]
    for folder in others:
        os.makedirs(folder)
        with open(os.path.join(folder, "keep.txt"), "w") as f:
            f.write("mine")
    proc = subprocess.Popen([sys.executable, "-m", module, *args(out, inputs), "--overwrite"],
                            cwd=REPO, env=quiet_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while len(_staging_leftovers(out)) < 2:  # the user's folder, then the command's
            assert proc.poll() is None, f"{command} ended before it was killed"
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert snapshot(out) == before and is_ours(out, kind)
    assert len(_staging_leftovers(out)) == 2
    status, err = _main(module, args(out, inputs) + ["--overwrite"], capsys)
    assert status == 0, err[-3000:]
    assert snapshot(out) != before and is_ours(out, kind)
    assert _staging_leftovers(out) == [os.path.basename(users)]
    assert all(snapshot(folder) == {"keep.txt": b"mine"} for folder in others)
    if kind not in SUFFIX:
        assert MARKER in os.listdir(out) and "notes.txt" not in os.listdir(out)
    # Readable by all, as a serving container's user needs: staging starts private.
    assert os.stat(out).st_mode & (0o044 if kind in SUFFIX else 0o055) == \
        (0o044 if kind in SUFFIX else 0o055)
    for root, dirs, files in os.walk(out):
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o055 == 0o055, name
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o044 == 0o044, name
