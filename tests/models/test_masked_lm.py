import keras
import numpy as np
import pytest
from keras import ops

from tfllm.config import ModelConfig
from tfllm.models import MaskedLM, TransformerBackbone

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, ffn_dim=64, max_len=12,
                  causal=False, norm_first=False)
RNG = np.random.default_rng(2)
IDS = RNG.integers(3, 40, size=(4, 12)).astype("int32")
POSITIONS = np.array([[1, 4, 7], [2, 3, 11], [5, 6, 0], [9, 10, 0]], "int32")
WEIGHTS = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]], "float32")


@pytest.fixture(scope="module")
def mlm():
    keras.utils.set_random_seed(0)
    return MaskedLM.from_model_config(CFG)


def inputs(ids=IDS, positions=POSITIONS):
    return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool), "mask_positions": positions}


def test_logits_at_mask_positions_are_the_full_logits_there(mlm):
    at_masks = ops.convert_to_numpy(mlm(inputs()))
    full = ops.convert_to_numpy(mlm({"token_ids": IDS}))
    assert at_masks.shape == (4, 3, 40) and full.shape == (4, 12, 40)
    assert at_masks.dtype == np.float32 and mlm.config == CFG
    np.testing.assert_allclose(at_masks, np.take_along_axis(full, POSITIONS[..., None], 1),
                               atol=1e-5)


def test_bidirectional(mlm):
    """A later token changes the predictions at earlier positions (unlike a causal LM)."""
    changed = IDS.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 40
    a = ops.convert_to_numpy(mlm({"token_ids": IDS}))
    b = ops.convert_to_numpy(mlm({"token_ids": changed}))
    assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-5


def test_loss_and_metrics_count_only_weighted_masks():
    keras.utils.set_random_seed(0)
    model = MaskedLM.from_model_config(CFG)
    model.compile(jit_compile=False)
    labels = RNG.integers(3, 40, size=(4, 3)).astype("int32")
    got = model.evaluate(inputs(), labels, sample_weight=WEIGHTS, verbose=0, return_dict=True)
    logits = ops.convert_to_numpy(model(inputs()))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    expected = (nll * WEIGHTS).sum() / WEIGHTS.sum()
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(np.log(got["perplexity"]), expected, rtol=1e-4)
    correct = (logits.argmax(-1) == labels) * WEIGHTS
    np.testing.assert_allclose(got["accuracy"], correct.sum() / WEIGHTS.sum(), rtol=1e-6)
    # Labels under zero weights do not matter.
    other = labels.copy()
    other[WEIGHTS == 0] = 3
    again = model.evaluate(inputs(), other, sample_weight=WEIGHTS, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["loss"], got["loss"], rtol=1e-6)


def test_fit_learns_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    model = MaskedLM.from_model_config(CFG)
    model.compile(learning_rate=3e-3, warmup_steps=2, total_steps=40, jit_compile=False)
    masked = IDS.copy()
    np.put_along_axis(masked, POSITIONS, 2, axis=1)  # 2 stands for <mask>
    labels = np.take_along_axis(IDS, POSITIONS, 1)
    hist = model.fit(inputs(masked), labels, sample_weight=WEIGHTS, epochs=30, batch_size=4,
                     verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    path = str(tmp_path / "mlm.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, MaskedLM) and int(restored.optimizer.iterations) == 30
    np.testing.assert_array_equal(ops.convert_to_numpy(restored(inputs(masked))),
                                  ops.convert_to_numpy(model(inputs(masked))))


def test_masked_lm_rejects_causal_backbone():
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedLM(TransformerBackbone.from_model_config(CFG.replace(causal=True)))
