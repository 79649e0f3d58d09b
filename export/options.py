"""Choices the exporters share, importable without TensorFlow (their --help reads them)."""

import os


def prog(module: str) -> str:
    """An exporter's name in its --help and messages: `tfllm export FORMAT` when the tfllm
    command runs it, else `python -m export.MODULE`."""
    return os.environ.get("TFLLM_PROG") or f"python -m export.{module}"


def error_prog(module: str) -> str:
    """The name an exporter's one-line errors start with: `tfllm export FORMAT` when the
    tfllm command runs it, else `export.MODULE`."""
    return os.environ.get("TFLLM_PROG") or f"export.{module}"

# Prefill signature lengths of the on-device exports (capped at the model's context).
DEFAULT_PREFILL = (32, 128)
# Weight precisions of export.tflite; int8 (full integer) is for classifiers only. The
# converter does float16 and dynamic-int8 (channelwise); ai-edge-quantizer the others
# (export/weight_quantization.py): int8 weights dequantized to float before each matmul,
# and int4 weights in blocks of 32 / 128 input values, one scale each, or (int4-asym) one
# scale and one float offset each, as GGUF's Q4_1 has, or (int4-mixed) int4-asym for the
# weights on a 4-bit grid already and dynamic int8 in chunks of 128 input values for the
# rest and the token table (causal LMs only; see export/block_offsets.py).
QUANTIZER_MODES = ("int8-weight", "int4-block32", "int4-block128", "int4-asym-block32",
                   "int4-asym-block128", "int4-mixed-block32")
QUANTIZE_MODES = ("float32", "float16", "dynamic-int8", "int8") + QUANTIZER_MODES
# What one part (embedding + output projection, attention, feed-forward) may take.
PART_MODES = ("float32", "dynamic-int8") + QUANTIZER_MODES
# The accuracy gate of a causal LM's quantized export, per mode: (least next-token top-1
# agreement with the float model, largest relative increase of held-out loss). Top-1
# agreement is noisy where the model itself is unsure (on SmolLM2-135M even int8 weights
# miss about one token in ten at almost the same loss), so the 8-bit gates leave room for
# that; figures in benchmarks/README.md ("On-device at real scale"). int4-asym holds the same
# weights more closely than int4 (SmolLM2's Q4_1 layers exactly) but keeps its per-token
# int8 activations, so it gets the same gates, and so does int4-mixed.
ACCURACY_GATES = {"float16": (0.95, 0.02), "dynamic-int8": (0.80, 0.02),
                  "int8-weight": (0.85, 0.02), "int4-block32": (0.80, 0.05),
                  "int4-block128": (0.75, 0.08), "int4-asym-block32": (0.80, 0.05),
                  "int4-asym-block128": (0.75, 0.08), "int4-mixed-block32": (0.80, 0.05)}
# Most rows one SavedModel request may carry (the cache and the loop's state scale with it).
DEFAULT_MAX_BATCH = 64


def add_part_options(parser):
    """`--quantize-embedding/-attention/-ffn`: per-part modes of the quantizer's modes."""
    for part, what in (("embedding", "the token table and the output projection (tied "
                        "to it or not)"), ("attention", "attention's q/k/v/output "
                        "projections"), ("ffn", "the feed-forward projections")):
        parser.add_argument(f"--quantize-{part}", choices=PART_MODES, default=None,
                            help=f"with --quantize {'|'.join(QUANTIZER_MODES)}: the mode of "
                                 f"{what} (default: --quantize's; float32 keeps it float)")


def add_gate_options(parser):
    """`--min-agreement` / `--max-loss-increase`: a quantized export's own gate."""
    parser.add_argument("--min-agreement", type=float, default=None,
                        help="least next-token top-1 agreement with the float model on "
                             "held-out text, 0-1 (default: the mode's, see above)")
    parser.add_argument("--max-loss-increase", type=float, default=None,
                        help="largest relative increase of held-out loss, e.g. 0.05 "
                             "(default: the mode's)")


def add_max_len(parser):
    """`--max-len`: the context (KV cache) length of a causal LM export."""
    parser.add_argument("--max-len", type=int, default=None,
                        help="context length of the export (its KV cache); default the run's. "
                             "Rotary models take any length, learned positions at most theirs")


def add_overwrite(parser):
    """`--overwrite`: replace an existing output, only one this exporter wrote."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that this exporter wrote (once the "
                             "new one is verified; anything else is never replaced)")
