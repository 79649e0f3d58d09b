"""Keras layers of tfllm: embeddings (learned, rotary), attention (masks + KV cache), norms,
feed-forward (plain, gated), block; `export_hooks`, how an exporter changes how they trace."""

from tfllm.layers import export_hooks
from tfllm.layers.attention import MultiHeadAttention, causal_mask, empty_cache, merge_masks
from tfllm.layers.embedding import TokenAndPositionEmbedding, embedding_lookup
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.gated_feed_forward import GatedFeedForward
from tfllm.layers.rms_norm import RMSNorm
from tfllm.layers.rotary import RotaryEmbedding, rope_inverse_frequencies
from tfllm.layers.transformer_block import TransformerBlock

__all__ = ["MultiHeadAttention", "TokenAndPositionEmbedding", "FeedForward",
           "GatedFeedForward", "RMSNorm", "RotaryEmbedding", "rope_inverse_frequencies",
           "TransformerBlock", "causal_mask", "merge_masks", "empty_cache", "embedding_lookup",
           "export_hooks"]
