"""GPT-2 import: a random checkpoint in Hugging Face's layout vs an independent NumPy GPT-2."""

import collections
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import tfllm
from tfllm.cli import main
from tfllm.checkpoints.gpt2 import CheckpointError, import_gpt2

CONFIG = dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=4, n_positions=64,
              layer_norm_epsilon=1e-5, activation_function="gelu_new", resid_pdrop=0.1)
TEXT = "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs home."


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_bpe(text, n_merges):
    """A minimal byte-level BPE trainer: enough merges to make multi-byte tokens."""
    table = bytes_to_unicode()
    # Words keep their leading space, which the byte table maps to "Ġ" as GPT-2 does.
    words = [[table[b] for b in ((" " if i else "") + w).encode("utf-8")]
             for i, w in enumerate(text.split(" "))]
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def random_weights(cfg, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    d, f = cfg["n_embd"], 4 * cfg["n_embd"]

    def r(*shape, scale=0.2):
        return (rng.normal(size=shape) * scale).astype(np.float32)

    w = {"transformer.wte.weight": r(vocab_size, d), "transformer.wpe.weight": r(cfg["n_positions"], d),
         "transformer.ln_f.weight": 1 + r(d, scale=0.1), "transformer.ln_f.bias": r(d, scale=0.1)}
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        w.update({p + "ln_1.weight": 1 + r(d, scale=0.1), p + "ln_1.bias": r(d, scale=0.1),
                  p + "attn.c_attn.weight": r(d, 3 * d), p + "attn.c_attn.bias": r(3 * d),
                  p + "attn.c_proj.weight": r(d, d), p + "attn.c_proj.bias": r(d),
                  p + "ln_2.weight": 1 + r(d, scale=0.1), p + "ln_2.bias": r(d, scale=0.1),
                  p + "mlp.c_fc.weight": r(d, f), p + "mlp.c_fc.bias": r(f),
                  p + "mlp.c_proj.weight": r(f, d), p + "mlp.c_proj.bias": r(d),
                  # The causal-mask buffer older checkpoints carry: not a weight.
                  p + "attn.bias": np.tril(np.ones((1, 1, 64, 64), np.float32))})
    return w


def make_checkpoint(path, weights=None, config=None):
    vocab, merges = train_bpe(TEXT, 40)
    config = dict(CONFIG, vocab_size=len(vocab), **(config or {}))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    weights = random_weights(config, len(vocab)) if weights is None else weights
    save_file(weights, os.path.join(path, "model.safetensors"))
    return config, weights


# -- an independent NumPy GPT-2 ------------------------------------------------------------

def _ln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_gpt2(w, cfg, ids):
    w = {k.replace("transformer.", ""): v.astype(np.float64) for k, v in w.items()}
    t, h = len(ids), cfg["n_head"]
    x = w["wte.weight"][ids] + w["wpe.weight"][:t]
    mask = np.tril(np.ones((t, t), bool))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        a = _ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = np.split(a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, -1)
        q, k, v = (z.reshape(t, h, -1).transpose(1, 0, 2) for z in (q, k, v))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        s = np.where(mask, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(t, -1)
        x = x + o @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = _ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + _gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ \
            w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = _ln(x, w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["wte.weight"].T


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("hf") / "gpt2-tiny")
    config, weights = make_checkpoint(ckpt)
    out = str(tmp_path_factory.mktemp("runs") / "gpt2")
    assert main(["import-hf", "--checkpoint", ckpt, "--out", out]) == 0
    return {"run": out, "config": config, "weights": weights, "ckpt": ckpt,
            "lm": tfllm.load(out)}


def test_tokenizer_round_trip_and_special_token(imported):
    tok = imported["lm"].tokenizer
    ids = tok.encode("The quick brown fox")
    assert tok.decode(ids) == "The quick brown fox"
    assert len(ids) < len("The quick brown fox".encode())  # merges were applied
    vocab = json.load(open(os.path.join(imported["run"], "vocab.json"), encoding="utf-8"))
    assert tok.eos_id == tok.bos_id == vocab["<|endoftext|>"]
    assert tok.encode("fox<|endoftext|>")[-1] == tok.eos_id


def test_gpt2_files_as_one_tokenizer_json_tokenize_the_same(imported):
    # What the LiteRT-LM bundle carries for an imported GPT-2 run (add_hf_tokenizer).
    from tokenizers import Tokenizer

    from tests.tokenizers.hf_fixtures import MULTILINGUAL
    from tfllm.tokenizers.byte_bpe import gpt2_tokenizer_json

    spec = gpt2_tokenizer_json(os.path.join(imported["run"], "vocab.json"),
                               os.path.join(imported["run"], "merges.txt"))
    ref = Tokenizer.from_str(json.dumps(spec))
    text = MULTILINGUAL + "<|endoftext|>"
    assert imported["lm"].tokenizer.encode(text) == ref.encode(text).ids


def test_logits_match_numpy_reference(imported):
    lm, cfg = imported["lm"], imported["config"]
    ids = lm.tokenizer.encode(TEXT)[:40]
    got = lm(np.array([ids], np.int32))[0].numpy()
    ref = numpy_gpt2(imported["weights"], cfg, np.array(ids))
    assert np.abs(got - ref).max() <= 1e-4
    assert lm.config.activation == "gelu" and lm.config.max_len == 64


def test_greedy_generation_matches_numpy_reference(imported):
    lm, cfg = imported["lm"], imported["config"]
    prompt = lm.tokenizer.encode("The quick brown fox")
    ids = list(prompt)
    for _ in range(20):
        ids.append(int(numpy_gpt2(imported["weights"], cfg, np.array(ids))[-1].argmax()))
    _, got = lm.generate("The quick brown fox", max_new_tokens=20, stop_at_end=False,
                         return_ids=True)
    assert got[0] == ids[len(prompt):]


def test_cli_generate_on_imported_run(imported, capsys):
    assert main(["generate", "--run", imported["run"], "--prompt", "The quick brown fox",
                 "--max-new-tokens", "8"]) == 0
    expected = imported["lm"].generate("The quick brown fox", max_new_tokens=8)
    assert capsys.readouterr().out == "The quick brown fox" + expected + "\n"


def test_missing_and_misshaped_tensors_are_named(tmp_path, imported):
    weights = dict(imported["weights"])
    del weights["transformer.h.1.mlp.c_fc.bias"]
    weights["transformer.wpe.weight"] = np.zeros((32, 32), np.float32)
    weights["transformer.h.0.attn.rotary"] = np.zeros((2,), np.float32)
    make_checkpoint(str(tmp_path / "bad"), weights)
    with pytest.raises(CheckpointError) as e:
        import_gpt2(str(tmp_path / "bad"), str(tmp_path / "out"))
    msg = str(e.value)
    assert "missing tensors: h.1.mlp.c_fc.bias" in msg
    assert "wpe.weight (32, 32) (expected (64, 32))" in msg
    assert "unexpected tensors: h.0.attn.rotary" in msg


def test_import_errors(tmp_path, imported, capsys):
    assert main(["import-hf", "--checkpoint", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["import-hf", "--checkpoint", imported["ckpt"], "--out", imported["run"]]) == 2
    assert "--overwrite" in capsys.readouterr().err
    make_checkpoint(str(tmp_path / "act"), config={"activation_function": "swish"})
    with pytest.raises(CheckpointError, match="activation_function 'swish'"):
        import_gpt2(str(tmp_path / "act"), str(tmp_path / "o2"))
    # A config.json missing required fields, or not JSON at all: one line, nothing written.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    assert main(["import-hf", "--checkpoint", str(partial), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks the field(s) n_layer, n_head, vocab_size" in err
    assert len(err.splitlines()) == 1 and "KeyError" not in err
    (partial / "config.json").write_text("{not json")
    assert main(["import-hf", "--checkpoint", str(partial), "--out", str(tmp_path / "o3")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o3")


@pytest.mark.slow
def test_tflite_export_of_imported_run(imported, tmp_path):

    from export.tflite import TFLiteRunner
    from tests.conftest import run_module

    out = str(tmp_path / "gpt2.tflite")
    run_module("export.tflite", "--run", imported["run"], "--out", out, "--prefill-lengths",
               "8", "32")
    lm = imported["lm"]
    ids = lm.tokenizer.encode("The quick brown fox")
    expected = lm.generate([ids], max_new_tokens=20, stop_at_end=False, return_ids=True)[1][0]
    assert TFLiteRunner(out).generate(ids, 20) == expected
