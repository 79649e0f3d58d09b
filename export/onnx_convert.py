"""What the ONNX exporters share: tf2onnx conversion, an onnxruntime session, file names.

Both `export.onnx` (decoders, encoders, classifiers) and `export.onnx_seq2seq`
(encoder-decoders) import from here, so neither reaches into the other.
"""

from __future__ import annotations

from tfllm.errors import TfllmError

# Largest logit difference from Keras an ONNX export may have.
TOLERANCE = 1e-4


class OnnxExportError(TfllmError):
    """The ONNX conversion failed or disagrees with the Keras model."""


def decode_path(out: str) -> str:
    """Where the decode step of `out` goes: FILE.onnx -> FILE.decode.onnx."""
    stem = out[:-5] if out.endswith(".onnx") else out
    return stem + ".decode.onnx"


def convert(function, path: str, opset: int) -> None:
    """Convert a `tf.function` with an input signature to the ONNX file `path`."""
    import tf2onnx

    try:
        tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                      opset=opset, output_path=path)
    except Exception as e:  # tf2onnx raises many types
        raise OnnxExportError(f"tf2onnx could not convert the model: {e}") from e


def session(path: str):
    """An onnxruntime CPU session of `path` on 2 threads (the machines tfllm targets)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
