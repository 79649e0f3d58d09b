"""Backbones and task models."""

from tfllm.models.backbone import TransformerBackbone
from tfllm.models.causal_lm import CausalLM, Perplexity, make_optimizer

__all__ = ["TransformerBackbone", "CausalLM", "Perplexity", "make_optimizer"]
