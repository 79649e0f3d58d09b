import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import shakespeare_text
from tfllm.errors import TokenizerError
from tfllm.tokenizers import SentencePieceTokenizer

TEXT = shakespeare_text(100_000)


@pytest.fixture(scope="module")
def char_tok():
    return SentencePieceTokenizer.train([TEXT], model_type="char")


def test_char_vocab_is_corpus_characters_plus_specials(char_tok):
    assert char_tok.vocab_size == len(set(TEXT)) + 4
    assert (char_tok.pad_id, char_tok.unk_id, char_tok.bos_id, char_tok.eos_id) == (0, 1, 2, 3)


def test_round_trip_keeps_newlines_and_spaces(char_tok):
    s = "First Citizen:\nBefore we  proceed\n\n any further,"
    ids = char_tok.encode(s)
    assert len(ids) == len(s)  # one id per character
    assert char_tok.decode(ids) == s
    graph_ids = char_tok.tokenize(tf.constant(s)).numpy().tolist()
    assert graph_ids == ids
    assert char_tok.detokenize(tf.constant(ids)).numpy().decode() == s


def test_in_graph_batch_is_ragged(char_tok):
    @tf.function
    def f(x):
        return char_tok.tokenize(x).row_lengths()

    np.testing.assert_array_equal(f(tf.constant(["ab", "abcd", ""])), [2, 4, 0])


def test_save_and_load(char_tok, tmp_path):
    path = str(tmp_path / "tok.model")
    char_tok.save(path)
    loaded = SentencePieceTokenizer.load(path)
    assert loaded.encode("ROMEO:\n") == char_tok.encode("ROMEO:\n")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_subword_tokenizers(model_type):
    tok = SentencePieceTokenizer.train([TEXT], model_type=model_type, vocab_size=500)
    assert tok.vocab_size == 500
    s = "KING RICHARD III:\nWhat say you?"
    ids = tok.encode(s)
    assert len(ids) < len(s)  # subwords merge characters
    assert tok.decode(ids) == s


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size"):
        SentencePieceTokenizer.train([TEXT], model_type="bpe")
    with pytest.raises(TokenizerError, match="smaller --vocab-size"):
        SentencePieceTokenizer.train(["tiny corpus"], model_type="unigram", vocab_size=5000)
    with pytest.raises(TokenizerError, match="does not exist"):
        SentencePieceTokenizer.load(str(tmp_path / "missing.model"))
    with pytest.raises(TokenizerError, match="not a valid"):
        SentencePieceTokenizer(b"garbage")
