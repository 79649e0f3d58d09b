"""An imported Hugging Face Llama (GQA cache, RoPE with llama3 scaling, RMSNorm, SwiGLU,
untied head, a byte-level BPE tokenizer.json that adds BOS, two EOS ids) through every
exporter, at a `--max-len` other than the run's: each one's greedy decoding equals
CausalLM.generate (at that length) token for token."""

import json
import subprocess
import sys

import pytest

import tfllm
from tests.checkpoints.llama_fixtures import write_checkpoint
from tests.conftest import run_module

PROMPTS = ["ROMEO:", "First Citizen:\nWe"]
MAX_LEN = 48  # the exports' --max-len; the run itself keeps 64


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    from tfllm.checkpoints import import_hf

    root = tmp_path_factory.mktemp("llama")
    ckpt = write_checkpoint(str(root / "ckpt"), "llama", seed=4)
    return import_hf(ckpt, str(root / "run"), max_len=64)


@pytest.fixture(scope="module")
def lm(llama_run):
    return tfllm.load(llama_run, max_len=MAX_LEN)


def _export(module, *args):
    return run_module(module, *args)


def test_the_cache_holds_only_the_key_value_heads_at_the_chosen_length(lm, llama_run):
    caches = lm.backbone.empty_caches(1)
    assert tuple(caches[0][0].shape) == (1, 2, MAX_LEN, 16)  # 2 K/V heads for 4 query heads
    assert lm.tokenizer.add_bos and lm.tokenizer.eos_ids == [1, 2]
    import numpy as np

    ids = np.arange(1, 30, dtype=np.int32)[None]
    np.testing.assert_allclose(lm(ids).numpy(), tfllm.load(llama_run)(ids).numpy(), atol=1e-5)


@pytest.mark.slow
def test_tflite_runner_equals_generate(llama_run, lm, tmp_path):
    from export.tflite import TFLiteRunner

    path = str(tmp_path / "llama.tflite")
    _export("export.tflite", "--run", llama_run, "--out", path, "--prefill-lengths", "8", "32",
            "--max-len", str(MAX_LEN))
    runner = TFLiteRunner(path)
    assert runner.max_len == MAX_LEN
    for prompt in PROMPTS:
        n = MAX_LEN - len(lm.tokenizer.encode(prompt)) - 1
        ids = runner.generate(lm.tokenizer.encode(prompt), n, end_token_id=lm.tokenizer.eos_id)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=n)


@pytest.mark.slow
def test_onnx_decoder_equals_generate(llama_run, lm, tmp_path):
    from export.onnx import OnnxDecoder, decode_path

    path = str(tmp_path / "llama.onnx")
    _export("export.onnx", "--run", llama_run, "--out", path, "--max-len", str(MAX_LEN))
    decoder = OnnxDecoder(decode_path(path))
    for prompt in PROMPTS:
        ids = decoder.generate(lm.tokenizer.encode(prompt), 12, end_token_id=lm.tokenizer.eos_id)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=12)


# A --json-schema signature (#36): nested object, enum, integer, string with escapes.
FLAGS = {"type": "object", "properties": {
    "level": {"enum": ["low", "high"]}, "n": {"type": "integer"},
    "note": {"type": "string", "maxLength": 4}}, "required": ["level", "n"]}


@pytest.mark.slow
def test_saved_model_in_a_fresh_process_equals_generate(llama_run, lm, tmp_path):
    """generate, and generate_flags (the FLAGS schema's automaton stored in the SavedModel):
    greedy text as CausalLM.generate with the same schema; sampled rows valid JSON; a
    max_new_tokens below the schema's shortest answer an InvalidArgument."""
    import jsonschema

    schema_file = tmp_path / "flags.json"
    schema_file.write_text(json.dumps(FLAGS))
    _export("export.saved_model", "--run", llama_run, "--out", str(tmp_path), "--name",
            "llama", "--no-verify", "--max-len", str(MAX_LEN),
            "--json-schema", f"flags={schema_file}")
    code = ("import json, sys, tensorflow as tf, tensorflow_text\n"
            "m = tf.saved_model.load(sys.argv[1]); p = json.loads(sys.argv[2]); n = len(p)\n"
            "def run(sig, new, temperature):\n"
            "    out = m.signatures[sig](prompt=tf.constant(p), max_new_tokens="
            "tf.fill([n], new), temperature=tf.fill([n], temperature), top_k=tf.zeros([n], "
            "tf.int32), top_p=tf.ones([n]), seed=tf.range(n))\n"
            "    return [t.decode('utf-8', 'replace') for t in out['text'].numpy()]\n"
            "got = [run('generate', 12, 0.0), run('generate_flags', 24, 0.0),"
            " run('generate_flags', 24, 1.0)]\n"
            "try:\n"
            "    run('generate_flags', 3, 0.0)\n"
            "except tf.errors.InvalidArgumentError as e:\n"
            "    got.append(e.message)\n"
            "print(json.dumps(got))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "llama" / "1"),
                           json.dumps(PROMPTS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain, greedy, sampled, refused = json.loads(proc.stdout.splitlines()[-1])
    assert plain == lm.generate(PROMPTS, max_new_tokens=12)
    assert greedy == lm.generate(PROMPTS, max_new_tokens=24, json_schema=FLAGS)
    for text in greedy + sampled:
        jsonschema.validate(json.loads(text), FLAGS)
    shortest = tfllm.models.generation.constraint_of(lm, json_schema=FLAGS) \
        .shortest_completion()
    assert f"max_new_tokens must be at least {shortest}" in refused


@pytest.mark.slow
def test_litertlm_bundle_with_hf_tokenizer_equals_generate(llama_run, lm, tmp_path):
    from export.litertlm import engine_generate

    path = str(tmp_path / "llama.litertlm")
    _export("export.litertlm", "--run", llama_run, "--out", path, "--prefill-lengths", "8",
            "32", "--max-len", str(MAX_LEN))
    for prompt in PROMPTS:
        assert engine_generate(path, prompt, 12) == lm.generate(prompt, max_new_tokens=12)


def test_imported_qwen3_bundle_names_its_family_and_equals_generate(tmp_path):
    import io
    import re

    from litert_lm_builder.litertlm_peek import peek_litertlm_file

    from export.litertlm import engine_generate, runtime_model_type
    from tfllm import runs
    from tfllm.checkpoints import import_hf

    ckpt = write_checkpoint(str(tmp_path / "ckpt"), "qwen3", seed=2)
    run = import_hf(ckpt, str(tmp_path / "run"), max_len=48)
    assert runtime_model_type(runs.read_run_config(run)) == "qwen3"
    path = str(tmp_path / "qwen3.litertlm")
    _export("export.litertlm", "--run", run, "--out", path, "--prefill-lengths", "8")
    listing = io.StringIO()
    peek_litertlm_file(path, None, listing)
    assert re.search(r"llm_model_type \{\s*qwen3 \{", listing.getvalue())
    model = tfllm.load(run)
    assert engine_generate(path, "ROMEO:", 10) == model.generate("ROMEO:", max_new_tokens=10)
