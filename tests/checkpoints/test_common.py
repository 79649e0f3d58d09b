"""The importers' shared machinery: lazy safetensors, and saving a model whose weights are
made one at a time."""

import os

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from tfllm.checkpoints.common import (CheckpointError, build_deferred, read_safetensors,
                                      save_with_weights)


def small_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dropout(0.5),
                             keras.layers.Dense(4)])


def test_deferred_model_saves_the_planned_values(tmp_path):
    model = build_deferred(small_model)
    assert all(v._value is None for v in model.weights)  # nothing allocated yet
    rng = np.random.default_rng(0)
    values = {v.path: rng.normal(size=v.shape).astype("float32") for v in model.weights}
    made = []

    def maker(path):
        def make():
            made.append(path)
            return values[path]
        return make

    path = str(tmp_path / "m.keras")
    save_with_weights(model, [(v, maker(v.path)) for v in model.weights], path)
    assert sorted(made) == sorted(values)  # each value made once, when written
    loaded = keras.saving.load_model(path)
    expected = [values[v.path] for v in model.weights]
    for v, value in zip(loaded.weights, expected, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)
    x = rng.normal(size=(2, 3)).astype("float32")
    k1, b1, k2, b2 = expected
    ref = (x @ k1 + b1) @ k2 + b2
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ref, rtol=1e-5, atol=1e-5)


def test_a_missing_or_misshaped_value_is_refused(tmp_path):
    model = build_deferred(small_model)
    plan = [(v, lambda v=v: np.zeros(v.shape, "float32")) for v in model.weights]
    with pytest.raises(CheckpointError, match="no imported value for"):
        save_with_weights(model, plan[1:], str(tmp_path / "a.keras"))
    plan[0] = (model.weights[0], lambda: np.zeros((2, 3), "float32"))
    with pytest.raises(CheckpointError, match=r"is \(3, 2\) float32, its imported value "
                                              r"\(2, 3\) float32"):
        save_with_weights(model, plan, str(tmp_path / "b.keras"))


def test_safetensors_are_read_when_looked_up(tmp_path):
    a = np.arange(6, dtype="float32").reshape(2, 3)
    b = np.ones(4, dtype="float16")
    save_file({"a": a, "b": b}, str(tmp_path / "model.safetensors"))
    path, tensors = read_safetensors(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "model.safetensors")
    assert tensors.shapes == {"a": (2, 3), "b": (4,)}
    assert tensors.dtypes == {"a": "F32", "b": "F16"}
    assert sorted(tensors) == ["a", "b"] and len(tensors) == 2
    np.testing.assert_array_equal(tensors["a"], a)
    assert tensors["b"].dtype == np.float16


def test_safetensors_of_another_dtype_are_refused(tmp_path):
    save_file({"a": np.zeros(3, "int64")}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unsupported dtype .*a \(I64\)"):
        read_safetensors(str(tmp_path))
