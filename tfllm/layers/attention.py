"""Multi-head attention with a fused QKV projection, explicit masks and a KV cache; in
cross-attention mode queries come from one sequence and keys/values from another.

The cache layout is tfllm's own and the same everywhere (training never uses it; Python
generation, the SavedModel and the TFLite/LiteRT-LM export do): per layer two tensors
`(batch, heads, max_len, head_dim)`, K and V, written at absolute positions. That layout is
what the on-device runtime expects, so one attention implementation serves every path. A
sliding-window layer (Mistral, Gemma 2/3) whose window is shorter than the context keeps
only `(batch, heads, window, head_dim)`: a ring where index i lives in slot i mod window
(`ring_masks`), so Gemma 3's local layers hold 512 positions of a 2,048-token context.
"""

import warnings

import keras
from keras import ops

from tfllm.layers import export_hooks
from tfllm.layers.export_hooks import through
from tfllm.layers.initializers import kernel_initializer as kernel_initializer_of
from tfllm.layers.rms_norm import RMSNorm
from tfllm.layers.rotary import RotaryEmbedding

# A decoding step scores the new token against itself on an axis of size 1 before joining
# the cache's scores; Keras warns about any such softmax while tracing (the export logs).
warnings.filterwarnings("ignore", message="You are using a softmax over axis -1 of a tensor "
                        "of shape", category=UserWarning)


def causal_mask(q_len, k_len, q_offset=0):
    """Boolean (q_len, k_len) mask: query i (at absolute position q_offset+i) sees keys <= it.

    Args:
        q_len: number of query positions.
        k_len: number of key positions (the cache length when decoding).
        q_offset: absolute position of the first query (a scalar, may be a tensor).
    """
    q_pos = ops.arange(q_len, dtype="int32")[:, None] + ops.cast(q_offset, "int32")
    k_pos = ops.arange(k_len, dtype="int32")[None, :]
    return k_pos <= q_pos


def sliding_window_mask(q_len, k_len, window, q_offset=0):
    """`causal_mask` limited to the latest `window` keys: query i sees key j where
    `0 <= i + q_offset - j < window` (Mistral's and Gemma's sliding-window layers).

    Args:
        q_len, k_len, q_offset: as `causal_mask`'s.
        window: keys a query sees, itself included.
    """
    q_pos = ops.arange(q_len, dtype="int32")[:, None] + ops.cast(q_offset, "int32")
    k_pos = ops.arange(k_len, dtype="int32")[None, :]
    return ops.logical_and(k_pos <= q_pos, k_pos > q_pos - window)


def ring_masks(seq_len, offset, ring_len, window, positions, padding_mask=None):
    """The attention mask and the write of a sliding-window layer whose cache is a ring of
    `ring_len` slots (index i of the sequence lives in slot i mod ring_len).

    Such a layer attends to its ring as it was before this call (each slot holding the
    latest index before `offset` of its residue) followed by this call's own keys, then
    writes the new keys: only real ones (a row's positions never decrease; a runtime pads
    a prefill with position 0 after the prompt) and of those the last `ring_len`.

    Args:
        seq_len: this call's tokens; offset: index of the first.
        ring_len: slots of the ring (<= window); window: keys a query sees, itself included.
        positions: int (seq,) or (batch, seq), the tokens' positions.
        padding_mask: optional bool (batch, max_len) over indices, True for real tokens.

    Returns (mask (batch|1, seq, ring_len + seq), pick (batch|1, seq, ring_len) float: a
    one-hot row for each written token).
    """
    offset = ops.cast(offset, "int32")
    q_idx = ops.arange(seq_len, dtype="int32") + offset  # (seq,)
    slot = ops.arange(ring_len, dtype="int32")
    # The index each slot holds (negative: none yet); mod of a non-negative number, as
    # tf2onnx converts a negative one's differently.
    held = (offset - 1) - ops.mod(offset - 1 - slot + ring_len, ring_len)  # (ring,)
    old = ops.logical_and(held[None, :] >= 0, q_idx[:, None] - held[None, :] < window)
    distance = q_idx[:, None] - q_idx[None, :]  # (seq, seq)
    new = ops.logical_and(distance >= 0, distance < window)
    if padding_mask is not None:
        pad = ops.cast(padding_mask, "bool")
        last = ops.shape(pad)[1] - 1
        old = ops.logical_and(old[None], ops.take(pad, ops.clip(held, 0, last), axis=1)
                              [:, None, :])  # (batch, seq, ring)
        new = ops.logical_and(new[None], ops.take(pad, ops.clip(q_idx, 0, last), axis=1)
                              [:, None, :])  # (batch, seq, seq)
    else:
        old, new = old[None], new[None]
    batch = ops.maximum(ops.shape(old)[0], ops.shape(new)[0])
    mask = ops.concatenate([ops.broadcast_to(old, (batch, seq_len, ring_len)),
                            ops.broadcast_to(new, (batch, seq_len, seq_len))], axis=-1)
    positions = ops.cast(positions, "int32")
    if len(positions.shape) == 1:
        positions = positions[None, :]
    written = ops.equal(positions, _running_max(positions))  # (b|1, seq)
    index = ops.arange(seq_len, dtype="int32")[None, :]
    last = ops.max(ops.where(written, index, -1), axis=1, keepdims=True)
    keep = ops.logical_and(written, index > last - ring_len)
    pick = ops.one_hot(ops.mod(q_idx, ring_len), ring_len)[None] * \
        ops.cast(keep, "float32")[:, :, None]  # (b|1, seq, ring)
    return mask, pick


