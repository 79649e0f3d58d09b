"""Small Hugging Face `tokenizer.json` files of each byte-level family, trained here with the
`tokenizers` library (a test dependency), so tests need no download."""

from __future__ import annotations

GPT2_REGEX = None  # ByteLevel(use_regex=True) carries GPT-2's regex itself
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
               r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
FAMILIES = ("gpt2", "smollm2", "llama3", "qwen2")
SPECIALS = {"gpt2": ["<|endoftext|>"],
            "smollm2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
            "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}
# A text every rule must split as the reference does: contractions in both cases, digit
# runs, whitespace runs before words, digits and punctuation, newlines, tabs, non-breaking
# and ideographic spaces, accents, Cyrillic, CJK, Arabic, emoji, and special tokens.
MULTILINGUAL = (
    "<|im_start|>user\nHello, World! It's 2026; I'VE paid $1,234.56 for 3 items.\n\n"
    "  Indented   text\twith\ttabs  and trailing spaces   \n"
    "Ça coûte 12€ — naïve café, Größe straße. Привет, мир! 你好，世界。 مرحبا بالعالم\n"
    "Emoji: 👍🏽 🚀🚀 and ZWJ 👨‍👩‍👧; non\u00a0breaking\u3000space 12345678 x2 "
    "a.b,c!!! ???\r\nend<|im_end|>\n<|endoftext|> 3.14159 don't DON'T we'll"
)


def corpus():
    base = MULTILINGUAL.replace("<|im_start|>", "").replace("<|im_end|>", "").replace(
        "<|endoftext|>", "")
    return [base, "The quick brown fox jumps over the lazy dog. " * 3,
            "Once upon a time, there were 12 little 🚀 rockets.", "résumé Ελληνικά 日本語"] * 20


def make_tokenizer_json(path: str, family: str, vocab_size: int = 400) -> str:
    """Train a byte-level BPE with `family`'s pre-tokenizer and save it as tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE(ignore_merges=family == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in
                                          ("gpt2", "smollm2"))
    if family == "gpt2":
        tok.pre_tokenizer = byte_level
    elif family == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        regex = LLAMA3_REGEX if family == "llama3" else QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False), byte_level])
        if family == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS[family],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.save(path)
    return path
