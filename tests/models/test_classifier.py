import keras
import numpy as np
import pytest
from keras import ops

from tfllm.config import ModelConfig
from tfllm.models import SequenceClassifier, TransformerBackbone
from tfllm.models.classifier import copy_backbone

ENC = ModelConfig(vocab_size=30, num_layers=2, d_model=32, num_heads=4, ffn_dim=64, max_len=10,
                  causal=False)
IDS = np.random.default_rng(3).integers(3, 30, size=(3, 10)).astype("int32")
LENGTHS = [10, 6, 3]
PADDED = IDS.copy()
for row, n in enumerate(LENGTHS):
    PADDED[row, n:] = 0


def classifier(config=ENC, pooling="first", dropout=0.0):
    keras.utils.set_random_seed(0)
    bb = TransformerBackbone.from_model_config(config, name="backbone")
    return SequenceClassifier(bb, ["a", "b", "c"], pooling=pooling, dropout=dropout, pad_id=0)


@pytest.mark.parametrize("config,pooling", [(ENC, "first"), (ENC.replace(causal=True), "last"),
                                            (ENC, "mean")])
def test_padding_is_ignored(config, pooling):
    """Each row's logits equal those of the row alone, unpadded, whatever the padding holds."""
    clf = classifier(config, pooling)
    out = ops.convert_to_numpy(clf(PADDED))
    assert out.shape == (3, 3) and out.dtype == np.float32 and clf.num_classes == 3
    for row, n in enumerate(LENGTHS):
        alone = ops.convert_to_numpy(clf(PADDED[row:row + 1, :n]))
        np.testing.assert_allclose(out[row], alone[0], atol=1e-5)
    # An explicit mask gives the same as the pad-derived one, garbage under the padding.
    mask = PADDED != 0
    garbage = np.where(mask, IDS, 7).astype("int32")
    explicit = ops.convert_to_numpy(clf({"token_ids": garbage, "padding_mask": mask}))
    np.testing.assert_allclose(explicit, out, atol=1e-5)


def test_mean_pooling_averages_the_real_tokens():
    """Mean pooling = the head applied to the average of the backbone's states over the
    real tokens (NumPy)."""
    clf = classifier(ENC, "mean")
    mask = PADDED != 0
    hidden = ops.convert_to_numpy(clf.backbone(PADDED, padding_mask=mask))
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    kernel, bias = (ops.convert_to_numpy(w) for w in clf.head.weights)
    np.testing.assert_allclose(ops.convert_to_numpy(clf(PADDED)), pooled @ kernel + bias,
                               atol=1e-5)


def test_last_pooling_reads_the_last_real_token():
    """Causal + last: changing the last real token changes the logits; an earlier-only
    change in another row does not leak across rows."""
    clf = classifier(ENC.replace(causal=True), "last")
    base = ops.convert_to_numpy(clf(PADDED))
    changed = PADDED.copy()
    changed[1, LENGTHS[1] - 1] = (changed[1, LENGTHS[1] - 1] % 29) + 1
    out = ops.convert_to_numpy(clf(changed))
    assert np.abs(out[1] - base[1]).max() > 1e-6
    np.testing.assert_allclose(out[[0, 2]], base[[0, 2]], atol=1e-6)


def test_config_keras_round_trip_and_fit_step(tmp_path):
    clf = classifier(dropout=0.2)
    config = clf.get_config()
    assert {k: config[k] for k in ("class_names", "pooling", "dropout", "pad_id")} == {
        "class_names": ["a", "b", "c"], "pooling": "first", "dropout": 0.2, "pad_id": 0}
    before = [w.copy() for w in clf.get_weights()]
    clf.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(PADDED, np.array([0, 1, 2]), epochs=1, verbose=0)
    assert all(not np.array_equal(b, a) for b, a in zip(before, clf.get_weights()))
    path = str(tmp_path / "clf.keras")
    clf.save(path)
    restored = keras.saving.load_model(path)
    assert restored.class_names == ["a", "b", "c"] and restored.pooling == "first"
    np.testing.assert_array_equal(ops.convert_to_numpy(restored(PADDED)),
                                  ops.convert_to_numpy(clf(PADDED)))


def test_copy_backbone_same_outputs_new_dropout():
    keras.utils.set_random_seed(0)
    bb = TransformerBackbone.from_model_config(ENC.replace(dropout=0.1), name="pretrained")
    copy = copy_backbone(bb, dropout=0.3)
    assert copy.dropout == 0.3 and copy.name == "backbone"
    np.testing.assert_allclose(ops.convert_to_numpy(copy(IDS)), ops.convert_to_numpy(bb(IDS)),
                               atol=1e-6)
    copy.embedding.token_embeddings.assign(np.zeros((30, 32), "float32"))
    assert np.abs(ops.convert_to_numpy(bb.embedding.token_embeddings)).max() > 0


def test_bad_arguments():
    bb = TransformerBackbone.from_model_config(ENC)
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(bb, ["a", "b"], pooling="max")
    with pytest.raises(ValueError, match="two distinct"):
        SequenceClassifier(bb, ["a"])
    with pytest.raises(ValueError, match="two distinct"):
        SequenceClassifier(bb, ["a", "a"])
