"""Every reader of a downloaded checkpoint against the same malformed and hostile files:
one line, exit status 2, bounded time and memory, and nothing written.

config.json, tokenizer.json, tokenizer_config.json and generation_config.json of a Hugging
Face checkpoint (import-hf), GGUF files (import-gguf) and chat templates (tfllm chat,
export.saved_model) are code and data from a download: a parse error, a wrong type, a
non-finite number, a size that would exhaust the machine or a template that never ends is
refused in one line naming the file and the field.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, call_module, quiet_env
from tfllm.cli import main

DEEP = "[" * 100_000 + "]" * 100_000

# (file, how it is spoiled, what the message must say)
HF_CASES = [
    ("config.json", "{not json", "config.json is not valid JSON"),
    ("config.json", "[1, 2]", "must hold a JSON object"),
    ("config.json", DEEP, "nested too deeply"),
    ("config.json", " " * (2 << 20) + "{}", "more than the 1,048,576"),
    ("config.json", {"num_hidden_layers": 1_000_000}, "num_hidden_layers=1000000 must be an "
                                                      "integer from 1 to 1,024"),
    ("config.json", {"hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 512,
                     "num_attention_heads": 128, "num_key_value_heads": 128,
                     "vocab_size": 400}, "GiB even in bfloat16"),
    ("config.json", {"rope_theta": "abc"}, "rope_theta='abc' must be a finite number"),
    ("config.json", {"rope_theta": float("inf")}, "rope_theta=inf must be a finite number"),
    ("config.json", {"rms_norm_eps": float("nan")}, "rms_norm_eps=nan must be a finite number"),
    ("config.json", {"hidden_act": ["silu"]}, "hidden_act=['silu'] must be a short string"),
    ("config.json", {"model_type": []}, "model_type [] is not supported"),
    ("config.json", {"rope_scaling": "yes"}, "rope_scaling='yes' must be an object"),
    ("config.json", {"hidden_size": True}, "hidden_size=True must be an integer"),
    ("config.json", {"num_attention_heads": "x" * 10**6}, "num_attention_heads='xxxxx"),
    ("tokenizer.json", "{not json", "tokenizer.json is not valid JSON"),
    ("tokenizer.json", "[]", "must hold a JSON object"),
    ("tokenizer.json", {"model": []}, "is not a byte-level BPE tokenizer"),
    ("tokenizer_config.json", "{oops", "tokenizer_config.json is not valid JSON"),
    ("tokenizer_config.json", DEEP, "nested too deeply"),
    # Valid JSON syntax, but no text: the template would fail deep inside when encoded.
    ("tokenizer_config.json", '{"chat_template": "{{ x }}\\ud800"}', "lone UTF-16 surrogate"),
    ("generation_config.json", "nan nan", "generation_config.json is not valid JSON"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.checkpoints.llama_fixtures import write_checkpoint

    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "llama"), "llama")


def _one_line_refusal(argv, capsys, what):
    import tensorflow  # noqa: F401  (loaded first: its own memory is not the input's)
    import tensorflow_text  # noqa: F401

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.time()
    assert main(argv) == 2, what
    seconds = time.time() - started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (what, err[:500])
    assert len(err) < 600, (what, len(err))  # an excerpt of a value, never the value
    assert seconds < 20, (what, seconds)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak  # KiB
    assert grown < 300 << 10, (what, grown)
    return err


@pytest.mark.parametrize("case", range(len(HF_CASES)))
def test_import_hf_refuses_spoiled_files_in_one_line(checkpoint, tmp_path, case, capsys):
    name, spoil, message = HF_CASES[case]
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(checkpoint, ckpt)
    path = os.path.join(ckpt, name)
    if isinstance(spoil, dict):
        with open(path, encoding="utf-8") as f:
            value = {**json.load(f), **spoil}
        text = json.dumps(value)  # NaN and Infinity as Python writes them
    else:
        text = spoil
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    out = tmp_path / "out"
    err = _one_line_refusal(["import-hf", "--checkpoint", ckpt, "--out", str(out)], capsys,
                            (name, message))
    assert message in err and name in err, err
    assert not out.exists()


def test_bert_tokenizer_of_special_tokens_only_is_a_vocabulary_refusal(tmp_path, capsys):
    from tests.checkpoints.bert_fixtures import write_checkpoint

    ckpt = write_checkpoint(str(tmp_path / "bert"), "classifier")[0]
    path = os.path.join(ckpt, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(specials)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    err = _one_line_refusal(["import-hf", "--checkpoint", ckpt, "--out",
                             str(tmp_path / "out")], capsys, "bert")
    assert "the WordPiece vocabulary has 5 tokens but config.json's vocab_size is" in err


def _gguf_with(path, **fields):
    """A GGUF holding only metadata (llama architecture), some of it overridden."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    meta = {"block_count": 2, "context_length": 64, "embedding_length": 64,
            "feed_forward_length": 96, "attention.head_count": 4, "vocab_size": 400, **fields}
    for key, value in meta.items():
        if isinstance(value, str):
            w.add_string(f"llama.{key}", value)
        elif isinstance(value, float):
            w.add_float32(f"llama.{key}", value)
        else:
            w.add_uint32(f"llama.{key}", value)
    w.add_tokenizer_model("gpt2")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("spoil, message", [
    ("garbage", "is not a readable GGUF file"),
    ("truncated", "is not a readable GGUF file"),
    ({"block_count": 1_000_000}, "llama.block_count=1000000 must be an integer from 1 to"),
    ({"attention.head_count": "four"}, "llama.attention.head_count='four' must be an integer"),
    ({"attention.layer_norm_rms_epsilon": float("nan")}, "must be a finite number"),
])
def test_import_gguf_refuses_spoiled_files_in_one_line(tmp_path, spoil, message, capsys):
    path = str(tmp_path / "model.gguf")
    if spoil == "garbage":
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
    elif spoil == "truncated":
        with open(_gguf_with(str(tmp_path / "whole.gguf")), "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    else:
        _gguf_with(path, **spoil)
    err = _one_line_refusal(["import-gguf", "--gguf", path, "--out", str(tmp_path / "out")],
                            capsys, spoil)
    assert message in err, err
    assert not (tmp_path / "out").exists()


TEMPLATES = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "took longer than 5 s"),
    ("{{ 'x' * 10**9 }}", "more than 512 MiB of memory"),
    ("{{ 1 / 0 }}", "the chat template failed: ZeroDivisionError"),
    ("{{ messages[0]['content'].nope() }}", "the chat template refused the conversation"),
]


