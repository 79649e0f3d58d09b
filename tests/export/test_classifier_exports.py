"""A classifier run through every exporter: SavedModel `classify`, TFLite in every mode."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, labeled_rows
from tfllm.finetuning import load_classifier, predict_proba

TEXTS = [t for t, _ in labeled_rows(12, seed=5)]


@pytest.fixture(scope="module")
def keras_labels(tiny_classifier):
    model, task = load_classifier(tiny_classifier[0])
    probs = predict_proba(model, task, TEXTS)
    return probs, [task["class_names"][i] for i in probs.argmax(1)]


def test_saved_model_classify_signature(tiny_classifier, keras_labels, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "export.saved_model", "--run",
                           tiny_classifier[0], "--out", str(tmp_path), "--name", "clf"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probabilities as the Keras classifier" in proc.stdout
    code = ("import json, sys, tensorflow as tf, tensorflow_text\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "out = m.signatures['classify'](text=tf.constant(json.loads(sys.argv[2])))\n"
            "print(json.dumps({'p': out['probabilities'].numpy().tolist(),"
            " 'label': out['label'].numpy().tolist(),"
            " 'name': [n.decode() for n in out['label_name'].numpy()]}))\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "clf" / "1"),
                          json.dumps(TEXTS)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    probs, names = keras_labels
    assert got["name"] == names
    assert got["label"] == probs.argmax(1).tolist()
    np.testing.assert_allclose(got["p"], probs, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic-int8", "int8"])
def test_tflite_classifier_modes(tiny_classifier, keras_labels, tmp_path, mode):
    from export.tflite import _encode_one, tflite_classify

    path = str(tmp_path / f"clf-{mode}.tflite")
    # A subprocess: the TFLite converter leaks memory on every convert().
    proc = subprocess.run([sys.executable, "-m", "export.tflite", "--run", tiny_classifier[0],
                           "--out", path, "--quantize", mode],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labels agree with Keras on 100.0%" in proc.stdout
    model, task = load_classifier(tiny_classifier[0])
    probs = tflite_classify(path, _encode_one(model.tokenizer, task, TEXTS))
    assert [task["class_names"][i] for i in probs.argmax(1)] == keras_labels[1]
    if mode == "float32":
        np.testing.assert_allclose(probs, keras_labels[0], atol=1e-4)
    if mode == "int8":
        from ai_edge_litert.interpreter import Interpreter

        # Full integer: int8 tensors throughout; float only around LayerNorm's
        # mean/variance (the converter's own choice) and the output probabilities.
        dtypes = [np.dtype(d["dtype"]).name
                  for d in Interpreter(model_path=path).get_tensor_details()]
        assert dtypes.count("int8") >= 10 * dtypes.count("float32"), dtypes


def test_onnx_classifier(tiny_classifier, keras_labels, tmp_path):
    import onnxruntime as ort

    from export.tflite import _encode_one

    path = str(tmp_path / "clf.onnx")
    proc = subprocess.run([sys.executable, "-m", "export.onnx", "--run", tiny_classifier[0],
                           "--out", path], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "label agreement 100%" in proc.stdout and "decode step" not in proc.stdout
    model, task = load_classifier(tiny_classifier[0])
    ids = _encode_one(model.tokenizer, task, TEXTS)
    assert (ids == 0).any()  # padded rows: the pad-derived mask is exercised
    logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"token_ids": ids})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, keras_labels[0], atol=1e-4)
    assert [task["class_names"][i] for i in probs.argmax(1)] == keras_labels[1]
