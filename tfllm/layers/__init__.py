"""Keras layers of tfllm: embedding, attention (masks + KV cache), feed-forward, block."""

from tfllm.layers.attention import (MultiHeadAttention, cache_write_mode, causal_mask,
                                    empty_cache, merge_masks)
from tfllm.layers.embedding import TokenAndPositionEmbedding
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.transformer_block import TransformerBlock

__all__ = ["MultiHeadAttention", "TokenAndPositionEmbedding", "FeedForward",
           "TransformerBlock", "cache_write_mode", "causal_mask", "merge_masks",
           "empty_cache"]
