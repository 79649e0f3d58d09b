import pytest

from tfllm.config import PRESETS, ConfigError, ModelConfig, get_preset

# The preset table of the shared design notes.
DESIGN = {
    "shakespeare-char": (4, 128, 4, 512, 64, 0.0, None),
    "baby-gpt": (6, 384, 6, 1536, 256, 0.2, None),
    "transformer-base": (6, 512, 8, 2048, 512, 0.5, 10000),
    "gpt2": (12, 768, 12, 3072, 1024, 0.1, 50257),
    "bert-mini": (4, 256, 4, 1024, 128, 0.1, 8000),
    # shakespeare-char's size as a Llama-family decoder (issue #15).
    "llama-char": (4, 128, 4, 352, 64, 0.0, None),
    # Encoder-decoders (issue #17): encoder layers here, decoder layers in DECODER_LAYERS.
    # Rotary, RMSNorm and SwiGLU blocks: 672 = the parameters of a 1024-wide ReLU FFN.
    "transformer-mt-small": (3, 256, 4, 672, 128, 0.1, 8000),
    "transformer-base-mt": (6, 512, 8, 2048, 256, 0.1, 32000),
}
DECODER_LAYERS = {"transformer-mt-small": 3, "transformer-base-mt": 6}


@pytest.mark.parametrize("name", sorted(DESIGN))
def test_presets_match_design(name):
    c = get_preset(name)
    assert (c.num_layers, c.d_model, c.num_heads, c.ffn_dim, c.max_len, c.dropout,
            c.vocab_size) == DESIGN[name]
    assert c.causal == (name != "bert-mini" and name not in DECODER_LAYERS)
    assert c.num_decoder_layers == DECODER_LAYERS.get(name, 0)
    assert set(PRESETS) == set(DESIGN)


def test_llama_char_is_a_llama_family_decoder():
    c = get_preset("llama-char")
    assert (c.position_embedding, c.norm, c.ffn, c.activation, c.kv_heads, c.qkv_bias,
            c.proj_bias) == ("rope", "rmsnorm", "gated", "silu", 2, False, False)


def test_transformer_mt_small_has_no_more_parameters_than_the_original_blocks():
    from tfllm.models.seq2seq_lm import Seq2SeqLM

    c = get_preset("transformer-mt-small")
    assert (c.position_embedding, c.norm, c.ffn, c.activation) == ("rope", "rmsnorm",
                                                                  "gated", "silu")
    original = c.replace(position_embedding="learned", norm="layernorm", ffn="plain",
                         activation="relu", ffn_dim=1024)
    ours, theirs = (Seq2SeqLM.from_model_config(x).count_params() for x in (c, original))
    assert 0.97 * theirs < ours <= theirs


def test_get_preset_returns_a_copy():
    get_preset("gpt2").dropout = 0.9
    assert get_preset("gpt2").dropout == 0.1


def test_round_trip_dict():
    c = get_preset("baby-gpt").replace(vocab_size=65)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert c.head_dim == 64


@pytest.mark.parametrize("changes, match", [
    (dict(num_heads=5), "num_heads"), (dict(num_layers=0), "num_layers"),
    (dict(dropout=1.0), "dropout"), (dict(activation="swish"), "activation"),
    (dict(tokenizer="word"), "tokenizer"), (dict(vocab_size=1), "vocab_size"),
])
def test_bad_values_name_the_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        get_preset("shakespeare-char").replace(**changes)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="shakespeare-char"):
        get_preset("gpt5")


def test_unknown_fields_rejected():
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})
