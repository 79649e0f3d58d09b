"""The shared layer test harness (KerasHub's manner): shapes, config, save/load, a fit step."""

import numpy as np
import keras


def run_layer_test(layer_cls, init_kwargs, input_data, expected_output_shape,
                   tmp_path, call_kwargs=None):
    """Check one layer class end to end and return the layer built by the test.

    - output shape of a call on `input_data`;
    - `get_config()` holds exactly the constructor arguments and `from_config` rebuilds it;
    - a model holding the layer round-trips through `.keras` with identical outputs;
    - one `fit` step runs and changes every trainable weight.
    """
    call_kwargs = call_kwargs or {}
    layer = layer_cls(**init_kwargs)
    out = layer(input_data, **call_kwargs)
    assert tuple(out.shape) == tuple(expected_output_shape)

    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert config[key] == value, f"get_config()[{key!r}] = {config[key]!r} != {value!r}"
    own = set(config) - {"name", "trainable", "dtype"}
    assert own == set(init_kwargs), f"get_config has extra/missing keys: {own ^ set(init_kwargs)}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    # A functional model around the layer: the .keras file must restore it exactly.
    inputs = keras.Input(shape=tuple(input_data.shape[1:]), dtype=str(input_data.dtype),
                         batch_size=input_data.shape[0])
    model = keras.Model(inputs, layer_cls(**init_kwargs)(inputs, **call_kwargs))
    expected = keras.ops.convert_to_numpy(model(input_data))
    path = str(tmp_path / f"{layer_cls.__name__}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(input_data)), expected)

    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = np.random.default_rng(0).normal(size=expected.shape).astype("float32")
    model.fit(input_data, target, epochs=1, batch_size=input_data.shape[0], verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert before, "layer has no trainable weights"
    for w, b, a in zip(model.trainable_weights, before, after):
        assert not np.array_equal(b, a), f"weight {w.path} did not change in a fit step"
    return layer
