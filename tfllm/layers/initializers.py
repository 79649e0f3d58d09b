"""The kernel initializers tfllm's projections choose between."""

import keras

# "normal": N(0, stddev), GPT-2's and BERT's; "glorot_uniform": U(+-sqrt(6 / (fan_in +
# fan_out))), the original Transformer's and PyTorch's `nn.Transformer`'s (xavier_uniform_).
KERNEL_INITIALIZERS = ("normal", "glorot_uniform")


def kernel_initializer(kind, stddev):
    """A Keras initializer for a projection kernel.

    Args:
        kind: one of `KERNEL_INITIALIZERS`.
        stddev: the normal initializer's stddev (unused by "glorot_uniform").

    Example:
        >>> type(kernel_initializer("glorot_uniform", 0.02)).__name__
        'GlorotUniform'
    """
    if kind == "normal":
        return keras.initializers.RandomNormal(stddev=stddev)
    if kind == "glorot_uniform":
        return keras.initializers.GlorotUniform()
    raise ValueError(f"kernel_initializer must be one of {KERNEL_INITIALIZERS}, got {kind!r}")


def block_initializers(initializer, num_layers):
    """`TransformerBlock` initializer arguments for a `ModelConfig.initializer`.

    Args:
        initializer: "gpt2" or "xavier" (see `ModelConfig`).
        num_layers: blocks in the stack (GPT-2 scales residual-writing projections by it).

    Example:
        >>> block_initializers("xavier", 6)
        {'kernel_initializer': 'glorot_uniform'}
    """
    if initializer == "xavier":
        return dict(kernel_initializer="glorot_uniform")
    if initializer != "gpt2":
        raise ValueError(f"initializer must be 'gpt2' or 'xavier', got {initializer!r}")
    # GPT-2 / nanoGPT: residual-writing projections scaled by 1/sqrt(2 * layers).
    return dict(initializer_stddev=0.02, output_stddev=0.02 / (2 * num_layers) ** 0.5)
