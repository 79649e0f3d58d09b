"""A tiny Llama-style base run whose SentencePiece vocabulary holds ChatML's markers, and
a toy English -> French word task as prompt/response pairs."""

import itertools
import os

from tfllm.tokenizers.chat_template import DEFAULT_TEMPLATE

WORDS = {"cat": "chat", "dog": "chien", "house": "maison", "file": "fichier",
         "open": "ouvrir", "close": "fermer", "red": "rouge", "blue": "bleu",
         "big": "grand", "small": "petit", "green": "vert", "water": "eau"}


def word_pairs():
    """(english, french): every word alone and every ordered pair of two words."""
    pairs = [(en, fr) for en, fr in WORDS.items()]
    pairs += [(f"{a} {b}", f"{WORDS[a]} {WORDS[b]}")
              for a, b in itertools.permutations(WORDS, 2)]
    return pairs


def write_pairs_tsv(path, pairs=None):
    with open(path, "w", encoding="utf-8") as f:
        f.write("en\tfr\n")
        for en, fr in pairs or word_pairs():
            f.write(f"{en}\t{fr}\n")
    return f"tsv:{path}"


def make_base_run(out, seed=0, max_len=64, extra_texts=()):
    """Write a randomly initialized causal LM run (no chat template of its own) at `out`
    (`extra_texts`: more text for its tokenizer to learn pieces of)."""
    import keras

    from tfllm import runs
    from tfllm.tokenizers.chat_template import ChatTemplate
    from tfllm.config import ModelConfig
    from tfllm.models import CausalLM
    from tfllm.tokenizers import SentencePieceTokenizer

    template = ChatTemplate()
    texts = [template.render([{"role": "user", "content": f"Translate to French: {en}"},
                              {"role": "assistant", "content": fr}])
             for en, fr in word_pairs()] + list(extra_texts)
    tokenizer = SentencePieceTokenizer.train(texts, "bpe", 400,
                                             user_symbols=["<|im_start|>", "<|im_end|>"])
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=2, d_model=48,
                         num_heads=4, num_kv_heads=2, ffn_dim=96, max_len=max_len,
                         tokenizer="bpe", position_embedding="rope", norm="rmsnorm",
                         ffn="gated", activation="silu", qkv_bias=False, proj_bias=False)
    keras.utils.set_random_seed(seed)
    model = CausalLM.from_model_config(config, name="causal_lm")
    os.makedirs(out, exist_ok=True)
    tokenizer.save(os.path.join(out, runs.TOKENIZER))
    model.save(os.path.join(out, runs.MODEL))
    runs.write_run_config(out, {"model": config.to_dict(), "objective": "clm",
                                "tokenizer": runs.TOKENIZER, "preset": None})
    return out


# Function specs offered to chat models (#36), and two templates that render tools.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10},
            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
]


def make_tools_run(out):
    """A random tiny Llama-style run at `out` with ChatML as its chat template, a context
    long enough for a tools system turn, and a SentencePiece vocabulary that learned the
    tools' text (byte pieces spell the rest)."""
    from tfllm import runs
    from tfllm.models.tool_calls import call_text, check_tools, tools_system_prompt
    from tfllm.tokenizers.chat_template import chat_config_of

    texts = [tools_system_prompt(check_tools(TOOLS)),
             call_text("get_weather", {"city": "Paris", "unit": "celsius"}),
             call_text("add", {"a": 2, "b": 3})]
    run = make_base_run(out, max_len=1024, extra_texts=texts)
    config = runs.read_run_config(run)
    config["chat"] = chat_config_of(config, runs.load(run).tokenizer, DEFAULT_TEMPLATE)
    runs.write_run_config(run, config)
    return run


# The part of Qwen2.5's template that renders tools (and teaches <tool_call>).
QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}{%- for tool in tools %}"
    "{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools>\\nReturn <tool_call>"
    "</tool_call><|im_end|>\\n' }}{%- endif %}" + DEFAULT_TEMPLATE)
LLAMA3_LIKE = ("{%- if tools %}{{- 'Tools (answer as ipython JSON): ' + (tools | tojson) + "
               "'\\n' }}{%- endif %}" + DEFAULT_TEMPLATE)
