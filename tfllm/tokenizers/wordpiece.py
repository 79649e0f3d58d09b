"""BERT's WordPiece tokenizer, in-graph, with the ids of Hugging Face's `tokenizers` library.

tf-text's `FastBertTokenizer` splits on whitespace and punctuation and matches WordPiece
pieces greedily, longest first: it is the tf-text tokenizer with TFLite
kernels, and with the steps below it tokenizes the 1,000 longest SST-2 sentences at 50,000
sentences/s against 26,000 for keras-hub's `WordPieceTokenizer` (regex splitting, then
tf-text's older `WordpieceTokenizer`), same ids, machine A. What it does differently from
Hugging Face's `BertNormalizer` + `BertPreTokenizer` is done here before it, on TF string
ops:
- added tokens (`[CLS]`, `[SEP]`, `[MASK]` ...) written in the text are single ids, never
  normalized or split (Hugging Face matches them first);
- control and format characters are removed (`clean_text`), where tf-text makes them spaces;
- CJK ideographs are cut apart (`handle_chinese_chars`);
- uncased models: NFD, combining marks dropped, then lower-casing, in Hugging Face's order
  (tf-text's own option case-folds: "ﬁ" would become "fi", "x²" an unknown word).
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from tfllm.config import LIMITS
from tfllm.errors import TokenizerError
from tfllm.untrusted import Fields, excerpt, read_json_object

# Hugging Face's _is_chinese_char ranges (CJK Unified Ideographs and their extensions).
_CJK = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
        r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")
# clean_text drops NUL, U+FFFD and control/format characters other than \t \n \r.
_DROPPED = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}\p{Cf}]"


class WordPieceTokenizer:
    """WordPiece ids of texts (BERT, MiniLM), in-graph; `[CLS]`/`[SEP]` are added by the
    classification encoder (`tfllm.tokenizers.packing.encode_texts`), not here.

    Args:
        vocabulary: the tokens, index i is id i.
        lowercase: lower-case, NFD-decompose and strip accents (uncased models); False
            keeps the text as written (cased models).
        unk_token, cls_token, sep_token, pad_token, mask_token: the special tokens.
        suffix_indicator: the prefix of word-continuing pieces.
        max_chars_per_word: longer words become the unknown token.
        chinese_chars: cut CJK ideographs into words of their own.

    Example:
        >>> tok = WordPieceTokenizer.from_tokenizer_json("minilm/tokenizer.json")  # doctest: +SKIP
        >>> tok.encode("Hello, world!")  # doctest: +SKIP
        [7592, 1010, 2088, 999]
    """

    def __init__(self, vocabulary, lowercase=True, unk_token="[UNK]", cls_token="[CLS]",
                 sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                 suffix_indicator="##", max_chars_per_word=100, chinese_chars=True):
        import tensorflow_text as tf_text

        self.vocabulary = list(vocabulary)
        ids = {t: i for i, t in enumerate(self.vocabulary)}
        missing = [t for t in (unk_token, cls_token, sep_token, pad_token) if t not in ids]
        if missing:
            raise TokenizerError(f"the WordPiece vocabulary lacks {', '.join(missing)}")
        self.lowercase = bool(lowercase)
        self.chinese_chars = bool(chinese_chars)
        self.unk_id, self.pad_id = ids[unk_token], ids[pad_token]
        # An encoder's first token is its BOS ([CLS]); [SEP] ends each text of a pair.
        self.bos_id = self.cls_id = ids[cls_token]
        self.sep_id = self.eos_id = ids[sep_token]
        self.eos_ids = [self.eos_id]
        self.mask_id = ids.get(mask_token)
        self.add_bos = False
        self.specials = [t for t in (unk_token, cls_token, sep_token, pad_token, mask_token)
                         if t in ids]
        self._special_ids = [ids[t] for t in self.specials]
        self._special_re = "|".join(re.escape(t) for t in sorted(self.specials, key=len,
                                                                 reverse=True))
        self.suffix_indicator = suffix_indicator
        # [UNK] stands for a whole word of up to max_chars_per_word characters.
        self.max_token_bytes = max(4 * max_chars_per_word,
                                   max(len(t.encode("utf-8")) for t in self.vocabulary))
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=self.vocabulary, suffix_indicator=suffix_indicator,
            max_bytes_per_word=max_chars_per_word, token_out_type=tf.int32,
            unknown_token=unk_token, lower_case_nfd_strip_accents=False)

    @classmethod
    def from_tokenizer_json(cls, path: str, vocab_size: int | None = None) \
            -> "WordPieceTokenizer":
        """Read a Hugging Face WordPiece `tokenizer.json` (BertNormalizer, BertPreTokenizer).

        Args:
            vocab_size: the size the model expects; checked before anything is built.
        """
        spec = read_json_object(path, TokenizerError)
        model = spec.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if not isinstance(vocab, dict) or not vocab or not all(
                isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool) and
                0 <= i < LIMITS["vocab_size"] for t, i in vocab.items()):
            raise TokenizerError(f"{path} is not a Hugging Face tokenizer.json: its model.vocab "
                                 "is not a token -> id object")
        if model.get("type") != "WordPiece":
            raise TokenizerError(f"{path} holds a {excerpt(model.get('type'))} model, not "
                                 "WordPiece")
        normalizer = spec.get("normalizer") or {}
        kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
        if kind != "BertNormalizer":
            raise TokenizerError(f"{path}: normalizer {excerpt(kind)} is not "
                                 "supported; tfllm reads BertNormalizer WordPiece tokenizers")
        lowercase = bool(normalizer.get("lowercase", True))
        strip = normalizer.get("strip_accents")
        if strip is not None and bool(strip) != lowercase:
            raise TokenizerError(f"{path}: strip_accents={excerpt(strip)} with "
                                 f"lowercase={lowercase} is not supported (tf-text strips "
                                 "accents exactly when it lower-cases)")
        tokens = [None] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            tokens[i] = token
        if None in tokens:
            raise TokenizerError(f"{path}: the WordPiece vocabulary has holes (id "
                                 f"{tokens.index(None)} is missing)")
        _check_size(path, tokens, vocab_size)
        fields = Fields(path, model, TokenizerError, "model.")
        return cls._build(path, tokens, lowercase=lowercase,
                          unk_token=fields.text("unk_token", "[UNK]"),
                          suffix_indicator=fields.text("continuing_subword_prefix", "##"),
                          max_chars_per_word=fields.integer("max_input_chars_per_word", 100,
                                                            high=1 << 16),
                          chinese_chars=bool(normalizer.get("handle_chinese_chars", True)))

    @classmethod
    def from_vocab_txt(cls, path: str, lowercase: bool = True, chinese_chars: bool = True,
                       vocab_size: int | None = None):
        """Read a `vocab.txt` (one token a line, as BERT's original checkpoints ship);
        `vocab_size`: the size the model expects, checked before anything is built."""
        try:
            with open(path, encoding="utf-8") as f:
                tokens = [line.rstrip("\n") for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path} cannot be read as a vocab.txt: {e}") from e
        _check_size(path, tokens, vocab_size)
        return cls._build(path, tokens, lowercase=lowercase, chinese_chars=chinese_chars)

    @classmethod
    def _build(cls, path, tokens, **kwargs):
        try:
            return cls(tokens, **kwargs)
        except (RuntimeError, ValueError) as e:  # tf-text refuses some vocabularies
            raise TokenizerError(f"{path}: tf-text cannot build a WordPiece tokenizer of "
                                 f"this vocabulary ({excerpt(str(e), 120)})") from None

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @property
    def tf_tokenizer(self):
        """The tf-text tokenizer (tracked by exporters)."""
        return self._tokenizer

    def tokenize(self, text):
        """Strings (batch,) -> ragged int32 ids (batch, None); a scalar -> ids (None,)."""
        import tensorflow_text as tf_text

        text = tf.convert_to_tensor(text, tf.string)
        scalar = text.shape.rank == 0
        # clean_text first: regex_split ends a string at a NUL character.
        batch = tf.strings.regex_replace(tf.reshape(text, [-1]), _DROPPED, "")
        # (batch, pieces): the added tokens cut out and kept whole
        pieces = tf_text.regex_split(batch, self._special_re, self._special_re)
        flat = pieces.flat_values
        special = tf.zeros_like(flat, tf.int32) - 1
        for token, i in zip(self.specials, self._special_ids):
            special = tf.where(tf.equal(flat, token), i, special)
        plain = flat
        if self.lowercase:
            # Hugging Face's order: NFD, drop the combining marks, then lower-case
            # (tf-text's own option case-folds instead: "ﬁ" would become "fi").
            plain = tf_text.normalize_utf8(plain, "NFD")
            plain = tf.strings.regex_replace(plain, r"\p{Mn}", "")
            plain = tf.strings.lower(plain, encoding="utf-8")
        if self.chinese_chars:
            plain = tf.strings.regex_replace(plain, f"([{_CJK}])", r" \1 ")
        plain = tf.where(special >= 0, "", plain)
        words = self._tokenizer.tokenize(plain)  # (pieces, tokens)
        if isinstance(words, tf.RaggedTensor) and words.ragged_rank > 1:
            words = words.merge_dims(1, -1)
        is_special = special >= 0
        specials = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(special, is_special),
                                                    tf.cast(is_special, tf.int64))
        ids = tf.concat([words, specials], axis=1)  # one of the two is empty per piece
        ids = pieces.with_flat_values(ids).merge_dims(1, 2)  # (batch, tokens)
        return ids[0] if scalar else ids

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in np.asarray(self.tokenize(tf.constant(text)))]

    def decode(self, ids) -> str:
        """Text of `ids` (pieces joined, `##` continuations glued; specials kept)."""
        out = []
        for i in ids:
            token = self.vocabulary[int(i)]
            if token.startswith(self.suffix_indicator) and out:
                out[-1] += token[len(self.suffix_indicator):]
            else:
                out.append(token)
        return " ".join(out)


def _check_size(path, tokens, vocab_size):
    """The vocabulary must have the model's size (checked before tf-text builds anything:
    it fails with a RuntimeError on some vocabularies, e.g. one of special tokens only)."""
    if vocab_size is not None and len(tokens) != vocab_size:
        raise TokenizerError(f"{path}: the WordPiece vocabulary has {len(tokens)} tokens but "
                             f"config.json's vocab_size is {vocab_size}; the tokenizer does "
                             "not belong to this model")
