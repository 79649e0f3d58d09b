"""One transformer block: attention (and, in a decoder of an encoder-decoder,
cross-attention) and feed-forward, each in a residual branch."""

import keras

from tfllm.layers.attention import MultiHeadAttention
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.gated_feed_forward import GatedFeedForward
from tfllm.layers.rms_norm import RMSNorm


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerBlock(keras.layers.Layer):
    """Self-attention + feed-forward with residuals, pre-LayerNorm (GPT-2) or post-LN (BERT).

    Args:
        d_model: residual width.
        num_heads: attention heads.
        ffn_dim: feed-forward inner width.
        dropout: dropout in both branches.
        activation: "gelu" or "relu".
        norm_first: True for pre-LN `x + f(LN(x))`, False for post-LN `LN(x + f(x))`.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_stddev: stddev of the normal kernel initializers.
        output_stddev: stddev of the kernels that write into the residual stream.
        norm: "layernorm" or "rmsnorm" (both with `layer_norm_epsilon`).
        ffn: "plain" (`activation` gelu/relu) or "gated" (silu: SwiGLU, gelu: GeGLU).
        num_kv_heads, head_dim, qkv_bias, qk_norm, rope: as `MultiHeadAttention`'s.
        proj_bias: biases on the attention output and feed-forward projections.
        cross_attention: a cross-attention branch over an encoder's output between the
            self-attention and the feed-forward (the original Transformer's decoder block).
        kernel_initializer: "normal" (the stddevs above) or "glorot_uniform", for every
            projection.
        post_norms: (pre-norm blocks) also normalize each branch's output before it joins
            the residual stream: `x + norm(f(norm(x)))` (Gemma 2 and 3).
        query_pre_attn_scalar, attn_logit_softcap: `MultiHeadAttention`'s
            `query_pre_attn_scalar` and `logit_softcap`.

    Call args are those of `MultiHeadAttention`, plus for cross-attention blocks `context`
    (batch, src_len, d_model) or `context_kv` (per-block `(k, v)` from
    `project_context`) and `context_mask` (batch|1, 1|seq, src_len); with a cache it
    returns `(x, cache)`.

    Example:
        >>> TransformerBlock(d_model=8, num_heads=2, ffn_dim=16)(keras.ops.ones((1, 3, 8))).shape
        (1, 3, 8)
    """

    def __init__(self, d_model, num_heads, ffn_dim, dropout=0.0, activation="gelu",
                 norm_first=True, layer_norm_epsilon=1e-5, initializer_stddev=0.02,
                 output_stddev=None, norm="layernorm", ffn="plain", num_kv_heads=None,
                 head_dim=None, qkv_bias=True, proj_bias=True, qk_norm=False, rope=None,
                 cross_attention=False, kernel_initializer="normal", post_norms=False,
                 query_pre_attn_scalar=None, attn_logit_softcap=None, **kwargs):
        super().__init__(**kwargs)
        if post_norms and not norm_first:
            raise ValueError("post_norms needs pre-norm blocks (norm_first=True)")
        self.post_norms = post_norms
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attn_logit_softcap = attn_logit_softcap
        self.d_model = d_model
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.activation = activation
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_stddev = initializer_stddev
        self.output_stddev = output_stddev
        self.norm = norm
        self.ffn_kind = ffn
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        self.qk_norm = qk_norm
        self.rope = rope
        self.cross_attention = cross_attention
        self.kernel_initializer = kernel_initializer
        policy = self.dtype_policy
        self.attention = MultiHeadAttention(
            d_model, num_heads, dropout, initializer_stddev, output_stddev,
            num_kv_heads=num_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias,
            out_bias=proj_bias, qk_norm=qk_norm, norm_epsilon=layer_norm_epsilon, rope=rope,
            kernel_initializer=kernel_initializer, query_pre_attn_scalar=query_pre_attn_scalar,
            logit_softcap=attn_logit_softcap, name="attention", dtype=policy)
        if ffn == "gated":
            self.ffn = GatedFeedForward(d_model, ffn_dim, activation, proj_bias, dropout,
                                        initializer_stddev, output_stddev,
                                        kernel_initializer=kernel_initializer, name="ffn",
                                        dtype=policy)
        else:
            self.ffn = FeedForward(d_model, ffn_dim, activation, dropout, initializer_stddev,
                                   output_stddev, kernel_initializer=kernel_initializer,
                                   name="ffn", dtype=policy)
        self.norm1, self.norm2 = (make_norm(norm, layer_norm_epsilon, name, policy)
                                  for name in ("norm1", "norm2"))
        if post_norms:
            self.post_attention_norm, self.post_ffn_norm = (
                make_norm(norm, layer_norm_epsilon, name, policy)
                for name in ("post_attention_norm", "post_ffn_norm"))
        if cross_attention:
            self.cross = MultiHeadAttention(
                d_model, num_heads, dropout, initializer_stddev, output_stddev,
                num_kv_heads=num_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                out_bias=proj_bias, cross_attention=True,
                kernel_initializer=kernel_initializer, name="cross_attention", dtype=policy)
            self.norm_cross = make_norm(norm, layer_norm_epsilon, "norm_cross", policy)

    def build(self, input_shape):
        layers = [self.attention, self.ffn, self.norm1, self.norm2]
        if self.post_norms:
            layers += [self.post_attention_norm, self.post_ffn_norm]
        if self.cross_attention:
            layers += [self.cross, self.norm_cross]
        for layer in layers:
            layer.build(input_shape)
        self.built = True

    def project_context(self, context):
        """This block's cross-attention `(k, v)` of an encoder output (see
        `MultiHeadAttention.project_context`)."""
        return self.cross.project_context(context)

    def call(self, x, attention_mask=None, cache=None, cache_index=None, positions=None,
             context=None, context_kv=None, context_mask=None, ring_write=None,
             training=None):
        attn_in = self.norm1(x) if self.norm_first else x
        attn = self.attention(attn_in, attention_mask=attention_mask, cache=cache,
                              cache_index=cache_index, positions=positions,
                              ring_write=ring_write, training=training)
        if cache is not None:
            attn, cache = attn
        if self.post_norms:
            attn = self.post_attention_norm(attn)
        x = x + attn if self.norm_first else self.norm1(x + attn)
        if self.cross_attention:
            cross_in = self.norm_cross(x) if self.norm_first else x
            cross = self.cross(cross_in, attention_mask=context_mask, context=context,
                               context_kv=context_kv, training=training)
            x = x + cross if self.norm_first else self.norm_cross(x + cross)
        if self.norm_first:
            out = self.ffn(self.norm2(x), training=training)
            x = x + (self.post_ffn_norm(out) if self.post_norms else out)
        else:
            x = self.norm2(x + self.ffn(x, training=training))
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(d_model=self.d_model, num_heads=self.num_heads, ffn_dim=self.ffn_dim,
                      dropout=self.dropout, activation=self.activation,
                      norm_first=self.norm_first, layer_norm_epsilon=self.layer_norm_epsilon,
                      initializer_stddev=self.initializer_stddev,
                      output_stddev=self.output_stddev, norm=self.norm, ffn=self.ffn_kind,
                      num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                      qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                      qk_norm=self.qk_norm, rope=self.rope,
                      cross_attention=self.cross_attention,
                      kernel_initializer=self.kernel_initializer,
                      post_norms=self.post_norms,
                      query_pre_attn_scalar=self.query_pre_attn_scalar,
                      attn_logit_softcap=self.attn_logit_softcap)
        return config


def make_norm(kind, epsilon, name, dtype=None):
    """A LayerNormalization ("layernorm") or an RMSNorm ("rmsnorm")."""
    if kind == "rmsnorm":
        return RMSNorm(epsilon, name=name, dtype=dtype)
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name, dtype=dtype)
