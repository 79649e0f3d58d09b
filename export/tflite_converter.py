"""The TFLite converter setup every tfllm `.tflite` export shares: builtin ops only (what
LiteRT runs without the Flex delegate), and the weight-quantization modes."""

from __future__ import annotations


def tflite_converter(saved_model_dir: str, signature_keys, quantize: str):
    """A `TFLiteConverter` for `signature_keys` of a SavedModel.

    Args:
        saved_model_dir: the SavedModel to convert.
        signature_keys: the signatures the `.tflite` keeps.
        quantize: "float32" (none); "float16" (weights stored in float16); "dynamic-int8"
            (int8 weights, float activations); "int8" is dynamic-int8 here, made full
            integer by the caller (a representative dataset, integer ops).
    """
    import tensorflow as tf  # here: `python -m export.tflite --help` must not load it

    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=list(signature_keys))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def convert_or_raise(converter, error_type) -> bytes:
    """`converter.convert()`, its failures raised as `error_type` with the message's tail."""
    try:
        return converter.convert()
    except Exception as e:  # the converter raises many types, with long messages
        raise error_type(f"TFLite conversion failed: {str(e)[-1500:]}") from e
