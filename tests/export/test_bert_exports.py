"""Imported BERT runs through the exporters: a classifier's labels through SavedModel (its
`classify` signature, WordPiece in the graph, a fresh process), TFLite float32 and int8,
and ONNX; an encoder's `embed` signature."""


import numpy as np
import pytest

from tests.checkpoints.bert_fixtures import write_checkpoint
from tests.conftest import call_module, labeled_rows, run_module, write_tsv
from tfllm.checkpoints import import_hf

TEXTS = ["a superb and lovely film", "Héllo, WORLD! 東京", "a dull [SEP] film", "x"]
PAIRS = ["is it good?", "x", "a long second text that is cut before the first one is", "y"]


def _pair_inputs(model, length):
    """{"token_ids", "token_type_ids"} of TEXTS paired with PAIRS, padded to `length`."""
    import tensorflow as tf

    from tfllm.tokenizers.packing import encode_texts

    inputs = encode_texts(model.tokenizer, tf.constant(TEXTS), length, True,
                          tf.constant(PAIRS))
    assert inputs["token_type_ids"].numpy().max() == 1
    return {k: inputs[k].numpy() for k in ("token_ids", "token_type_ids")}


@pytest.fixture(scope="module")
def bert_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    clf = import_hf(write_checkpoint(str(root / "clf"), "classifier", seed=7)[0],
                    str(root / "clf-run"), max_len=32)
    enc = import_hf(write_checkpoint(str(root / "enc"), "encoder", seed=8)[0],
                    str(root / "enc-run"), max_len=32)
    data = write_tsv(root / "texts.tsv", labeled_rows(80, seed=3))
    return {"classifier": clf, "encoder": enc, "data": data, "root": root}


def _export(module, *args):
    return run_module(module, *args)


@pytest.mark.slow
def test_imported_classifier_saved_model_labels_equal_keras(bert_runs, tmp_path):
    # The exporter reloads the SavedModel in a fresh process and requires its classify
    # probabilities (within 1e-4) and labels to equal the Keras classifier's.
    # An imported classifier may have been fine-tuned on pairs or single texts: it gets
    # both forms, and the exporter checks both (pairs through classify_pair).
    stdout = _export("export.saved_model", "--run", bert_runs["classifier"], "--out",
                     str(tmp_path), "--name", "bert")
    assert "classify(text string[None]) -> label int32[None], label_name string[None], " \
        "probabilities float32[None, 3]" in stdout
    assert "classify_pair(text string[None], text_pair string[None]) -> label" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float32", "int8"])
def test_imported_classifier_tflite(bert_runs, tmp_path, quantize):
    out = str(tmp_path / f"bert-{quantize}.tflite")
    # An imported classifier has no data of its own: --data gives the texts to check on.
    stdout = _export("export.tflite", "--run", bert_runs["classifier"], "--out", out,
                     "--quantize", quantize, "--data", bert_runs["data"], "--seq-len", "16")
    assert "input token_ids [1, 16] and token_type_ids [1, 16]" in stdout
    from export.tflite import tflite_classify
    from tfllm.tasks.classify.predict import load_classifier
    from tfllm.tokenizers.packing import encode_texts

    import tensorflow as tf

    model, task = load_classifier(bert_runs["classifier"])
    if quantize == "float32":
        ids = encode_texts(model.tokenizer, tf.constant(TEXTS), 16, True)["token_ids"].numpy()
        for inputs in (ids, _pair_inputs(model, 16)):  # single texts and sentence pairs
            expected = tf.nn.softmax(model(inputs), axis=-1).numpy()
            np.testing.assert_allclose(tflite_classify(out, inputs), expected, atol=1e-4)
        return
    # Full integer promises labels, not probabilities: the exporter calibrates on the
    # data's training rows (seeded split, deterministic) and holds the labels of its
    # held-out rows to >= 95%; here every one of the 80 rows is checked against a 90% bar.
    assert "labels agree with Keras on" in stdout
    texts = [t for t, _ in labeled_rows(80, seed=3)]
    ids = encode_texts(model.tokenizer, tf.constant(texts), 16, True)["token_ids"].numpy()
    expected = tf.nn.softmax(model(ids), axis=-1).numpy()
    got = tflite_classify(out, ids)
    assert np.isfinite(got).all() and np.allclose(got.sum(1), 1.0, atol=0.02)
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    assert agreement >= 0.9, agreement


def test_imported_classifier_tflite_without_data_is_refused(bert_runs, tmp_path):
    proc = call_module("export.tflite", "--run", bert_runs["classifier"], "--out",
                       str(tmp_path / "x.tflite"))
    assert proc.returncode != 0
    assert "has no data of its own (an imported classifier): pass --data" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.tflite").exists()


@pytest.mark.slow
def test_imported_classifier_onnx(bert_runs, tmp_path):
    import onnxruntime as ort

    from tfllm.tasks.classify.predict import load_classifier
    from tfllm.tokenizers.packing import encode_texts

    import tensorflow as tf

    out = str(tmp_path / "bert.onnx")
    _export("export.onnx", "--run", bert_runs["classifier"], "--out", out)
    model, task = load_classifier(bert_runs["classifier"])
    session = ort.InferenceSession(out)
    ids = encode_texts(model.tokenizer, tf.constant(TEXTS), 16, True)["token_ids"].numpy()
    got = session.run(None, {"token_ids": ids, "token_type_ids": np.zeros_like(ids)})[0]
    np.testing.assert_allclose(got, model(ids).numpy(), atol=1e-4)
    pairs = _pair_inputs(model, 16)
    np.testing.assert_allclose(session.run(None, pairs)[0], model(pairs).numpy(), atol=1e-4)


@pytest.mark.slow
def test_encoder_saved_model_embed_signature(bert_runs, tmp_path):
    from tfllm.tasks.embed.saved_model import verify_embeddings

    import tfllm

    stdout = _export("export.saved_model", "--run", bert_runs["encoder"], "--out",
                     str(tmp_path), "--name", "enc", "--no-verify")
    assert "embed(text string[None]) -> embedding float32[None, 32]" in stdout
    # The exporter's own check, run here: fresh-process embeddings == tfllm embed's.
    got = verify_embeddings(str(tmp_path / "enc" / "1"), tfllm.load(bert_runs["encoder"]),
                            TEXTS)
    assert got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
