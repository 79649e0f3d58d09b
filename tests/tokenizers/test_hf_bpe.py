"""Hugging Face byte-level BPE in-graph (#15): ids equal the `tokenizers` library's."""

import random

import numpy as np
import pytest
import tensorflow as tf

from tests.tokenizers.hf_fixtures import FAMILIES, MULTILINGUAL, SPECIALS, make_tokenizer_json
from tfllm.errors import TokenizerError
from tfllm.tokenizers.hf_bpe import HFBytePairTokenizer, translate_pattern


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tok")
    return {fam: make_tokenizer_json(str(root / f"{fam}.json"), fam) for fam in FAMILIES}


def _edge_texts():
    # Whitespace runs before words/digits/punctuation/newlines, digits next to spaces,
    # contractions in both cases, special tokens glued to text, Unicode spaces.
    alphabet = list("ab Z1 2\n\t\r.'s!  \u00a0\u3000é你😀-") + [
        "'S", "'ll", "<|im_end|>", "<|endoftext|>", "  ", "\n\n"]
    rng = random.Random(0)
    fixed = ["", " ", "  ", "a  1", "x.\n\ny", "\n  y", "a \tb", "1 2  3", " \n", "a\n", "'s"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
                    for _ in range(200)]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_equal_the_tokenizers_library(tokenizer_files, family):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(tokenizer_files[family])
    tok = HFBytePairTokenizer.from_tokenizer_json(tokenizer_files[family], eos_ids=[0])
    want = ref.encode(MULTILINGUAL).ids
    assert tok.encode(MULTILINGUAL) == want
    assert tok.decode(want) == ref.decode(want, skip_special_tokens=False)
    texts = _edge_texts()
    got = tok.tokenize(tf.constant(texts))  # the batched graph path
    mismatches = [t for t, g in zip(texts, got) if [int(i) for i in g] != ref.encode(t).ids]
    assert mismatches == []


def test_special_tokens_are_single_ids_and_add_bos(tokenizer_files):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(tokenizer_files["smollm2"])
    im_start = ref.token_to_id("<|im_start|>")
    tok = HFBytePairTokenizer.from_tokenizer_json(tokenizer_files["smollm2"], bos_id=im_start,
                                                  eos_ids=[2, 1], add_bos=True)
    ids = tok.encode("<|im_start|>user<|im_end|>")
    assert ids[:2] == [im_start, im_start] and ids[-1] == ref.token_to_id("<|im_end|>")
    assert tok.eos_id == 2 and tok.eos_ids == [2, 1] and tok.pad_id == 2
    assert [s for s in SPECIALS["smollm2"]] == tok.added_tokens


def test_graph_and_eager_agree(tokenizer_files):
    tok = HFBytePairTokenizer.from_tokenizer_json(tokenizer_files["llama3"], eos_ids=[0])
    graph = tf.function(lambda t: tok.tokenize(t).to_tensor(-1))
    dense = graph(tf.constant([MULTILINGUAL, "x  1"])).numpy()
    assert [int(i) for i in dense[0] if i >= 0] == tok.encode(MULTILINGUAL)
    np.testing.assert_array_equal(dense[1][dense[1] >= 0], tok.encode("x  1"))


def test_bad_tokenizer_files(tmp_path, tokenizer_files):
    import json

    with pytest.raises(TokenizerError, match="does not exist"):
        HFBytePairTokenizer.from_tokenizer_json(str(tmp_path / "none.json"), eos_ids=[0])
    spec = json.load(open(tokenizer_files["gpt2"]))
    spec["model"]["type"] = "WordPiece"
    (tmp_path / "wp.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="only plain byte-level BPE"):
        HFBytePairTokenizer.from_tokenizer_json(str(tmp_path / "wp.json"), eos_ids=[0])
    with pytest.raises(TokenizerError, match="do not fit"):
        HFBytePairTokenizer.from_tokenizer_json(tokenizer_files["gpt2"], eos_ids=[10 ** 6])
    with pytest.raises(TokenizerError, match="look-around"):
        translate_pattern(r"a(?=b)")


def test_a_byte_missing_from_the_vocabulary_is_dropped_as_hugging_face_drops_it(
        tokenizer_files, tmp_path):
    """SmolLM2's vocabulary lacks the byte of \\x04 (gettext's context separator): the
    `tokenizers` library, with no unknown token, leaves it out; so must we (not -1)."""
    import json

    from tokenizers import Tokenizer

    with open(tokenizer_files["smollm2"], encoding="utf-8") as f:
        spec = json.load(f)
    byte_char = chr(0x104)  # byte-level BPE's stand-in for byte 0x04
    vocab = spec["model"]["vocab"]
    del vocab[byte_char]
    spec["model"]["merges"] = [m for m in spec["model"]["merges"]
                               if byte_char not in (m if isinstance(m, str) else "".join(m))]
    path = tmp_path / "no-0x04.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    ref = Tokenizer.from_file(str(path))
    tok = HFBytePairTokenizer.from_tokenizer_json(str(path), eos_ids=[0])
    for text in ["label\x04Insert", "\x04", "a \x04 b\x04"]:
        assert tok.encode(text) == ref.encode(text).ids
        assert -1 not in tok.encode(text)
    got = tok.tokenize(tf.constant(["label\x04Insert", "\x04"]))
    assert [[int(i) for i in g] for g in got] == [ref.encode("label\x04Insert").ids, []]
