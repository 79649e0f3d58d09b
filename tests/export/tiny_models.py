"""Tiny random causal LMs the export tests quantize."""


def tiny_llama(d_model=128, ffn_dim=256, **config):
    """A 2-block Llama-shaped CausalLM (RMSNorm, RoPE, gated SiLU, GQA), 96 tokens, context
    32, its weights drawn from Keras' seed 0; `config`: other ModelConfig fields (e.g.
    num_layers, tie_embeddings, position_embedding)."""
    import keras

    from tfllm.config import ModelConfig
    from tfllm.models import CausalLM

    keras.utils.set_random_seed(0)
    fields = dict(vocab_size=96, num_layers=2, d_model=d_model, num_heads=4, num_kv_heads=2,
                  ffn_dim=ffn_dim, max_len=32, dropout=0.0, position_embedding="rope",
                  norm="rmsnorm", ffn="gated", activation="silu", qkv_bias=False,
                  proj_bias=False, layer_norm_epsilon=1e-6)
    return CausalLM.from_model_config(ModelConfig(**{**fields, **config}))
