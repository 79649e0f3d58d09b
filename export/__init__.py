"""Deployment exporters (SavedModel for TF Serving, TFLite, LiteRT-LM, ONNX): `python -m export.<target>`."""
