"""Import Llama-family Hugging Face checkpoints (#15): logits equal an independent NumPy
forward pass of the checkpoint's own tensors; bad checkpoints fail in one line, writing
nothing."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from tests.checkpoints.llama_fixtures import VARIANTS, numpy_logits, write_checkpoint
from tfllm.checkpoints import CheckpointError, import_hf


def _logits(run, ids):
    import tfllm

    return tfllm.load(run)(ids).numpy()


def _hf(ckpt):
    from safetensors.numpy import load_file

    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    files = [n for n in os.listdir(ckpt) if n.endswith(".safetensors")]
    tensors = {}
    for n in files:
        tensors.update(load_file(os.path.join(ckpt, n)))
    return cfg, tensors


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_imported_logits_match_numpy_reference(tmp_path, model_type):
    # llama: GQA, llama3 RoPE scaling, untied; mistral: MQA; qwen2: Q/K/V bias, tied;
    # qwen3: QK-norm, head_dim != d_model/heads, transformers 5.x rope_parameters.
    ckpt = write_checkpoint(str(tmp_path / "ckpt"), model_type,
                            shards=2 if model_type == "qwen2" else 1)
    run = import_hf(ckpt, str(tmp_path / "run"), max_len=40)
    cfg, tensors = _hf(ckpt)
    ids = np.random.default_rng(3).integers(0, cfg["vocab_size"], (2, 33)).astype("int32")
    np.testing.assert_allclose(_logits(run, ids), numpy_logits(cfg, tensors, ids), atol=1e-4)
    with open(os.path.join(run, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["max_len"] == 40
    assert saved["tokenizer"]["eos_ids"] == [1, 2] and saved["tokenizer"]["bos_id"] == 0
    assert saved["tokenizer"]["add_bos"] == (model_type == "llama")
    assert saved["tokenizer"]["chat_template"] == "{{ x }}"


@pytest.mark.parametrize("model_type, window", [("mistral", dict(sliding_window=7)),
                                                 ("qwen2", dict(use_sliding_window=True,
                                                                sliding_window=6,
                                                                max_window_layers=1))])
def test_sliding_windows_import_and_match_numpy_reference(tmp_path, model_type, window):
    # Mistral slides on every layer, Qwen2 from max_window_layers on; 33 tokens > window.
    ckpt = write_checkpoint(str(tmp_path / "ckpt"), model_type, **window)
    run = import_hf(ckpt, str(tmp_path / "run"), max_len=40)
    cfg, tensors = _hf(ckpt)
    ids = np.random.default_rng(4).integers(0, cfg["vocab_size"], (1, 33)).astype("int32")
    np.testing.assert_allclose(_logits(run, ids), numpy_logits(cfg, tensors, ids), atol=1e-4)
    saved = json.load(open(os.path.join(run, "config.json")))["model"]
    assert saved["sliding_window"] == window["sliding_window"]
    assert saved["layer_types"] == (None if model_type == "mistral" else
                                    ["full_attention", "sliding_attention"])
    # A window at least as long as the chosen context is full attention: none is kept.
    full = import_hf(ckpt, str(tmp_path / "full"), max_len=window["sliding_window"])
    assert json.load(open(os.path.join(full, "config.json")))["model"]["sliding_window"] is None


def test_cached_greedy_equals_full_forward_and_every_eos_stops(tmp_path):
    import tfllm
    from tfllm.models.generation import GenerationParams, get_generator

    ckpt = write_checkpoint(str(tmp_path / "ckpt"), "llama")
    lm = tfllm.load(import_hf(ckpt, str(tmp_path / "run"), max_len=32))
    prompts = [[5, 9, 2 + 30, 7], [11, 3 + 30]]
    got = get_generator(lm).generate_ids(prompts, GenerationParams(12, stop_at_end=False))
    for prompt, ids in zip(prompts, got):
        seq = list(prompt)
        for _ in range(12):
            seq.append(int(np.argmax(lm(np.array([seq], np.int32)).numpy()[0, -1])))
        assert ids == seq[len(prompt):]
    # Both ids of the checkpoint's EOS list end a row; the text stops before them.
    gen = get_generator(lm)
    assert gen.end_token_ids == (1, 2)
    first = got[0][0]
    from tfllm.models.generation import Generator

    stopped = Generator(lm, end_token_id=[99, first]).generate_ids(
        [prompts[0]], GenerationParams(12))
    assert stopped == [[]]


def test_bf16_and_fp16_checkpoints_and_bfloat16_run(tmp_path):
    ckpt = write_checkpoint(str(tmp_path / "ckpt"), "qwen3", dtype=ml_dtypes.bfloat16)
    cfg, tensors = _hf(ckpt)
    assert tensors["model.norm.weight"].dtype == ml_dtypes.bfloat16
    ids = np.arange(20, dtype=np.int32)[None] % cfg["vocab_size"]
    ref = numpy_logits(cfg, tensors, ids)
    np.testing.assert_allclose(_logits(import_hf(ckpt, str(tmp_path / "f32")), ids), ref,
                               atol=1e-4)
    run = import_hf(ckpt, str(tmp_path / "bf16"), dtype="bfloat16")
    import tfllm

    lm = tfllm.load(run)
    assert {w.dtype for w in lm.weights} == {"bfloat16"}
    got = lm(ids).numpy().astype(np.float64)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()  # bf16 rounding, same model
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
    ckpt16 = write_checkpoint(str(tmp_path / "c16"), "mistral", dtype=np.float16)
    cfg16, t16 = _hf(ckpt16)
    np.testing.assert_allclose(_logits(import_hf(ckpt16, str(tmp_path / "r16")), ids),
                               numpy_logits(cfg16, t16, ids), atol=1e-4)


def _expect_refused(tmp_path, ckpt, match, **kw):
    out = tmp_path / "never"
    with pytest.raises(CheckpointError, match=match):
        import_hf(str(ckpt), str(out), **kw)
    assert not out.exists()


def test_bad_checkpoints_are_refused_naming_the_problem(tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = write_checkpoint(str(tmp_path / "c"), "llama")
    cfg_path = os.path.join(ckpt, "config.json")
    cfg = json.load(open(cfg_path))

    def with_config(**changes):
        json.dump({**cfg, **changes}, open(cfg_path, "w"))

    with_config(model_type="falcon")
    _expect_refused(tmp_path, ckpt, "model_type 'falcon' is not supported; supported: bert, "
                                    "gemma, gemma2, gemma3, gemma3_text, gpt2, llama, mistral, "
                                    "qwen2, qwen3")
    with_config(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    _expect_refused(tmp_path, ckpt, "rope scaling type 'yarn' is not supported")
    with_config(model_type="qwen2", use_sliding_window=True, sliding_window=8,
                layer_types=["full_attention", "local_attention"])
    _expect_refused(tmp_path, ckpt, "unknown layer_types entry 'local_attention'")
    with_config()
    _expect_refused(tmp_path, ckpt, "--max-len 5000 is above the 4096 positions",
                    max_len=5000)
    weights = os.path.join(ckpt, "model.safetensors")
    tensors = load_file(weights)
    good = dict(tensors)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = np.ones(7, np.float32)
    save_file(tensors, weights)
    _expect_refused(tmp_path, ckpt, r"missing tensors: model.layers.1.mlp.up_proj.weight; "
                                    r"mis-shaped tensors: model.norm.weight \(7,\)")
    save_file(good, weights)
    os.rename(os.path.join(ckpt, "tokenizer.json"), os.path.join(ckpt, "t.json"))
    _expect_refused(tmp_path, ckpt, "no tokenizer.json or tokenizer.model")
    os.rename(os.path.join(ckpt, "t.json"), os.path.join(ckpt, "tokenizer.json"))
    os.rename(weights, os.path.join(ckpt, "pytorch_model.bin"))
    _expect_refused(tmp_path, ckpt, "pickle checkpoint.*convert it to safetensors")


def test_cli_one_line_errors(tmp_path):
    from tests.conftest import call_cli

    ckpt = write_checkpoint(str(tmp_path / "c"), "qwen2")
    json.dump({**json.load(open(os.path.join(ckpt, "config.json"))), "model_type": "phi"},
              open(os.path.join(ckpt, "config.json"), "w"))
    r = call_cli(["import-hf", "--checkpoint", ckpt, "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "model_type 'phi' is not supported" in r.stderr


def test_sentencepiece_tokenizer_model_keeps_its_special_ids(tmp_path):
    # Llama 2 / Mistral ship tokenizer.model with unk 0, bos 1, eos 2 and add BOS.
    import io

    import sentencepiece as spm

    from tests.tokenizers.hf_fixtures import MULTILINGUAL, corpus

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model,
                                   vocab_size=600, model_type="bpe", unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    ckpt = write_checkpoint(str(tmp_path / "c"), "mistral", vocab_size=600)
    os.remove(os.path.join(ckpt, "tokenizer.json"))
    (tmp_path / "c" / "tokenizer.model").write_bytes(model.getvalue())
    json.dump({"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>"},
              open(os.path.join(ckpt, "tokenizer_config.json"), "w"))
    os.remove(os.path.join(ckpt, "generation_config.json"))
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    json.dump({**cfg, "bos_token_id": 1, "eos_token_id": 2},
              open(os.path.join(ckpt, "config.json"), "w"))
    import tfllm

    lm = tfllm.load(import_hf(ckpt, str(tmp_path / "run")))
    ref = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tok = lm.tokenizer
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (1, [2], 2)
    assert tok.encode(MULTILINGUAL) == [1] + ref.encode(MULTILINGUAL)
    import tensorflow as tf

    graph = tok.tokenize(tf.constant([MULTILINGUAL]))[0].numpy().tolist()
    assert graph == [1] + ref.encode(MULTILINGUAL)
    assert tok.decode(ref.encode("Hello world")) == "Hello world"


def test_evaluate_an_imported_run_on_text_files(tmp_path, capsys):
    # Imported runs store no training settings: evaluate takes --data and its defaults.
    from tfllm.cli import main

    ckpt = write_checkpoint(str(tmp_path / "c"), "qwen2")
    run = import_hf(ckpt, str(tmp_path / "run"), max_len=32)
    (tmp_path / "a.txt").write_text("Once upon a time, there were 12 little rockets.\n" * 200)
    assert main(["evaluate", "--run", run, "--data", f"text:{tmp_path}/*.txt",
                 "--eval-steps", "2", "--batch-size", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 2 batches of 4 windows of 32 tokens; random weights: any finite positive loss.
    assert metrics["tokens"] == 2 * 4 * 32 and 0 < metrics["loss"] < float("inf")
