"""Export a run's forward pass (token ids -> logits) to ONNX, checked with onnxruntime.

    python -m export.onnx --run runs/NAME --out FILE.onnx [--opset 17]

Input `token_ids` int32 [batch, seq] (dynamic), output `logits` float32 [batch, seq, vocab].
The exporter runs the file in onnxruntime on a sample text and refuses to write it if the
logits differ from Keras by more than 1e-4. The cached decode step is not exported: its
cache write lowers to XLA's dynamic-update-slice, which tf2onnx cannot convert.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfllm import runs  # noqa: E402
from tfllm.errors import TfllmError  # noqa: E402

TOLERANCE = 1e-4


class OnnxExportError(TfllmError):
    """The ONNX conversion failed or disagrees with the Keras model."""


def export_onnx(run_dir, out, opset=17, sample="ROMEO:\nWhat say you to this?"):
    """Convert, verify with onnxruntime, write; returns a report."""
    import onnxruntime as ort
    import tf2onnx

    model = runs.load(run_dir)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def forward(token_ids):
        return {"logits": model(token_ids)}

    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        tf2onnx.convert.from_function(forward, input_signature=forward.input_signature,
                                      opset=opset, output_path=tmp)
    except Exception as e:  # tf2onnx raises many types
        raise OnnxExportError(f"tf2onnx could not convert the model: {e}") from e
    ids = model.tokenizer.encode(sample)[: model.backbone.max_len] or [model.tokenizer.bos_id]
    batch = np.array([ids, ids[::-1]], np.int32)
    session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    got = session.run(None, {"token_ids": batch})[0]
    diff = float(np.abs(got - model(batch).numpy()).max())
    if not np.isfinite(got).all() or diff > TOLERANCE:
        os.remove(tmp)
        raise OnnxExportError(f"onnxruntime logits differ from Keras by {diff} "
                              f"(tolerance {TOLERANCE})")
    agree = float(np.mean(got.argmax(-1) == model(batch).numpy().argmax(-1)))
    os.replace(tmp, out)
    return {"path": out, "bytes": os.path.getsize(out), "max_logit_diff": diff,
            "next_token_agreement": agree}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = parser.parse_args(argv)
    try:
        report = export_onnx(args.run, args.out, args.opset)
    except TfllmError as e:
        print(f"export.onnx: error: {e}", file=sys.stderr)
        return 2
    print(f"ONNX model written to {report['path']} ({report['bytes'] / 1e6:.2f} MB)")
    print(f"onnxruntime vs Keras: largest logit difference {report['max_logit_diff']:.2e}, "
          f"next-token agreement {report['next_token_agreement']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
