"""The encoder-decoder model: serialization, cached decoding equal to full, the label-smoothed
loss, and greedy and beam decoding against references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.config import get_preset
from tfllm.models import Seq2SeqLM, SmoothedSparseCrossentropy
from tfllm.models.translation import Translator


def random_model(seed=0, vocab=50, max_len=16, **overrides):
    keras.utils.set_random_seed(seed)
    cfg = get_preset("transformer-mt-small").replace(
        vocab_size=vocab, num_layers=1, num_decoder_layers=2, d_model=32, num_heads=2,
        ffn_dim=64, max_len=max_len, dropout=0.0, **overrides)
    return Seq2SeqLM.from_model_config(cfg)


def uncached_greedy(model, source, max_new, bos=2, end=3):
    """Greedy decoding by re-running the whole decoder on the growing prefix."""
    prefix = [bos]
    for _ in range(max_new):
        logits = model({"encoder_token_ids": np.array([source]),
                        "decoder_token_ids": np.array([prefix])})
        prefix.append(int(np.argmax(logits[0, -1])))
        if prefix[-1] == end:
            return prefix[1:-1]
    return prefix[1:]


# The original Transformer's blocks and learned positions, and the preset's rotary,
# RMSNorm and SwiGLU blocks.
ARCHITECTURES = {
    "learned": dict(position_embedding="learned", norm="layernorm", ffn="plain",
                    activation="relu"),
    "rope": dict(position_embedding="rope", norm="rmsnorm", ffn="gated", activation="silu"),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_seq2seq_model_serializes_and_cached_decoding_equals_full(tmp_path, arch):
    model = random_model(**ARCHITECTURES[arch])
    src = np.random.RandomState(0).randint(4, 50, (2, 7))
    src[1, 5:] = 0  # padding
    tgt = np.random.RandomState(1).randint(4, 50, (2, 6))
    inputs = {"encoder_token_ids": src, "decoder_token_ids": tgt}
    logits = model(inputs).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded(inputs).numpy(), logits)
    backbone_config = loaded.get_config()["backbone"]["config"]
    assert backbone_config["num_decoder_layers"] == 2
    assert backbone_config["position_embedding"] == arch
    # Rotary models have no position table: positions live in the attention only.
    has_table = any("position_embeddings" in w.path for w in loaded.weights)
    assert has_table == (arch == "learned")
    # Both kinds give the encoder word order: without positions, self-attention would map
    # a reversed source to the reversed outputs.
    memory = model.backbone.encode(src[:1]).numpy()[0]
    reversed_memory = model.backbone.encode(src[:1, ::-1]).numpy()[0]
    assert np.abs(reversed_memory[::-1] - memory).max() > 1e-3
    # Padding in the source is never attended to: the padded row equals its unpadded self.
    alone = model({"encoder_token_ids": src[1:, :5], "decoder_token_ids": tgt[1:]}).numpy()
    np.testing.assert_allclose(alone[0], logits[1], atol=1e-5)
    # One token at a time through the self-attention cache, cross K/V computed once.
    bb = model.backbone
    mask = src != 0
    kv = bb.project_context(bb.encode(src, mask))
    caches, steps = bb.empty_caches(2), []
    for t in range(tgt.shape[1]):
        h, caches = bb.decode(tgt[:, t:t + 1], source_mask=mask, context_kv=kv, caches=caches,
                              cache_index=t)
        steps.append(bb.logits(h).numpy())
    np.testing.assert_allclose(np.concatenate(steps, 1), logits, atol=1e-5)


def test_label_smoothed_loss_matches_numpy():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 3, 7).astype("float32")
    labels = rng.randint(0, 7, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], "float32")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    s = 0.1
    q = np.full((2, 3, 7), s / 7) + (1 - s) * np.eye(7)[labels]  # Keras' smoothed target
    per_token = -(q * logp).sum(-1)
    expected = (per_token * weights).sum() / weights.sum()
    got = SmoothedSparseCrossentropy(s)(labels, logits, sample_weight=weights)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cached_greedy_equals_uncached_and_one_beam_equals_greedy():
    model = random_model(seed=3)
    tr = Translator(model, bos_id=2, end_id=3)
    rng = np.random.RandomState(2)
    sources = [list(rng.randint(4, 50, n)) + [3] for n in (3, 9, 5)]
    greedy = tr.translate_ids(sources, max_new_tokens=12)
    for source, got in zip(sources, greedy):
        assert got == uncached_greedy(model, source, 12)
    assert tr.translate_ids(sources, max_new_tokens=12, num_beams=1) == greedy
    # The one-beam search itself, not only the greedy loop it is routed to above.
    out, n = tr._beam(tr._pack(sources), tf.constant(12), 1, tf.constant(1.0))
    beam = [[t for t in out.numpy()[i, :n[i]] if t != 3] for i in range(len(sources))]
    assert beam == greedy
