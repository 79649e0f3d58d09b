"""An imported tiny Gemma 3 (sliding-window layers with their own rotary base, one global
layer, QK-norm, post-norms, scaled embeddings, one key/value head, a SentencePiece
tokenizer.model that adds BOS, `<end_of_turn>` among the EOS ids) through every exporter,
with prompts and continuations longer than its window: each one's greedy decoding equals
CausalLM.generate token for token. Every exporter keeps window-long ring caches for the
sliding layers."""

import json
import subprocess
import sys

import pytest

import tfllm
from tests.checkpoints.gemma_fixtures import import_tiny_gemma3
from tests.conftest import run_module

PROMPTS = ["ROMEO: I would", "First Citizen:\nWe are accounted poor citizens"]
WINDOW = 6
NEW = 14  # past the window from either prompt


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    return import_tiny_gemma3(str(tmp_path_factory.mktemp("gemma")), WINDOW, 96)


@pytest.fixture(scope="module")
def lm(gemma_run):
    return tfllm.load(gemma_run)


def _export(module, *args):
    return run_module(module, *args)


def test_the_run_is_a_windowed_gemma3(lm):
    cfg = lm.config
    assert (cfg.sliding_window, cfg.attention_types) == (
        WINDOW, ["sliding_attention", "sliding_attention", "full_attention"])
    assert len(lm.tokenizer.encode(PROMPTS[1])) > WINDOW


@pytest.mark.slow
def test_tflite_runner_equals_generate(gemma_run, lm, tmp_path):
    from export.tflite import TFLiteRunner

    path = str(tmp_path / "gemma.tflite")
    _export("export.tflite", "--run", gemma_run, "--out", path, "--prefill-lengths", "8", "32")
    runner = TFLiteRunner(path)
    # The sliding layers keep window-long rings; the `mask` input carries the context (the
    # LiteRT-LM runtime reads it there; without one, from a cache: a ring's window).
    assert [runner.cache_shapes[f"kv_cache_{kv}_{i}"][2] for i in range(3) for kv in "kv"] \
        == [WINDOW] * 4 + [96] * 2
    inputs = runner.prefills[32].get_input_details()
    assert tuple(inputs["mask"]["shape"]) == (1, 1, 32, 96) and runner.max_len == 96
    for prompt in PROMPTS:
        ids = runner.generate(lm.tokenizer.encode(prompt), NEW, end_token_id=None)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=NEW,
                                                       stop_at_end=False)


@pytest.mark.slow
def test_onnx_decoder_equals_generate(gemma_run, lm, tmp_path):
    from export.onnx import OnnxDecoder, decode_path

    path = str(tmp_path / "gemma.onnx")
    _export("export.onnx", "--run", gemma_run, "--out", path)
    decoder = OnnxDecoder(decode_path(path))
    for prompt in PROMPTS:
        ids = decoder.generate(lm.tokenizer.encode(prompt), NEW, end_token_id=None)
        assert lm.tokenizer.decode(ids) == lm.generate(prompt, max_new_tokens=NEW,
                                                       stop_at_end=False)


@pytest.mark.slow
def test_saved_model_in_a_fresh_process_equals_generate(gemma_run, lm, tmp_path):
    _export("export.saved_model", "--run", gemma_run, "--out", str(tmp_path), "--name",
            "gemma", "--no-verify")
    code = ("import json, sys, tensorflow as tf, tensorflow_text\n"
            "m = tf.saved_model.load(sys.argv[1]); p = json.loads(sys.argv[2]); n = len(p)\n"
            f"out = m.signatures['generate'](prompt=tf.constant(p), max_new_tokens="
            f"tf.fill([n], {NEW}), temperature=tf.zeros([n]), top_k=tf.zeros([n], tf.int32), "
            "top_p=tf.ones([n]), seed=tf.zeros([n], tf.int32))\n"
            "print(json.dumps([t.decode('utf-8', 'replace') for t in out['text'].numpy()]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "gemma" / "1"),
                           json.dumps(PROMPTS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == lm.generate(PROMPTS,
                                                                   max_new_tokens=NEW)


@pytest.mark.slow
def test_litertlm_bundle_names_gemma3_and_equals_generate(gemma_run, lm, tmp_path):
    import io
    import re

    from litert_lm_builder.litertlm_peek import peek_litertlm_file

    from export.litertlm import engine_generate

    path = str(tmp_path / "gemma.litertlm")
    _export("export.litertlm", "--run", gemma_run, "--out", path, "--prefill-lengths", "8",
            "32")
    listing = io.StringIO()
    peek_litertlm_file(path, None, listing)
    assert re.search(r"llm_model_type \{\s*gemma3 \{", listing.getvalue())
    # The last prompt spans three prefills and twelve windows of the rings.
    long = PROMPTS[1] + ", the patricians good. What authority surfeits"
    assert len(lm.tokenizer.encode(long)) > 2 * 32
    for prompt in PROMPTS + [long]:
        assert engine_generate(path, prompt, NEW) == lm.generate(prompt, max_new_tokens=NEW)
