"""The one model configuration dataclass and its named presets.

This module imports nothing from tfllm, so every other part can depend on it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any



class TfllmError(Exception):
    """Base of every error tfllm raises on purpose (the CLI prints these as one line)."""


class ConfigError(TfllmError, ValueError):
    """A configuration value is invalid; the message names it and the fix."""

TOKENIZER_TYPES = ("char", "bpe", "unigram")
# Training choices, here so the command line can offer them without importing TensorFlow.
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# "gelu" is the tanh approximation (GPT-2); "gelu_exact" the erf form (BERT).
ACTIVATIONS = ("gelu", "relu", "gelu_exact")
# Gated feed-forward activations: SwiGLU (Llama family) and GeGLU (tanh GELU).
GATED_ACTIVATIONS = ("silu", "gelu")
NORMS = ("layernorm", "rmsnorm")
FFN_KINDS = ("plain", "gated")
POSITION_EMBEDDINGS = ("learned", "rope")
ROPE_SCALING_TYPES = ("linear", "llama3")
# Attention kinds of `layer_types` (Hugging Face's names): every earlier key, or the last
# `sliding_window` keys.
LAYER_TYPES = ("full_attention", "sliding_attention")
# How projection kernels start: "gpt2" N(0, 0.02) with residual-writing projections scaled
# by 1/sqrt(2 * layers) (GPT-2, nanoGPT); "xavier" Glorot-uniform (the original
# Transformer, PyTorch's nn.Transformer). Embeddings are N(0, 0.02) in both.
INITIALIZERS = ("gpt2", "xavier")
# Bounds on a config's sizes, far beyond any published model (Llama 3 405B: 126 layers,
# width 16384, 53248 feed-forward, 128 heads; Gemma 3: 262144 tokens), checked before
# anything is allocated: a downloaded config.json is untrusted input.
LIMITS = {"num_layers": 1024, "num_decoder_layers": 1024, "d_model": 1 << 16,
          "num_heads": 1024, "num_kv_heads": 1024, "head_size": 4096, "ffn_dim": 1 << 18,
          "max_len": 1 << 20, "vocab_size": 1 << 22, "type_vocab_size": 1024}
_BOOLS = ("causal", "norm_first", "qkv_bias", "proj_bias", "qk_norm", "tie_embeddings",
          "pooler", "post_norms", "scale_embeddings")
# Optional positive numbers (None: the feature is off).
_OPTIONAL_POSITIVE = ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
                      "rope_local_theta")


def _short(value, limit=60) -> str:
    text = repr(value) if not isinstance(value, (list, dict, str)) or len(value) < 100 \
        else repr(value[:100] if not isinstance(value, dict) else type(value).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def attention_types(num_layers: int, sliding_window, layer_types) -> list[str]:
    """Each layer's attention kind: `layer_types`, or every layer sliding where only a
    `sliding_window` is given (Mistral), else every layer "full_attention"."""
    if layer_types is not None:
        return list(layer_types)
    kind = "full_attention" if sliding_window is None else "sliding_attention"
    return [kind] * num_layers


@dataclasses.dataclass
class ModelConfig:
    """Shape and behaviour of a transformer model.

    Args:
        vocab_size: number of token ids; `None` until a tokenizer is trained
            (character presets take their vocabulary from the corpus).
        num_layers: transformer blocks.
        d_model: width of the residual stream.
        num_heads: attention heads; must divide `d_model`.
        ffn_dim: inner width of the feed-forward block.
        max_len: context length (position embeddings and KV cache length).
        dropout: dropout rate used in attention and residual branches.
        causal: True for a GPT-style decoder, False for a BERT-style encoder.
        activation: feed-forward activation: "gelu" (tanh approximation), "gelu_exact"
            (erf, as BERT) or "relu"; gated: "silu" or "gelu".
        norm_first: pre-LayerNorm (True) or post-LayerNorm (False) blocks.
        layer_norm_epsilon: LayerNorm epsilon.
        tokenizer: SentencePiece model type, "char", "bpe" or "unigram".
        num_kv_heads: key/value heads (grouped-query attention; 1 = multi-query); must
            divide `num_heads`. None: as many as `num_heads`.
        head_size: width of one attention head; None: `d_model // num_heads`.
        position_embedding: "learned" absolute positions (GPT-2) or "rope" (rotary).
        rope_theta: the rotary frequency base.
        rope_scaling: None, or {"type": "linear", "factor": F} or {"type": "llama3",
            "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}.
        norm: "layernorm" or "rmsnorm" (RMSNorm uses `layer_norm_epsilon`).
        ffn: "plain" (`activation` gelu or relu) or "gated" (silu: SwiGLU, gelu: GeGLU).
        qkv_bias: biases on the query/key/value projections.
        proj_bias: biases on the attention output and feed-forward projections.
        qk_norm: RMSNorm on each query and key head before attention (Qwen3).
        tie_embeddings: the output projection is the token embedding's transpose.
        type_vocab_size: segment (token type) embeddings, BERT's sentence A/B; 0: none.
        pooler: a dense + tanh layer over the first token's hidden state (BERT's pooler),
            which classifiers then read.
        num_decoder_layers: 0 for a decoder-only or encoder-only model; > 0 makes an
            encoder-decoder (`Seq2SeqLM`): `num_layers` bidirectional encoder blocks and this
            many causal decoder blocks with cross-attention, one shared embedding tied to
            the output projection, learned or rotary positions; `max_len` bounds source
            and target.
        initializer: how projection kernels start (training from scratch only):
            "gpt2" (N(0, 0.02), residual-writing projections scaled by 1/sqrt(2 * layers))
            or "xavier" (Glorot-uniform, as the original Transformer).
        post_norms: a norm on the output of attention and of the feed-forward before
            each joins the residual stream, besides the pre-norms (Gemma 2 and 3).
        scale_embeddings: token embeddings multiplied by sqrt(d_model), in their dtype
            (Gemma).
        query_pre_attn_scalar: queries are scaled by its inverse square root; None:
            `head_dim` (the usual 1/sqrt(head_dim)). Gemma 2 and 3 set it.
        attn_logit_softcap: attention scores become `cap * tanh(scores / cap)` before
            the mask (Gemma 2: 50); None: no capping.
        final_logit_softcap: the same on the output logits (Gemma 2: 30).
        sliding_window: how many of the latest positions (the query's own included) a
            "sliding_attention" layer sees; None: no sliding layers. At most `max_len`.
        layer_types: per layer, "full_attention" or "sliding_attention"; None: every
            layer full (or, with a `sliding_window`, every layer sliding, as Mistral).
        rope_local_theta: the rotary base of sliding layers, which also skip
            `rope_scaling` (Gemma 3: 10,000 local, 1,000,000 global); None: `rope_theta`
            and its scaling everywhere.

    The defaults of the fields after `tokenizer` are the GPT-2 architecture tfllm always
    had, so configs written before they existed load unchanged.

    Example:
        >>> cfg = get_preset("shakespeare-char")
        >>> cfg.head_dim
        32
    """

    vocab_size: int | None = None
    num_layers: int = 4
    d_model: int = 128
    num_heads: int = 4
    ffn_dim: int = 512
    max_len: int = 64
    dropout: float = 0.0
    causal: bool = True
    activation: str = "gelu"
    norm_first: bool = True
    layer_norm_epsilon: float = 1e-5
    tokenizer: str = "char"
    num_kv_heads: int | None = None
    head_size: int | None = None
    position_embedding: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    norm: str = "layernorm"
    ffn: str = "plain"
    qkv_bias: bool = True
    proj_bias: bool = True
    qk_norm: bool = False
    tie_embeddings: bool = True
    type_vocab_size: int = 0
    pooler: bool = False
    num_decoder_layers: int = 0
    initializer: str = "gpt2"
    post_norms: bool = False
    scale_embeddings: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: list | None = None
    rope_local_theta: float | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field with a bad value: of the wrong type,
        not finite, out of range (`LIMITS`), or a model too large for this machine."""
        for name in ("num_layers", "d_model", "num_heads", "ffn_dim", "max_len"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {_short(value)}")
        if self.vocab_size is not None and (not _is_int(self.vocab_size) or self.vocab_size <= 1):
            raise ConfigError(f"vocab_size must be an integer > 1, got {_short(self.vocab_size)}")
        for name in ("num_kv_heads", "head_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {_short(value)}")
        if not _is_int(self.type_vocab_size) or self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size must be an integer >= 0, got "
                              f"{_short(self.type_vocab_size)}")
        if not _is_int(self.num_decoder_layers) or self.num_decoder_layers < 0:
            raise ConfigError(f"num_decoder_layers must be an integer >= 0, got "
                              f"{_short(self.num_decoder_layers)}")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"{name} {value:,} is above the largest tfllm builds "
                                  f"({limit:,})")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got "
                                  f"{_short(getattr(self, name))}")
        for name in ("dropout", "layer_norm_epsilon", "rope_theta"):
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got "
                                  f"{_short(getattr(self, name))}")
        if not 0.0 < self.layer_norm_epsilon < 1.0:
            raise ConfigError(f"layer_norm_epsilon must be in (0, 1), got "
                              f"{self.layer_norm_epsilon!r}")
        if self.head_size is None and self.d_model % self.num_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must divide d_model ({self.d_model}), or give "
                "head_size"
            )
        for name in ("num_kv_heads", "head_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads "
                              f"({self.num_heads})")
        for name, value, choices in (("norm", self.norm, NORMS), ("ffn", self.ffn, FFN_KINDS),
                                     ("position_embedding", self.position_embedding,
                                      POSITION_EMBEDDINGS),
                                     ("initializer", self.initializer, INITIALIZERS)):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
        if self.position_embedding == "rope":
            if self.head_dim % 2:
                raise ConfigError(f"rotary embeddings need an even head dimension, got "
                                  f"{self.head_dim}")
            if not self.rope_theta > 0:
                raise ConfigError(f"rope_theta must be positive, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type") if isinstance(self.rope_scaling, dict) \
                else None
            if not isinstance(kind, str) or kind not in ROPE_SCALING_TYPES:
                raise ConfigError(f"unsupported rope scaling {_short(kind)}; supported: "
                                  f"{', '.join(ROPE_SCALING_TYPES)}")
            bad = [k for k, v in self.rope_scaling.items() if k != "type" and
                   (not _is_number(v) or v <= 0)]
            if bad:
                raise ConfigError(f"rope_scaling {bad[0]} must be a positive finite number, "
                                  f"got {_short(self.rope_scaling[bad[0]])}")
        if self.num_decoder_layers and (self.rope_scaling is not None or
                                        self.num_kv_heads not in (None, self.num_heads) or
                                        not self.tie_embeddings or self.qk_norm):
            raise ConfigError("encoder-decoder models (num_decoder_layers > 0) have tied "
                              "embeddings, no rope scaling, no grouped-query attention and "
                              "no QK-norm")
        self._validate_attention_kinds()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        allowed = GATED_ACTIVATIONS if self.ffn == "gated" else ACTIVATIONS
        if self.activation not in allowed:
            raise ConfigError(
                f"activation must be one of {allowed} for a {self.ffn} feed-forward, got "
                f"{self.activation!r}"
            )
        if self.tokenizer not in TOKENIZER_TYPES:
            raise ConfigError(
                f"tokenizer must be one of {TOKENIZER_TYPES}, got {_short(self.tokenizer)}"
            )
        self._check_fits_memory()

    def _validate_attention_kinds(self) -> None:
        for name in _OPTIONAL_POSITIVE:
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ConfigError(f"{name} must be a positive finite number or null, got "
                                  f"{_short(value)}")
        window = self.sliding_window
        if window is not None:
            if not _is_int(window) or window <= 0:
                raise ConfigError(f"sliding_window must be a positive integer or null, got "
                                  f"{_short(window)}")
            if window > self.max_len:
                raise ConfigError(f"sliding_window {window:,} is larger than the context "
                                  f"(max_len {self.max_len:,}); a window as long as the "
                                  "context is full attention: give at most max_len")
        if self.layer_types is not None:
            types = self.layer_types
            if not isinstance(types, list) or len(types) != self.num_layers:
                raise ConfigError(f"layer_types must be a list of num_layers "
                                  f"({self.num_layers}) entries, got {_short(types)}")
            bad = [t for t in types if not isinstance(t, str) or t not in LAYER_TYPES]
            if bad:
                raise ConfigError(f"unknown layer_types entry {_short(bad[0])}; known: "
                                  f"{', '.join(LAYER_TYPES)}")
            if "sliding_attention" in types and window is None:
                raise ConfigError("layer_types has sliding_attention layers but "
                                  "sliding_window is null; give the window's length")
        if (self.sliding_window is not None or self.rope_local_theta is not None) and \
                (self.is_seq2seq or not self.causal):
            raise ConfigError("sliding-window layers are for decoders (causal, "
                              "num_decoder_layers 0)")
        if self.post_norms and not self.norm_first:
            raise ConfigError("post_norms needs pre-norm blocks (norm_first true)")

    @property
    def attention_types(self) -> list[str]:
        """Each layer's attention kind (see `attention_types`)."""
        return attention_types(self.num_layers, self.sliding_window, self.layer_types)

    def num_parameters(self) -> int:
        """The model's parameter count (weights of the embeddings, blocks and output
        projection; biases and norms are counted too)."""
        d, f, hd = self.d_model, self.ffn_dim, self.head_dim
        q, kv = self.num_heads * hd, self.kv_heads * hd
        attention = d * (q + 2 * kv) + q * d + (q + 2 * kv + d)
        ffn = (3 if self.ffn == "gated" else 2) * d * f + 2 * f + d
        block = attention + ffn + (8 if self.post_norms else 4) * d
        vocab = self.vocab_size or 256
        embeddings = vocab * d * (1 if self.tie_embeddings else 2) + \
            (self.max_len * d if self.position_embedding == "learned" else 0)
        decoder = self.num_decoder_layers * (block + attention)  # + cross-attention
        return embeddings + self.num_layers * block + decoder

    def _check_fits_memory(self) -> None:
        # In its smallest dtype (bfloat16, 2 bytes) the model must fit this machine's
        # memory, or building it would exhaust the machine before any error.
        available = memory_bytes()
        need = 2 * self.num_parameters()
        if available and need > available:
            raise ConfigError(f"a model of {self.num_parameters():,} parameters needs "
                              f"{need / 2**30:.1f} GiB even in bfloat16, more than this "
                              f"machine's {available / 2**30:.1f} GiB of memory")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_size or self.d_model // self.num_heads

    @property
    def is_seq2seq(self) -> bool:
        """True for an encoder-decoder (`num_decoder_layers` > 0)."""
        return self.num_decoder_layers > 0

    @property
    def kv_heads(self) -> int:
        """Key/value heads (`num_heads` unless grouped-query)."""
        return self.num_kv_heads or self.num_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model config is a JSON object, got {_short(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        return cls(**data)


# Named presets (see shared design notes). `vocab_size=None` means "from the trained tokenizer".
PRESETS: dict[str, ModelConfig] = {
    # nanoGPT's CPU shakespeare_char config: the quickstart and test model.
    "shakespeare-char": ModelConfig(
        num_layers=4, d_model=128, num_heads=4, ffn_dim=512, max_len=64, dropout=0.0,
        tokenizer="char",
    ),
    # shakespeare-char's size as a Llama-family decoder: RoPE, RMSNorm, SwiGLU (inner width
    # 2/3 of 512, rounded up to 32, for about the same parameters), 2 key/value heads for
    # 4 query heads, no biases, tied embeddings.
    "llama-char": ModelConfig(
        num_layers=4, d_model=128, num_heads=4, num_kv_heads=2, ffn_dim=352, max_len=64,
        dropout=0.0, tokenizer="char", position_embedding="rope", norm="rmsnorm",
        ffn="gated", activation="silu", qkv_bias=False, proj_bias=False,
        layer_norm_epsilon=1e-5,
    ),
    # nanoGPT's shakespeare_char GPU config.
    "baby-gpt": ModelConfig(
        num_layers=6, d_model=384, num_heads=6, ffn_dim=1536, max_len=256, dropout=0.2,
        tokenizer="char",
    ),
    # The classic PyTorch word-language-model example's transformer.
    "transformer-base": ModelConfig(
        vocab_size=10000, num_layers=6, d_model=512, num_heads=8, ffn_dim=2048, max_len=512,
        dropout=0.5, tokenizer="unigram",
    ),
    # GPT-2 small, the shape of imported checkpoints.
    "gpt2": ModelConfig(
        vocab_size=50257, num_layers=12, d_model=768, num_heads=12, ffn_dim=3072,
        max_len=1024, dropout=0.1, tokenizer="bpe",
    ),
    # A small bidirectional encoder for classification fine-tuning.
    "bert-mini": ModelConfig(
        vocab_size=8000, num_layers=4, d_model=256, num_heads=4, ffn_dim=1024, max_len=128,
        dropout=0.1, causal=False, tokenizer="unigram",
    ),
    # Encoder-decoders for translation (pre-LN, shared 8k unigram vocabulary of both
    # languages, Glorot-uniform projections: they learn faster per step than GPT-2's init
    # at this size). Small: 3 + 3 blocks, sized to train in about 20 CPU-minutes, with the
    # Llama family's blocks (rotary positions, RMSNorm, SwiGLU 672 wide: the parameters of
    # a 1024-wide ReLU feed-forward), which reach a lower held-out loss than learned
    # positions, LayerNorm and ReLU in the same time. Both measured in benchmarks/README.md
    # ("Translation quality vs PyTorch").
    "transformer-mt-small": ModelConfig(
        vocab_size=8000, num_layers=3, num_decoder_layers=3, d_model=256, num_heads=4,
        ffn_dim=672, max_len=128, dropout=0.1, causal=False, activation="silu",
        tokenizer="unigram", initializer="xavier", position_embedding="rope",
        norm="rmsnorm", ffn="gated",
    ),
    # "Attention Is All You Need"'s base model (6 + 6 blocks, 512 wide, 8 heads, 2048 FFN,
    # 37k shared vocabulary there, 32k here), pre-LN; for accelerators.
    "transformer-base-mt": ModelConfig(
        vocab_size=32000, num_layers=6, num_decoder_layers=6, d_model=512, num_heads=8,
        ffn_dim=2048, max_len=256, dropout=0.1, causal=False, activation="relu",
        tokenizer="unigram", initializer="xavier",
    ),
}


def get_preset(name: str) -> ModelConfig:
    """Return a copy of the named preset.

    Args:
        name: one of `PRESETS`.

    Example:
        >>> get_preset("baby-gpt").num_layers
        6
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
