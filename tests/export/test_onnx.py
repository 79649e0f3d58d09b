import numpy as np
import pytest

import tfllm
from tests.conftest import run_module


@pytest.fixture(scope="module")
def onnx_file(tiny_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    assert "next-token agreement 100%" in run_module("export.onnx", "--run", tiny_run,
                                                     "--out", path)
    return path


def test_onnxruntime_logits_match_keras(onnx_file, tiny_run):
    import onnxruntime as ort

    lm = tfllm.load(tiny_run)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["token_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    rng = np.random.default_rng(0)
    for shape in [(1, 5), (3, 32), (2, 17)]:  # dynamic batch and length
        ids = rng.integers(0, lm.backbone.vocab_size, size=shape).astype(np.int32)
        got = session.run(None, {"token_ids": ids})[0]
        assert got.shape == shape + (lm.backbone.vocab_size,)
        assert np.abs(got - lm(ids).numpy()).max() <= 1e-4


def test_decode_step_matches_keras_and_generate(onnx_file, tiny_run):
    from export.onnx import OnnxDecoder, decode_path

    lm = tfllm.load(tiny_run)
    runner = OnnxDecoder(decode_path(onnx_file))
    bb = lm.backbone
    assert runner.cache_names == [f"kv_cache_{kv}_{i}" for i in range(bb.num_layers)
                                  for kv in ("k", "v")]
    assert {tuple(s[1:]) for s in runner.cache_shapes.values()} == {
        (bb.num_heads, bb.max_len, bb.head_dim)}
    # A batch of two rows: a 7-token prefill, then cached single-token steps.
    ids = np.random.default_rng(1).integers(0, bb.vocab_size, size=(2, 12)).astype(np.int32)
    full = lm(ids).numpy()
    logits, cache = runner.step(ids[:, :7], 0, runner.empty_cache(2))
    np.testing.assert_allclose(logits, full[:, :7], atol=1e-4)
    for t in range(7, 12):
        logits, cache = runner.step(ids[:, t:t + 1], t, cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-4)
    for prompt in ("ROMEO:", "First Citizen:\nWe are"):
        prompt_ids = lm.tokenizer.encode(prompt)
        n = bb.max_len - len(prompt_ids)  # up to the end of the context
        expected = lm.generate([prompt_ids], max_new_tokens=n, return_ids=True)[1][0]
        assert len(expected) > 0
        assert runner.generate(prompt_ids, n, end_token_id=lm.tokenizer.eos_id) == expected


@pytest.mark.parametrize("sampling", [dict(temperature=0.8, top_k=20, seed=7),
                                      dict(temperature=1.2, top_p=0.9, seed=123)])
def test_decoder_seeded_sampling_equals_causal_lm_generate(onnx_file, tiny_run, sampling):
    from export.onnx import OnnxDecoder, OnnxExportError, decode_path

    lm = tfllm.load(tiny_run)
    runner = OnnxDecoder(decode_path(onnx_file))
    for prompt in ("ROMEO:", "First Citizen:\nWe are"):
        ids = lm.tokenizer.encode(prompt)
        n = lm.backbone.max_len - len(ids)
        expected = lm.generate([ids], max_new_tokens=n, stop_at_end=False, return_ids=True,
                               **sampling)[1][0]
        got = runner.generate(ids, n, **sampling)
        assert got == expected, prompt
        assert got != runner.generate(ids, n)  # it did sample, not decode greedily
    assert runner.generate(ids, n, **dict(sampling, seed=sampling["seed"] + 1)) != got
    with pytest.raises(OnnxExportError, match="top_p must be in"):
        runner.generate([5], 3, temperature=1.0, top_p=1.5)
