"""export.hf: a run written back as a Hugging Face checkpoint.

The written tensors must be the checkpoint a run was imported from, bit for bit; where a
Python with torch and transformers is at hand (this environment, or the one
TFLLM_TORCH_PYTHON names, e.g. the benchmarks' venv), `transformers` must load the
directory and give the run's logits (max abs difference <= 1e-4) and token ids.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.checkpoints.llama_fixtures import write_checkpoint
from tests.conftest import call_module

TEXT = "Hello world, this is a test."

TRANSFORMERS_LOGITS = r"""
import json, sys
import torch, transformers
folder, ids, text = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].numpy()
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
print(json.dumps({"logits": logits.tolist(), "ids": tokenizer(text)["input_ids"],
                  "class": type(model).__name__}))
"""


def torch_python():
    """A Python that has torch and transformers, or None."""
    named = os.environ.get("TFLLM_TORCH_PYTHON")
    if named:
        return named
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        return sys.executable
    return None


def transformers_view(folder, ids, text=TEXT):
    python = torch_python()
    if python is None:
        pytest.skip("torch and transformers are not installed here; set TFLLM_TORCH_PYTHON "
                    "to a Python that has them (the benchmarks' venv) to compare")
    proc = subprocess.run([python, "-c", TRANSFORMERS_LOGITS, folder, json.dumps(ids), text],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def exported_llama(request, tmp_path_factory):
    """(checkpoint, run, export) of a random tiny checkpoint of each family."""
    from export.hf import export_hf
    from tfllm.checkpoints import import_hf

    root = tmp_path_factory.mktemp(f"hf-{request.param}")
    ckpt = write_checkpoint(str(root / "ckpt"), request.param)
    run = import_hf(ckpt, str(root / "run"), max_len=64)
    report = export_hf(run, str(root / "out"))
    return ckpt, run, str(root / "out"), report


def test_written_tensors_are_the_imported_checkpoint(exported_llama):
    from safetensors.numpy import load_file

    ckpt, _, out, report = exported_llama
    original = load_file(os.path.join(ckpt, "model.safetensors"))
    written = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(written) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(written[name], value, err_msg=name)
    assert report["max_logit_diff"] <= 1e-4


def test_config_and_tokenizer_files_describe_the_run(exported_llama):
    ckpt, run, out, report = exported_llama
    with open(os.path.join(ckpt, "config.json")) as f:
        source = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == source["model_type"] == report["model_type"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "vocab_size", "tie_word_embeddings"):
        assert config[key] == source[key], key
    assert config["num_key_value_heads"] == source["num_key_value_heads"]
    assert config["max_position_embeddings"] == 64  # the run's context
    assert config["eos_token_id"] == [1, 2] and config["bos_token_id"] == 0
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        written = json.load(f)
    with open(os.path.join(ckpt, "tokenizer.json"), encoding="utf-8") as f:
        original = json.load(f)
    assert written["model"] == original["model"]
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tok = json.load(f)
    assert tok["add_bos_token"] == (source["model_type"] == "llama")


def test_transformers_loads_it_with_the_runs_logits(exported_llama):
    from tfllm import runs

    _, run, out, _ = exported_llama
    ids = [1, 5, 9, 2, 7, 3, 11]
    view = transformers_view(out, ids)
    model = runs.load(run)
    expected = model(np.array([ids], np.int32))[0].numpy()
    assert np.abs(np.array(view["logits"]) - expected).max() <= 1e-4
    assert view["ids"] == model.tokenizer.encode(TEXT)


def test_gpt2_style_run_with_its_sentencepiece_tokenizer(tiny_run, tmp_path):
    from export.hf import export_hf
    from tfllm import runs

    out = str(tmp_path / "hf")
    report = export_hf(tiny_run, out)
    assert report["model_type"] == "gpt2" and report["max_logit_diff"] <= 1e-4
    assert os.path.isfile(os.path.join(out, "tokenizer.model"))
    ids = [1, 5, 9, 2, 7]
    view = transformers_view(out, ids, "ROMEO: Hello there")
    model = runs.load(tiny_run)
    assert view["class"] == "GPT2LMHeadModel"
    expected = model(np.array([ids], np.int32))[0].numpy()
    assert np.abs(np.array(view["logits"]) - expected).max() <= 1e-4
    assert view["ids"] == model.tokenizer.encode("ROMEO: Hello there")


def test_refusals(tiny_run, exported_llama, tmp_path):
    from export.hf import HFExportError, export_hf

    _, run, out, _ = exported_llama
    from tfllm.publish import PublishError

    with pytest.raises(PublishError, match="--overwrite"):
        export_hf(run, out)
    with pytest.raises(HFExportError, match="--dtype"):
        export_hf(run, str(tmp_path / "x"), dtype="int4")
    # A config with no transformers counterpart is named, not written.
    from export.hf import architecture
    from tfllm.config import ModelConfig

    odd = ModelConfig(vocab_size=50, num_layers=1, d_model=16, num_heads=2, ffn_dim=32,
                      max_len=8, position_embedding="rope", norm="layernorm")
    with pytest.raises(HFExportError, match="no transformers counterpart"):
        architecture(odd)


def test_cli_reports_and_fails_in_one_line(tiny_run, tmp_path):
    ok = call_module("export.hf", "--run", tiny_run, "--out", str(tmp_path / "cli"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "checkpoint written to" in ok.stdout and "logits within" in ok.stdout
    bad = call_module("export.hf", "--run", str(tmp_path / "none"), "--out",
                      str(tmp_path / "x"))
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
