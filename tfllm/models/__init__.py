"""Backbones and task models."""

from tfllm.models.backbone import TransformerBackbone
from tfllm.models.causal_lm import CausalLM, Perplexity, make_optimizer
from tfllm.models.classifier import SequenceClassifier
from tfllm.models.masked_lm import MaskedLM

__all__ = ["TransformerBackbone", "CausalLM", "MaskedLM", "SequenceClassifier", "Perplexity",
           "make_optimizer"]