def _running_max(x):
    """Running maximum along axis 1 of an int (b, n) tensor (no cummax op in Keras)."""
    n = ops.shape(x)[1]
    earlier = ops.arange(n)[None, :] <= ops.arange(n)[:, None]  # (n, n): j <= i
    low = ops.min(x) - 1
    return ops.max(ops.where(earlier[None], x[:, None, :], low), axis=2)


def merge_masks(causal=None, padding_mask=None):
    """Combine a (q, k) causal mask and a (batch, k) key padding mask into (batch|1, q, k).

    Either may be None; returns None when both are.
    """
    if padding_mask is None:
        return None if causal is None else causal[None, :, :]
    keys = ops.cast(padding_mask, "bool")[:, None, :]  # (batch, 1, k)
    if causal is None:
        return keys
    return ops.logical_and(causal[None, :, :], keys)


def empty_cache(batch_size, num_heads, max_len, head_dim, dtype="float32"):
    """A zero (K, V) cache pair for one layer, each (batch, kv_heads, max_len, head_dim)
    (`num_heads` here is the number of key/value heads)."""
    shape = (batch_size, num_heads, max_len, head_dim)
    return ops.zeros(shape, dtype), ops.zeros(shape, dtype)


def write_cache(cache, new, start):
    """`cache` (batch, heads, max_len, head_dim) with `new` (batch, heads, seq, head_dim)
    written at slots start..start+seq-1."""
    new = ops.cast(new, cache.dtype)
    # An exporter may trace the write as a one-hot blend (tf2onnx has no
    # dynamic-update-slice): see tfllm.layers.export_hooks.
    if export_hooks.setting("cache_write") == "slice":
        return ops.slice_update(cache, [0, 0, start, 0], new)
    slots = ops.arange(ops.shape(new)[2], dtype="int32") + start  # (seq,)
    pick = ops.one_hot(slots, ops.shape(cache)[2], dtype=cache.dtype)  # (seq, max_len)
    written = ops.einsum("bhsd,sm->bhmd", new, pick)  # (batch, heads, max_len, head_dim)
    keep = ops.reshape(1.0 - ops.sum(pick, axis=0), (1, 1, -1, 1))  # (1, 1, max_len, 1)
    return cache * keep + written


