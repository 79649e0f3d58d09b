import re

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import SHAKESPEARE, shakespeare_text
from tfllm.data import Corpus, check_nonempty, parse_data_spec
from tfllm.data.windows import lm_windows, make_lm_dataset
from tfllm.errors import DataError
from tfllm.tokenizers import SentencePieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer.train([shakespeare_text(100_000)], model_type="char")


def test_parse_specs():
    s = parse_data_spec("tfds:tiny_shakespeare:train")
    assert (s.kind, s.name, s.split, str(s)) == ("tfds", "tiny_shakespeare", "train",
                                                "tfds:tiny_shakespeare:train")
    assert parse_data_spec("text:a/*.txt").name == "a/*.txt"
    for bad in ("tiny_shakespeare", "hf:x", "text:", "tfds:"):
        with pytest.raises(DataError, match="bad data spec") as e:
            parse_data_spec(bad)
        assert "did you mean" not in str(e.value)
    # A bare path names its kind by its extension: the message says the spec to write.
    for bare, meant in (("data/input.txt", "text:data/input.txt"), ("x.JSONL", "jsonl:x.JSONL"),
                        ("glue/train.tsv", "tsv:glue/train.tsv")):
        with pytest.raises(DataError, match=f"; did you mean {re.escape(meant)}[?]$"):
            parse_data_spec(bare)


def test_text_corpus_holds_out_the_tail(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 900)
    (tmp_path / "b.txt").write_text("b" * 100)
    c = Corpus(f"text:{tmp_path}/*.txt")
    train = b"".join(c.train_texts().as_numpy_iterator())
    val = b"".join(c.val_texts().as_numpy_iterator())
    assert train == b"a" * 900 and val == b"b" * 100


def test_windows_are_shifted_by_one(tmp_path, tok):
    (tmp_path / "t.txt").write_text(shakespeare_text(20_000))
    c = Corpus(f"text:{tmp_path}/t.txt")
    ds = make_lm_dataset(c.train_texts(), tok, max_len=32, batch_size=4, training=True, seed=3)
    x, y = next(iter(ds))
    assert x.shape == (4, 32) and y.shape == (4, 32)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # Every window is a contiguous slice of the tokenized training text.
    ids = tok.encode(shakespeare_text(18_000))
    text_ids = ",".join(map(str, ids))
    for row in x.numpy():
        assert ",".join(map(str, row)) in text_ids
    # Seeded: the same seed gives the same batches, another seed others.
    again = next(iter(make_lm_dataset(c.train_texts(), tok, 32, 4, True, seed=3)))[0]
    other = next(iter(make_lm_dataset(c.train_texts(), tok, 32, 4, True, seed=4)))[0]
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)


def test_eval_dataset_covers_validation_in_order(tmp_path, tok):
    text = shakespeare_text(10_000)
    (tmp_path / "t.txt").write_text(text)
    c = Corpus(f"text:{tmp_path}/t.txt")
    batches = list(make_lm_dataset(c.val_texts(), tok, 16, 8, training=False))
    n_tokens = len(tok.encode(text[9_000:])) + 1  # + EOS
    assert sum(len(x) for x, _ in batches) == n_tokens // 17
    assert tok.decode(batches[0][0][0].numpy()) == text[9_000:9_016]


