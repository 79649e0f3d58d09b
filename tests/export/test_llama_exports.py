"""A Llama-family run (GQA cache, RoPE, RMSNorm, SwiGLU, QK-norm, untied head) through
every exporter: each one's greedy decoding equals CausalLM.generate token for token."""

import json
import subprocess
import sys

import pytest

import tfllm
from tests.conftest import REPO, TINY

LLAMA = dict(TINY, ffn_dim=48, num_kv_heads=1, position_embedding="rope", norm="rmsnorm",
             ffn="gated", activation="silu", qkv_bias=False, proj_bias=False, qk_norm=True,
             tie_embeddings=False)
PROMPTS = ["ROMEO:", "First Citizen:\nWe"]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, small_corpus):
    from tfllm.training import TrainSettings, train

    out = str(tmp_path_factory.mktemp("runs") / "llama")
    train(out, small_corpus, "llama-char",
          TrainSettings(steps=80, batch_size=16, eval_interval=80, eval_steps=2,
                        warmup_steps=20, lr=3e-3), model_overrides=LLAMA, verbose=0)
    return out


@pytest.fixture(scope="module")
def lm(llama_run):
    return tfllm.load(llama_run)


def _export(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_cache_holds_only_the_key_value_heads(lm):
    caches = lm.backbone.empty_caches(1)
    assert tuple(caches[0][0].shape) == (1, 1, 32, 16)  # one K/V head for two query heads


@pytest.mark.slow
def test_tflite_runner_equals_generate(llama_run, lm, tmp_path):
    from export.tflite import TFLiteRunner

    path = str(tmp_path / "llama.tflite")
    _export("export.tflite", "--run", llama_run, "--out", path, "--prefill-lengths", "8", "32")
    runner = TFLiteRunner(path)
    for prompt in PROMPTS:
        n = 32 - len(lm.tokenizer.encode(prompt)) - 1
        ids = runner.generate(lm.tokenizer.encode(prompt), n, end_token_id=lm.tokenizer.eos_id)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=n)


@pytest.mark.slow
def test_onnx_decoder_equals_generate(llama_run, lm, tmp_path):
    from export.onnx import OnnxDecoder, decode_path

    path = str(tmp_path / "llama.onnx")
    _export("export.onnx", "--run", llama_run, "--out", path)
    decoder = OnnxDecoder(decode_path(path))
    for prompt in PROMPTS:
        ids = decoder.generate(lm.tokenizer.encode(prompt), 12, end_token_id=lm.tokenizer.eos_id)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=12)


@pytest.mark.slow
def test_saved_model_in_a_fresh_process_equals_generate(llama_run, lm, tmp_path):
    _export("export.saved_model", "--run", llama_run, "--out", str(tmp_path), "--name",
            "llama", "--no-verify")
    code = ("import json, sys, tensorflow as tf, tensorflow_text\n"
            "m = tf.saved_model.load(sys.argv[1]); p = json.loads(sys.argv[2]); n = len(p)\n"
            "out = m.signatures['generate'](prompt=tf.constant(p), max_new_tokens="
            "tf.fill([n], 12), temperature=tf.zeros([n]), top_k=tf.zeros([n], tf.int32), "
            "top_p=tf.ones([n]), seed=tf.zeros([n], tf.int32))\n"
            "print(json.dumps([t.decode() for t in out['text'].numpy()]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "llama" / "1"),
                           json.dumps(PROMPTS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == lm.generate(PROMPTS, max_new_tokens=12)