@keras.saving.register_keras_serializable(package="tfllm")
class MultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention over `num_heads` heads: self- or cross-attention.

    Args:
        d_model: input and output width.
        num_heads: query heads.
        dropout: dropout on attention probabilities and on the output.
        initializer_stddev: stddev of the normal kernel initializer.
        output_stddev: stddev for the output projection (default `initializer_stddev`);
            GPT-2 scales it by 1/sqrt(2 * layers) so the residual stream does not grow.
        num_kv_heads: key/value heads, dividing `num_heads` (grouped-query attention;
            1 = multi-query). None: `num_heads`. Each K/V head serves `num_heads /
            num_kv_heads` query heads; the cache holds only the K/V heads.
        head_dim: width of one head (None: `d_model // num_heads`).
        qkv_bias: biases on the fused query/key/value projection.
        out_bias: bias on the output projection.
        qk_norm: RMSNorm over each query and key head (Qwen3), before rotary embeddings.
        norm_epsilon: epsilon of the QK-norm.
        rope: None for no rotary embedding (positions come from the embeddings), or the
            `RotaryEmbedding` arguments other than head_dim, e.g. {"rope_theta": 10000.0}.
        cross_attention: queries from `x`, keys and values from another sequence (an
            encoder's output): a query projection and a fused key/value projection
            replace the fused QKV one, and there is no cache or rotary embedding. Called
            with `context=` (training, one-shot) or `context_kv=` (decoding: the keys and
            values of `project_context`, computed once per request and reused each step).
        kernel_initializer: "normal" (N(0, the stddevs above)) or "glorot_uniform" (the
            original Transformer's; the stddevs are then unused).
        query_pre_attn_scalar: queries are scaled by its inverse square root (Gemma 2
            and 3); None: by `head_dim`'s.
        logit_softcap: scores become `cap * tanh(scores / cap)` before the mask (Gemma
            2); None: no capping.

    Call args:
        x: (batch, seq, d_model).
        attention_mask: boolean, broadcastable to (batch, seq, keys); True = may attend.
            Keys are the `seq` inputs, or the `max_len` cache slots when `cache` is given.
        cache: optional `(k_cache, v_cache)`, each (batch, kv_heads, max_len, head_dim).
        cache_index: absolute position at which this call's keys/values are written.
        positions: int (seq,) or (batch, seq) absolute positions (rotary embeddings only;
            default `cache_index + 0..seq-1`).
        context: cross-attention only: (batch, src_len, d_model), the attended sequence.
        context_kv: cross-attention only: `(k, v)` from `project_context(context)`.

    Returns `output`, or `(output, (k_cache, v_cache))` when a cache is passed. In
    cross-attention `attention_mask` is broadcastable to (batch, seq, src_len).

    Example:
        >>> mha = MultiHeadAttention(d_model=8, num_heads=2)
        >>> mha(ops.ones((1, 3, 8)), attention_mask=causal_mask(3, 3)[None]).shape
        (1, 3, 8)
    """

    def __init__(self, d_model, num_heads, dropout=0.0, initializer_stddev=0.02,
                 output_stddev=None, num_kv_heads=None, head_dim=None, qkv_bias=True,
                 out_bias=True, qk_norm=False, norm_epsilon=1e-6, rope=None,
                 cross_attention=False, kernel_initializer="normal",
                 query_pre_attn_scalar=None, logit_softcap=None, **kwargs):
        super().__init__(**kwargs)
        if head_dim is None and d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        if num_heads % (num_kv_heads or num_heads):
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads "
                             f"({num_heads})")
        if cross_attention and (rope is not None or qk_norm):
            raise ValueError("cross-attention takes no rotary embedding or QK-norm")
        self.d_model = d_model
        self.num_heads = num_heads
        self.dropout = dropout
        self.initializer_stddev = initializer_stddev
        self.output_stddev = output_stddev
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim or d_model // num_heads
        self.qkv_bias = qkv_bias
        self.out_bias = out_bias
        self.qk_norm = qk_norm
        self.norm_epsilon = norm_epsilon
        self.rope = rope
        self.cross_attention = cross_attention
        self.kernel_initializer = kernel_initializer
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.logit_softcap = logit_softcap
        self.kv_heads = num_kv_heads or num_heads
        self.groups = num_heads // self.kv_heads  # query heads per key/value head
        self._head_dim_arg = head_dim
        init = kernel_initializer_of(kernel_initializer, initializer_stddev)
        if cross_attention:
            self.q = keras.layers.Dense(num_heads * self.head_dim, use_bias=qkv_bias,
                                        kernel_initializer=init, name="q",
                                        dtype=self.dtype_policy)
            self.kv = keras.layers.Dense(2 * self.kv_heads * self.head_dim,  # [k | v]
                                         use_bias=qkv_bias, kernel_initializer=init,
                                         name="kv", dtype=self.dtype_policy)
        else:
            width = (num_heads + 2 * self.kv_heads) * self.head_dim  # [q | k | v]
            self.qkv = keras.layers.Dense(width, use_bias=qkv_bias, kernel_initializer=init,
                                          name="qkv", dtype=self.dtype_policy)
        out_init = kernel_initializer_of(kernel_initializer, output_stddev or initializer_stddev)
        self.out = keras.layers.Dense(d_model, use_bias=out_bias, kernel_initializer=out_init,
                                      name="out", dtype=self.dtype_policy)
        self.attn_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.out_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        if qk_norm:
            self.q_norm = RMSNorm(norm_epsilon, name="q_norm", dtype=self.dtype_policy)
            self.k_norm = RMSNorm(norm_epsilon, name="k_norm", dtype=self.dtype_policy)
        self.rotary = (RotaryEmbedding(self.head_dim, **rope, name="rotary",
                                       dtype=self.dtype_policy) if rope is not None else None)

    def build(self, input_shape):
        if self.cross_attention:
            self.q.build(input_shape)
            self.kv.build((None, None, self.d_model))
        else:
            self.qkv.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_dim,))
        if self.qk_norm:
            self.q_norm.build((None, None, None, self.head_dim))
            self.k_norm.build((None, None, None, self.head_dim))
        self.built = True

    def _split_heads(self, x):
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        if self.groups == 1:
            qkv = ops.reshape(through(self.qkv, "call", self.qkv, x),
                              (batch, seq, 3, self.num_heads, self.head_dim))
            # Three (batch, heads, seq, head_dim) tensors.
            return [ops.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3)]
        qkv = through(self.qkv, "call", self.qkv, x)
        nq, nkv = self.num_heads * self.head_dim, self.kv_heads * self.head_dim
        parts = [(qkv[..., :nq], self.num_heads), (qkv[..., nq:nq + nkv], self.kv_heads),
                 (qkv[..., nq + nkv:], self.kv_heads)]
        # q (batch, heads, seq, head_dim); k, v (batch, kv_heads, seq, head_dim).
        return [ops.transpose(ops.reshape(t, (batch, seq, n, self.head_dim)), (0, 2, 1, 3))
                for t, n in parts]

    def project_context(self, context):
        """Cross-attention keys and values of `context` (batch, src_len, d_model): two
        (batch, kv_heads, src_len, head_dim) tensors, computed once per source sequence."""
        batch, src_len = ops.shape(context)[0], ops.shape(context)[1]
        kv = ops.reshape(through(self.kv, "call", self.kv, context),
                         (batch, src_len, 2, self.kv_heads, self.head_dim))
        return tuple(ops.transpose(kv[:, :, i], (0, 2, 1, 3)) for i in range(2))

    def call(self, x, attention_mask=None, cache=None, cache_index=None, positions=None,
             context=None, context_kv=None, ring_write=None, training=None):
        if self.cross_attention:
            if context_kv is None:
                if context is None:
                    raise ValueError("cross-attention needs `context` or `context_kv`")
                context_kv = self.project_context(context)
            batch, seq = ops.shape(x)[0], ops.shape(x)[1]
            q = ops.reshape(through(self.q, "call", self.q, x),
                            (batch, seq, self.num_heads, self.head_dim))
            q = ops.transpose(q, (0, 2, 1, 3))  # (batch, heads, seq, head_dim)
            q = q * ops.cast(self._query_scale(), q.dtype)
            k, v = context_kv
            return self._attend(q, ops.cast(k, q.dtype), ops.cast(v, q.dtype),
                                attention_mask, training)
        q, k, v = self._split_heads(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            if positions is None:
                offset = 0 if cache_index is None else ops.cast(cache_index, "int32")
                positions = ops.arange(ops.shape(x)[1], dtype="int32") + offset
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        q = q * ops.cast(self._query_scale(), q.dtype)
        if cache is None:
            return self._attend(q, k, v, attention_mask, training)
        k_cache, v_cache = cache
        start = ops.cast(cache_index, "int32")
        if ring_write is not None:
            return self._attend_ring(q, k, v, k_cache, v_cache, attention_mask, ring_write,
                                     training)
        if x.shape[1] == 1 and export_hooks.setting("decode_read") == "before_write":
            out, h = self._attend_one(q, k, v, k_cache, v_cache, start, attention_mask, training)
            # The write depends on the attention output (a zero that XLA may not fold away:
            # h * 0 is NaN for non-finite h), so every read of the old cache is ordered
            # before it and XLA:CPU updates the loop-carried cache in place. Without this
            # it copied all caches twice per decoding step.
            after = ops.cast(ops.sum(h, axis=-1, keepdims=True), k.dtype) * 0.0  # (b, h, 1, 1)
            if self.groups > 1:
                after = ops.sum(ops.reshape(after, (ops.shape(after)[0], self.kv_heads,
                                                    self.groups, 1, 1)), axis=2)  # (b, kv, 1, 1)
            return out, (write_cache(k_cache, k + after, start),
                         write_cache(v_cache, v + after, start))
        k_cache = write_cache(k_cache, k, start)
        v_cache = write_cache(v_cache, v, start)
        out = self._attend(q, ops.cast(k_cache, q.dtype), ops.cast(v_cache, q.dtype),
                           attention_mask, training)
        return out, (k_cache, v_cache)

    def _query_scale(self):
        return 1.0 / (self.query_pre_attn_scalar or self.head_dim) ** 0.5

    def _masked_softmax(self, scores, mask, training):
        # Softmax in float32: bf16/fp16 logits lose too much precision, and -1e9 overflows fp16.
        scores = ops.cast(scores, "float32")
        if self.logit_softcap:
            scores = ops.tanh(scores / self.logit_softcap) * self.logit_softcap
        if mask is not None:
            if export_hooks.setting("mask_fill") == "constant":
                fill = ops.cast(-1e9, "float32")
            else:
                fill = ops.min(scores, axis=-1, keepdims=True) - 30.0  # (batch, heads, seq, 1)
            scores = ops.where(mask, scores, fill)
        probs = ops.softmax(scores, axis=-1)
        return self.attn_dropout(probs, training=training)

    def _output(self, h, training):
        h = ops.transpose(h, (0, 2, 1, 3))  # (batch, seq, heads, head_dim)
        h = ops.reshape(h, (ops.shape(h)[0], ops.shape(h)[1], self.num_heads * self.head_dim))
        return self.out_dropout(through(self.out, "call", self.out, h), training=training)

    def _attend(self, q, k, v, attention_mask, training):
        mask = None
        if attention_mask is not None:
            mask = ops.expand_dims(ops.cast(attention_mask, "bool"), 1)  # (batch, 1, seq, keys)
        if self.groups == 1:
            scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (batch, heads, seq, keys)
            probs = ops.cast(self._masked_softmax(scores, mask, training), q.dtype)
            return self._output(ops.matmul(probs, v), training)  # (batch, heads, seq, head_dim)
        # Grouped: each K/V head serves `groups` query heads; K and V are never repeated.
        batch, seq = ops.shape(q)[0], ops.shape(q)[2]
        qg = ops.reshape(q, (batch, self.kv_heads, self.groups, seq, self.head_dim))
        scores = ops.einsum("bkgqd,bkmd->bkgqm", qg, k)  # (batch, kv, groups, seq, keys)
        scores = ops.reshape(scores, (batch, self.num_heads, seq, ops.shape(k)[2]))
        probs = ops.cast(self._masked_softmax(scores, mask, training), q.dtype)
        probs = ops.reshape(probs, (batch, self.kv_heads, self.groups, seq, ops.shape(k)[2]))
        h = ops.einsum("bkgqm,bkmd->bkgqd", probs, v)
        return self._output(ops.reshape(h, (batch, self.num_heads, seq, self.head_dim)),
                            training)

    def _attend_one(self, q, k, v, k_cache, v_cache, start, attention_mask, training):
        """One new token (the decoding step): attend to the cache as it was, plus itself.

        Reading the cache from *before* this step's write lets XLA:CPU write it in place;
        reading the written cache made XLA fuse a second copy of the write into the
        attention and copy the caches on every step (a fifth of baby-gpt's batch-1
        decoding time, before `call` also ordered the write after the reads). The result
        is the same: the cache's slot `start` (stale) is hidden and this token's own key
        and value are added.

        Returns (output (batch, 1, d_model), attention result (batch, heads, 1, head_dim)).
        """
        k_old, v_old = ops.cast(k_cache, q.dtype), ops.cast(v_cache, q.dtype)
        if self.groups > 1:
            # This token's K/V per query head (a (b, kv, 1, d) tensor repeated: one token).
            k = ops.repeat(k, self.groups, axis=1)
            v = ops.repeat(v, self.groups, axis=1)
        # The query's length-1 axis dropped: XLA:CPU compiles "bhqd,bhkd->bhqk" into a copy
        # of a transposed K every step, this form into none (benchmarks/README.md,
        # "Generation throughput").
        if self.groups == 1:
            # (b, h, 1, max_len)
            qk = ops.einsum("bhd,bhkd->bhk", q[:, :, 0, :], k_old)[:, :, None, :]
        else:
            batch = ops.shape(q)[0]
            qg = ops.reshape(q[:, :, 0, :], (batch, self.kv_heads, self.groups, self.head_dim))
            qk = ops.einsum("bkgd,bkmd->bkgm", qg, k_old)  # (b, kv, groups, max_len)
            qk = ops.reshape(qk, (batch, self.num_heads, 1, ops.shape(k_old)[2]))
        scores = ops.concatenate([qk, ops.sum(q * k, axis=-1, keepdims=True)],  # + (b, h, 1, 1)
                                 axis=-1)
        batch, max_len = ops.shape(q)[0], ops.shape(k_cache)[2]
        mask = ops.not_equal(ops.arange(max_len, dtype="int32"), start)[None, None, :]
        if attention_mask is not None:  # (batch|1, 1, max_len)
            mask = ops.logical_and(ops.cast(attention_mask, "bool"), mask)
        mask = ops.concatenate([ops.broadcast_to(mask, (batch, 1, max_len)),
                                ops.ones((batch, 1, 1), "bool")], axis=-1)
        probs = self._masked_softmax(scores, mask[:, None], training)  # (b, h, 1, max_len + 1)
        probs = ops.cast(probs, q.dtype)
        if self.groups == 1:
            h = ops.matmul(probs[..., :-1], v_old)  # (b, h, 1, head_dim)
        else:
            pg = ops.reshape(probs[..., :-1], (batch, self.kv_heads, self.groups, max_len))
            h = ops.reshape(ops.einsum("bkgm,bkmd->bkgd", pg, v_old),
                            (batch, self.num_heads, 1, self.head_dim))
        h = h + probs[..., -1:] * v
        return self._output(h, training), h

    def _attend_ring(self, q, k, v, k_cache, v_cache, attention_mask, pick, training):
        """A sliding-window layer's cached step over a ring cache (see `ring_masks`): attend
        to the ring as it was plus this call's keys, then write the picked new keys."""
        keys = ops.concatenate([ops.cast(k_cache, q.dtype), k], axis=2)  # (b, kv, ring+seq, d)
        values = ops.concatenate([ops.cast(v_cache, q.dtype), v], axis=2)
        out = self._attend(q, keys, values, attention_mask, training)
        pick = ops.cast(pick, k_cache.dtype)  # (b|1, seq, ring)
        pick = ops.broadcast_to(pick, (ops.shape(k)[0], ops.shape(pick)[1], ops.shape(pick)[2]))
        keep = (1.0 - ops.sum(pick, axis=1))[:, None, :, None]  # (batch, 1, ring, 1)

        def write(cache, new):
            return cache * keep + ops.einsum("bhsd,bsr->bhrd", ops.cast(new, cache.dtype), pick)
        return out, (write(k_cache, k), write(v_cache, v))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(d_model=self.d_model, num_heads=self.num_heads, dropout=self.dropout,
                      initializer_stddev=self.initializer_stddev,
                      output_stddev=self.output_stddev, num_kv_heads=self.num_kv_heads,
                      head_dim=self._head_dim_arg, qkv_bias=self.qkv_bias,
                      out_bias=self.out_bias, qk_norm=self.qk_norm,
                      norm_epsilon=self.norm_epsilon, rope=self.rope,
                      cross_attention=self.cross_attention,
                      kernel_initializer=self.kernel_initializer,
                      query_pre_attn_scalar=self.query_pre_attn_scalar,
                      logit_softcap=self.logit_softcap)
        return config
