"""ModelConfig.initializer reaches every projection kernel, with the documented law."""

import numpy as np
import pytest

from tfllm.config import ConfigError, ModelConfig
from tfllm.models.backbone import TransformerBackbone
from tfllm.models.seq2seq_backbone import Seq2SeqBackbone


def _kernels(backbone):
    """{path: kernel} of every Dense kernel in the blocks."""
    return {w.path: w.numpy() for w in backbone.weights
            if w.path.endswith("kernel") and "block" in w.path}


def _seq2seq(initializer):
    config = ModelConfig(vocab_size=50, num_layers=2, num_decoder_layers=3, d_model=64,
                         num_heads=4, ffn_dim=256, max_len=16, causal=False,
                         activation="relu", initializer=initializer)
    backbone = Seq2SeqBackbone.from_model_config(config)
    backbone.build()
    return backbone


def test_xavier_is_glorot_uniform_everywhere():
    backbone = _seq2seq("xavier")
    kernels = _kernels(backbone)
    # Encoder blocks: qkv, out, inner, outer; decoder blocks add cross q, kv and out.
    assert len(kernels) == 2 * 4 + 3 * 7
    for path, k in kernels.items():
        fan_in, fan_out = k.shape
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(k).max() <= limit, path
        # A uniform law on [-limit, limit] has stddev limit / sqrt(3).
        assert abs(k.std() - limit / np.sqrt(3)) < 0.1 * limit, path
    # Embeddings keep N(0, 0.02).
    assert abs(backbone.embedding.token_embeddings.numpy().std() - 0.02) < 0.002
    assert backbone.get_config()["initializer"] == "xavier"
    assert backbone.to_model_config().initializer == "xavier"


def test_gpt2_scales_residual_projections_by_depth():
    backbone = _seq2seq("gpt2")
    for path, k in _kernels(backbone).items():
        writes_residual = path.endswith(("out/kernel", "outer/kernel"))
        depth = 2 if "encoder" in path else 3
        expected = 0.02 / np.sqrt(2 * depth) if writes_residual else 0.02
        assert abs(k.std() - expected) < 0.15 * expected, path


def test_decoder_backbone_takes_the_option():
    config = ModelConfig(vocab_size=50, num_layers=2, d_model=64, num_heads=4, ffn_dim=256,
                         max_len=16, initializer="xavier")
    backbone = TransformerBackbone.from_model_config(config)
    backbone.build((None, None))
    qkv = backbone.blocks[0].attention.qkv.kernel.numpy()
    assert np.abs(qkv).max() <= np.sqrt(6 / (64 + 192))
    assert qkv.std() > 0.05  # far from N(0, 0.02)
    assert TransformerBackbone.from_config(backbone.get_config()).initializer == "xavier"


def test_default_and_bad_value():
    assert ModelConfig().initializer == "gpt2"  # runs saved before the field load unchanged
    with pytest.raises(ConfigError, match="initializer must be one of"):
        ModelConfig(initializer="he")