def test_windows_can_each_start_with_bos(tmp_path, tok):
    """Scoring windows for models that only see prompts after BOS (Gemma): each window is
    BOS then text, the documents' own BOS dropped, the text cut as without it."""
    bos_tok = SentencePieceTokenizer(tok.proto, add_bos=True)
    texts = tf.data.Dataset.from_tensor_slices([shakespeare_text(300), shakespeare_text(200)])
    plain = [w.tolist() for w in lm_windows(texts, tok, 16).as_numpy_iterator()]
    started = [w.tolist() for w in
               lm_windows(texts, bos_tok, 16, start_id=bos_tok.bos_id).as_numpy_iterator()]
    stream = tok.encode(shakespeare_text(300)) + [tok.eos_id] + \
        tok.encode(shakespeare_text(200)) + [tok.eos_id]
    assert [len(w) for w in started] == [17] * (len(stream) // 16)
    assert all(w[0] == bos_tok.bos_id for w in started)
    assert sum((w[1:] for w in started), []) == stream[:16 * len(started)]
    # Without start_id nothing changes: the documents' own BOS stay in the stream.
    assert sum(plain, []) == stream[:17 * len(plain)]
    own = [w.tolist() for w in lm_windows(texts, bos_tok, 16).as_numpy_iterator()]
    assert sum(own, [])[:1] == [bos_tok.bos_id] and sum(own, []).count(bos_tok.bos_id) == 2


def test_lm_batches_start_with_bos_where_the_tokenizer_adds_it(tmp_path, tok):
    (tmp_path / "t.txt").write_text(shakespeare_text(20_000))
    c = Corpus(f"text:{tmp_path}/t.txt")
    bos_tok = SentencePieceTokenizer(tok.proto, add_bos=True)
    for training, texts in ((True, c.train_texts()), (False, c.val_texts())):
        x, y = next(iter(make_lm_dataset(texts, bos_tok, 16, 4, training, seed=3)))
        assert x.shape == (4, 16) and (x[:, 0].numpy() == bos_tok.bos_id).all()
        np.testing.assert_array_equal(x[:, 2:], y[:, 1:-1])
        assert bos_tok.bos_id not in y.numpy()
        plain = next(iter(make_lm_dataset(texts, tok, 16, 4, training, seed=3)))[0]
        assert tok.bos_id not in plain.numpy()


def test_tfds_tiny_shakespeare_offline(tok):
    c = Corpus("tfds:tiny_shakespeare", tfds_manual_dir=SHAKESPEARE)
    assert c.describe() == {"spec": "tfds:tiny_shakespeare", "text_feature": "text",
                            "train_split": "train", "val_split": "validation"}
    text = next(c.train_texts().as_numpy_iterator()).decode()
    assert text.startswith("First Citizen:") and len(text) == 1003854
    with pytest.raises(DataError, match="no feature 'body'"):
        Corpus("tfds:tiny_shakespeare", text_feature="body", tfds_manual_dir=SHAKESPEARE)
    with pytest.raises(DataError, match="no split 'nope'"):
        Corpus("tfds:tiny_shakespeare:nope", tfds_manual_dir=SHAKESPEARE)


def test_data_errors(tmp_path, tok):
    with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_dataset'"):
        Corpus("tfds:no_such_dataset")
    with pytest.raises(DataError, match="no files match"):
        Corpus(f"text:{tmp_path}/missing/*.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        Corpus(f"text:{tmp_path}/empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        Corpus(f"text:{tmp_path}/bin.txt")
    from tfllm.data.tables import read_rows

    (tmp_path / "chat.jsonl").write_text('{"text": "fine"}\n{"text": "a\\ud800b"}\n')
    with pytest.raises(DataError, match=r"line 2 is not JSON: .*lone UTF-16 surrogate \\ud800"):
        read_rows("jsonl", str(tmp_path / "chat.jsonl"))
    (tmp_path / "pair.jsonl").write_text('{"text": "\\ud83d\\ude00 \\\\ud800"}\n')
    assert read_rows("jsonl", str(tmp_path / "pair.jsonl"))[1] == [{"text": "\U0001F600 \\ud800"}]
    (tmp_path / "short.txt").write_text("x" * 50)
    c = Corpus(f"text:{tmp_path}/short.txt")
    with pytest.raises(DataError, match="shorter than one window of 65 tokens"):
        check_nonempty(c.train_texts(), tok, 64, "training")


def test_fit_pipelines_run_without_the_autotuner(tmp_path, tok):
    # tf.data's autotuner left Keras fit idle at a fixed 51 ms per step on 2-vCPU machines
    # (benchmarks/README.md); every pipeline tfllm feeds to fit turns it off.
    from tfllm.tasks.classify.data import make_classification_dataset
    from tfllm.tasks.mlm.data import make_mlm_dataset

    (tmp_path / "t.txt").write_text(shakespeare_text(5_000))
    c = Corpus(f"text:{tmp_path}/t.txt")
    mlm_tok = SentencePieceTokenizer.train([shakespeare_text(20_000)], model_type="char",
                                           mask_token=True)
    pipelines = {
        "lm": make_lm_dataset(c.train_texts(), tok, 16, 2, training=True),
        "lm eval": make_lm_dataset(c.val_texts(), tok, 16, 2, training=False),
        "mlm": make_mlm_dataset(c.train_texts(), mlm_tok, 16, 2, training=True),
        "classification": make_classification_dataset(tok, ["a b", "c"], [0, 1], 16, True, 2,
                                                      training=True),
    }
    for name, ds in pipelines.items():
        assert ds.options().autotune.enabled is False, name
        assert ds.options().deterministic is True, name  # seeded runs see the same batches
        first = tf.nest.flatten(next(iter(ds)))[0]  # the pipeline still runs
        assert first.shape[0] == 2, name
