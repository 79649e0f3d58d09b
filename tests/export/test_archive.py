"""`write_archive` traces each endpoint's function once and names sharing one function
share its trace; the written SavedModel answers through every name."""

import numpy as np
import tensorflow as tf


def test_each_function_is_traced_once_and_every_name_answers(tmp_path):
    import keras

    from export.archive import write_archive

    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    traces = {"double": 0, "other": 0}

    def double(x):
        traces["double"] += 1
        return {"y": 2.0 * dense(x)}

    def other(x):
        traces["other"] += 1
        return {"y": dense(x) - 1.0}

    spec = [tf.TensorSpec([None, 4], tf.float32, name="x")]
    archive = keras.export.ExportArchive()
    archive.track(dense)
    write_archive(archive, {"serving_default": (double, spec), "double": (double, spec),
                            "other": (other, spec)}, str(tmp_path / "sm"))
    # Keras' write_out alone traced each twice (listing variables, then saving).
    assert traces == {"double": 1, "other": 1}
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    want = dense(x).numpy()
    assert set(loaded.signatures) == {"serving_default", "double", "other"}
    for name, expected in (("serving_default", 2 * want), ("double", 2 * want),
                           ("other", want - 1)):
        np.testing.assert_allclose(loaded.signatures[name](x=tf.constant(x))["y"].numpy(),
                                   expected, rtol=1e-6)
