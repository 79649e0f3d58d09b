"""Keras layers of tfllm: embeddings (learned, rotary), attention (masks + KV cache), norms,
feed-forward (plain, gated), block."""

from tfllm.layers.attention import (MultiHeadAttention, cache_write_mode, causal_mask,
                                    empty_cache, merge_masks)
from tfllm.layers.embedding import (TokenAndPositionEmbedding, embedding_lookup,
                                    token_lookup_mode)
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.gated_feed_forward import GatedFeedForward
from tfllm.layers.rms_norm import RMSNorm
from tfllm.layers.rotary import RotaryEmbedding, rope_inverse_frequencies
from tfllm.layers.transformer_block import TransformerBlock

__all__ = ["MultiHeadAttention", "TokenAndPositionEmbedding", "FeedForward",
           "GatedFeedForward", "RMSNorm", "RotaryEmbedding", "rope_inverse_frequencies",
           "TransformerBlock", "cache_write_mode", "causal_mask", "merge_masks",
           "empty_cache", "token_lookup_mode", "embedding_lookup"]
