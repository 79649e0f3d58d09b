"""Backbones and task models."""

from tfllm.models.backbone import TransformerBackbone
from tfllm.models.causal_lm import CausalLM, Perplexity, make_optimizer
from tfllm.models.classifier import SequenceClassifier
from tfllm.models.masked_lm import MaskedLM
from tfllm.models.seq2seq_backbone import Seq2SeqBackbone
from tfllm.models.seq2seq_lm import Seq2SeqLM, SmoothedSparseCrossentropy
from tfllm.models.text_encoder import TextEncoder

__all__ = ["TransformerBackbone", "CausalLM", "MaskedLM", "SequenceClassifier", "TextEncoder",
           "Seq2SeqBackbone", "Seq2SeqLM", "SmoothedSparseCrossentropy", "Perplexity",
           "make_optimizer"]
