"""Choices the exporters share, importable without TensorFlow (their --help reads them)."""

# Prefill signature lengths of the on-device exports (capped at the model's context).
DEFAULT_PREFILL = (32, 128)
# Weight precisions of export.tflite; int8 (full integer) is for classifiers only.
QUANTIZE_MODES = ("float32", "float16", "dynamic-int8", "int8")
# Most rows one SavedModel request may carry (the cache and the loop's state scale with it).
DEFAULT_MAX_BATCH = 64


def add_max_len(parser):
    """`--max-len`: the context (KV cache) length of a causal LM export."""
    parser.add_argument("--max-len", type=int, default=None,
                        help="context length of the export (its KV cache); default the run's. "
                             "Rotary models take any length, learned positions at most theirs")
