import subprocess
import sys

import numpy as np
import pytest

import tfllm
from tests.conftest import REPO


@pytest.fixture(scope="module")
def onnx_file(tiny_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    proc = subprocess.run([sys.executable, "-m", "export.onnx", "--run", tiny_run, "--out", path],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "next-token agreement 100%" in proc.stdout
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