@pytest.mark.parametrize("template, message", TEMPLATES)
def test_chat_templates_run_within_limits(tiny_run, tmp_path, template, message):
    path = tmp_path / "template.jinja"
    path.write_text(template, encoding="utf-8")
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "tfllm.cli", "chat", "--run", tiny_run,
                           "--template", str(path), "--message", "hi", "--max-new-tokens", "8"],
                          capture_output=True,
                          text=True, cwd=REPO, timeout=300, env=quiet_env())
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert time.time() - started < 60
    # The template's worker is the process the limits stop; ours stays small.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 3 << 20  # KiB


@pytest.mark.slow
def test_saved_model_export_notes_a_template_that_never_ends(tiny_run, tmp_path):
    from tfllm import runs

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    config = runs.read_run_config(run)
    config["chat"] = {"template": TEMPLATES[0][0], "bos_token": "", "eos_token": "",
                      "end_of_turn": []}
    runs.write_run_config(run, config)
    started = time.time()
    # --no-verify: the note is what is tested (the export itself is test_saved_model's).
    proc = call_module("export.saved_model", "--run", run, "--out", str(tmp_path / "models"),
                       "--name", "m", "--no-verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: no chat signatures: the chat template took longer than 5 s" in proc.stderr
    assert "chat(" not in proc.stdout and "generate(" in proc.stdout
    assert time.time() - started < 300
