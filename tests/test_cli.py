"""The command line answers --help and argument errors before TensorFlow loads, and keeps
native libraries' log lines off the terminal."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, quiet_env

_PROBE = """
import sys
from tfllm.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code)
print("loaded", "tensorflow" in sys.modules, "keras" in sys.modules)
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["export-nothing"], 2),
    (["train", "--out", "x", "--steps", "0"], 2),
    (["generate", "--run", "x", "--temperature", "nan"], 2),
    (["generate", "--run", "x", "--prompt", b"RO\xffMEO"], 2),  # argv that is not UTF-8
    # Integers past what they feed were tracebacks (OverflowError, NumPy's seed range).
    (["generate", "--run", "x", "--seed", "99999999999999999999"], 2),
    (["train", "--out", "x", "--seed", "-1"], 2),
    (["generate", "--run", "x", "--top-k", "-1" + "0" * 400], 2),
])
def test_help_and_argument_errors_do_not_load_tensorflow(argv, code):
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env=quiet_env())
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == [f"exit {code}", "loaded False False"]
    assert "cudart" not in proc.stderr and "absl" not in proc.stderr


def test_a_failing_command_prints_one_line_and_no_native_logs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfllm.cli", "evaluate", "--run",
                           str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=quiet_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"tfllm evaluate: error: run directory {tmp_path / 'none'} " \
                                  "does not exist"


_MODULE_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as e:
    print("exit", e.code)
print("loaded", "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("module", ["export.saved_model", "export.tflite", "export.litertlm",
                                    "export.onnx", "serving.dev_server"])
@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--bogus"], 2)])
def test_entry_points_answer_help_before_tensorflow(module, args, code):
    proc = subprocess.run([sys.executable, "-c", _MODULE_PROBE, module, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=quiet_env())
    assert proc.stdout.strip().splitlines()[-2:] == [f"exit {code}", "loaded False"]


@pytest.mark.parametrize("argv, prog", [
    (["export", "onnx", "--run", "NONE", "--out", "x.onnx"], "tfllm export onnx"),
    (["export", "saved-model", "--run", "NONE", "--out", "models"], "tfllm export saved-model"),
    (["serve", "--model-dir", "NONE"], "tfllm serve"),
    (["serve", "--run", "NONE"], "tfllm serve"),
])
def test_export_and_serve_errors_name_the_command_the_user_typed(argv, prog, tmp_path):
    argv = [a.replace("NONE", str(tmp_path / "none")) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "tfllm.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=quiet_env())
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{prog}: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert str(tmp_path / "none") in proc.stderr


def test_import_help_names_every_family_the_importers_take():
    from tfllm.checkpoints import IMPORTERS
    from tfllm.checkpoints.gguf import ARCHITECTURES
    from tfllm.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    hf_help = " ".join(commands["import-hf"].format_help().split())
    gguf_help = " ".join(commands["import-gguf"].format_help().split())
    assert all(t in hf_help for t in IMPORTERS)
    assert all(a in gguf_help for a in ARCHITECTURES) and "SentencePiece" in gguf_help
    # Written out as well: a help listing an old set of families fails whatever the lists.
    for name in ("gpt2", "llama", "qwen3", "bert", "gemma2", "gemma3_text"):
        assert name in hf_help, name
    for name in ("llama", "qwen2", "gemma", "gemma3"):
        assert name in gguf_help, name
    overview = " ".join(build_parser().format_help().split())  # `tfllm --help`
    assert "(GPT-2, Llama, Mistral, Qwen2, Qwen3, BERT, Gemma, Gemma 2, Gemma 3)" in overview
    assert "(llama, qwen2, qwen3, gemma, gemma2, gemma3)" in overview


def test_text_options_that_are_not_utf8_are_refused_by_name():
    proc = subprocess.run([sys.executable, "-m", "tfllm.cli", "chat", "--run", "x",
                           "--message", b"caf\xe9"], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=quiet_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "tfllm chat: error: argument --message: not UTF-8 text (byte 0xe9 at character 3); "
        "give UTF-8 text")


def test_numbers_past_their_range_are_named_in_one_line(capsys):
    from tfllm.cli import main

    for argv, message in [
            (["generate", "--run", "x", "--seed", "99999999999999999999"],
             "argument --seed: must be a 64-bit integer, got 99999999999999999999"),
            (["finetune", "--run", "x", "--data", "tsv:x", "--out", "y", "--seed", "4294967296"],
             "argument --seed: must be an integer from 0 to 4294967295, got 4294967296"),
            (["generate", "--run", "x", "--top-k", "-1" + "0" * 400],
             "argument --top-k: must be a positive integer, got an integer of 1329 bits")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_text_that_is_not_utf8_reaching_an_encoder_is_one_line():
    from tfllm.errors import error_line

    with pytest.raises(UnicodeEncodeError) as e:
        "RO\udcffMEO".encode("utf-8")
    assert error_line(e.value) == ("the input holds text that is not UTF-8 (byte 0xff at "
                                   "character 2); give UTF-8 text")
