"""Hugging Face `tokenizer.json` byte-level BPE (GPT-2, SmolLM2, Qwen2/3, Llama 3), in-graph.

Each family splits text before BPE with its own rule (`pre_tokenizer`): GPT-2's regex,
SmolLM2's single digits then GPT-2's regex, Llama 3's and Qwen's `Split` regexes. Those
regexes are Oniguruma's, with a look-ahead (`\\s+(?!\\S)`) and Unicode `\\s`, which RE2 (the
engine of TensorFlow's string ops) has neither of. keras-hub's BytePairTokenizer hard-codes
an approximation of GPT-2's rule only, so this module writes the split itself, exactly:

1. added tokens (`<|im_start|>`...) are cut out first and never split;
2. the look-ahead is replaced by cutting *before* the last whitespace of every run that a
   non-space follows (that character then starts the next piece, as the look-ahead makes it
   do), and SmolLM2's digits are cut apart, both on a character grid in plain TF ops;
3. each piece is split by the family's regex, translated to RE2 (`\\s` spelled out as
   Unicode's whitespace, the look-ahead alternative dropped: step 2 did its work).

BPE merging and the byte <-> unicode tables are keras-hub's. Ids equal the `tokenizers`
library's (tests/tokenizers/test_hf_bpe.py compares them on multilingual text).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import tensorflow as tf

from tfllm.config import LIMITS
from tfllm.errors import TokenizerError
from tfllm.untrusted import excerpt, read_json_object
from tfllm.tokenizers.special import prepend_bos

# Oniguruma's \s (Unicode White_Space); RE2's \s is ASCII only.
_WS = (r"\t\n\x{0b}\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}"
       r"\x{205f}\x{3000}")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LOOKAHEAD = r"\s+(?!\S)|\s+"
SUPPORTED_NORMALIZERS = (None, "NFC")
MAX_VOCAB = LIMITS["vocab_size"]


def translate_pattern(pattern: str) -> str:
    """An Oniguruma pre-tokenizer regex as RE2 (see the module docstring), or TokenizerError."""
    if _LOOKAHEAD in pattern:
        pattern = pattern.replace(_LOOKAHEAD, r"\s+")
    if re.search(r"\(\?[=!<]", pattern):
        raise TokenizerError(f"pre-tokenizer regex {pattern!r} uses a look-around other than "
                             r"GPT-2's \s+(?!\S); it is not supported")
    out, in_class, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            esc = pattern[i:i + 2]
            if esc == r"\s":
                out.append(_WS if in_class else f"[{_WS}]")
            elif esc == r"\S":
                if in_class:
                    raise TokenizerError(rf"pre-tokenizer regex {pattern!r}: \S inside a "
                                         "character class is not supported")
                out.append(f"[^{_WS}]")
            else:
                out.append(esc)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class and out and out[-1] not in ("[", "[^"):
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


class PreTokenizer:
    """A family's split rule: optional digit isolation, then one regex.

    Args:
        pattern: the Oniguruma regex (as tokenizer.json spells it), or None (no regex).
        digits: None, "individual" (each digit alone: SmolLM2) or "runs".
        normalizer: None or "NFC" (Qwen) applied first.
        specials: added tokens, cut out first and kept whole.
    """

    def __init__(self, pattern: str | None, digits: str | None = None,
                 normalizer: str | None = None, specials=()):
        self.pattern = pattern
        self.digits = digits
        self.normalizer = normalizer
        self.specials = sorted(specials, key=len, reverse=True)  # longest first
        # Step 2's cut serves only the look-ahead; a newline before a word is left to
        # patterns that give newlines their own alternative (Llama 3, Qwen: \s*[\r\n]+).
        self.lookahead = pattern is not None and _LOOKAHEAD in pattern
        self.newline_cut = pattern is not None and r"\s*[\r\n]" not in pattern
        special_alt = "|".join(re.escape(s) for s in self.specials)
        self._special_re = special_alt or None
        body = translate_pattern(pattern) if pattern else None
        self._re = "|".join(p for p in (special_alt, body) if p) or None

    def split(self, text):
        """Strings (batch,) -> ragged words (batch, None), in-graph."""
        import tensorflow_text as tf_text

        text = tf.convert_to_tensor(text, tf.string)
        if self.normalizer == "NFC":
            text = tf_text.normalize_utf8(text, "NFC")
        if self._special_re:
            pieces = tf_text.regex_split(text, self._special_re, self._special_re)
        else:
            pieces = tf.RaggedTensor.from_tensor(text[:, None])
        flat_pieces = pieces.flat_values  # (P,)
        special = tf.zeros_like(flat_pieces, tf.bool)
        for s in self.specials:
            special = special | tf.equal(flat_pieces, s)
        chars = tf.strings.unicode_split(flat_pieces, "UTF-8")  # (P, chars)
        flat = chars.flat_values  # (N,)
        piece_of = chars.value_rowids()  # (N,)
        n = tf.shape(flat, out_type=tf.int64)[0]
        first = tf.concat([[True], piece_of[1:] != piece_of[:-1]], 0)[:n]
        same_next = tf.concat([piece_of[1:] == piece_of[:-1], [False]], 0)[:n]
        cut = tf.zeros_like(first)
        if self.digits:
            digit = tf.strings.regex_full_match(flat, r"\p{N}")
            prev_digit = tf.concat([[False], digit[:-1]], 0)[:n]
            cut = (digit | prev_digit) if self.digits == "individual" else \
                tf.not_equal(digit, prev_digit)
        if self.lookahead:
            ws = tf.strings.regex_full_match(flat, f"[{_WS}]")
            next_ws = tf.concat([ws[1:], [False]], 0)[:n]
            next_cut = tf.concat([cut[1:], [False]], 0)[:n]
            ws_cut = ws & same_next & ~next_ws & ~next_cut
            if not self.newline_cut:
                ws_cut &= ~tf.strings.regex_full_match(flat, r"[\r\n]")
            cut = cut | ws_cut
        cut = first | (cut & ~tf.gather(special, piece_of))
        segment = tf.cumsum(tf.cast(cut, tf.int64)) - 1  # (N,)
        count = tf.reduce_sum(tf.cast(cut, tf.int64))
        segments = tf.strings.unsorted_segment_join(flat, segment, count)  # (S,)
        piece_of_segment = tf.boolean_mask(piece_of, cut)
        if self._re:
            words = tf_text.regex_split(segments, self._re, self._re)  # (S, words)
        else:
            words = tf.RaggedTensor.from_tensor(segments[:, None])
        # (batch, pieces, segments, words) -> (batch, words)
        nested = tf.RaggedTensor.from_value_rowids(
            words, piece_of_segment, nrows=tf.shape(flat_pieces, out_type=tf.int64)[0])
        nested = pieces.with_flat_values(nested)
        return nested.merge_dims(1, 3)


def _layer_class():
    """keras-hub's BytePairTokenizer with our split in place of its GPT-2 approximation."""
    import keras_hub
    from keras_hub.src.utils.tensor_utils import preprocessing_function

    # Not serializable on its own: runs rebuild it from their tokenizer.json.
    class HFByteLevelBPE(keras_hub.tokenizers.BytePairTokenizer):
        def __init__(self, vocabulary=None, merges=None, pre_tokenizer=None,
                     plain_pre_tokenizer=None, **kwargs):
            self.pre_tokenizer = pre_tokenizer
            self.plain_pre_tokenizer = plain_pre_tokenizer or pre_tokenizer
            super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)

        @preprocessing_function
        def _tokenize_tf(self, inputs):
            return self._ids(inputs, self.pre_tokenizer)

        def tokenize_plain(self, inputs):
            """Ids of `inputs` where special tokens are not recognized: their text is
            tokenized as ordinary characters (Hugging Face's split_special_tokens=True)."""
            return self._ids(inputs, self.plain_pre_tokenizer)

        def _ids(self, inputs, pre_tokenizer):
            self._maybe_initialized_tf()
            inputs = tf.convert_to_tensor(inputs)
            unbatched = inputs.shape.rank == 0
            if unbatched:
                inputs = tf.expand_dims(inputs, 0)
            if inputs.shape.rank != 1:
                return self._batch_ids(inputs, pre_tokenizer)
            # One traced function per pre-tokenizer, called from every graph that
            # tokenizes: tracing the merge loop took seconds per signature (an exported
            # SavedModel traced it once for each signature, and twice in chat ones).
            traced = self.__dict__.setdefault("_traced", {})
            key = "plain" if pre_tokenizer is not self.pre_tokenizer else "text"
            if key not in traced:
                traced[key] = tf.function(
                    lambda texts: self._batch_ids(texts, pre_tokenizer),
                    input_signature=[tf.TensorSpec([None], tf.string)])
            tokens = traced[key](inputs)
            return tf.squeeze(tokens, 0) if unbatched else tokens

        def _batch_ids(self, inputs, pre_tokenizer):
            raw = pre_tokenizer.split(inputs)
            flat = raw.flat_values
            lookup = self.cache.lookup(flat)
            unseen = (lookup == "") & (flat != "")

            def merge_unseen():
                self._bpe_merge_and_update_cache_tf(tf.boolean_mask(flat, unseen))
                return self.cache.lookup(flat)

            words = tf.cond(tf.reduce_any(unseen), merge_unseen, lambda: lookup)
            tokens = self.token_to_id_map.lookup(tf.strings.split(words, sep=" "))
            tokens = tf.RaggedTensor.from_row_splits(
                tokens.flat_values, tf.gather(tokens.row_splits, raw.row_splits))
            # A piece the vocabulary lacks (e.g. the byte of a control character such as
            # gettext's \x04 context separator, absent from SmolLM2's vocabulary) looks
            # up as -1; Hugging Face's tokenizer, with no unknown token, drops it.
            return tf.ragged.boolean_mask(tokens, tokens >= 0)

    return HFByteLevelBPE


def _pre_tokenizer_spec(spec, path):
    """(regex or None, digits mode) of a tokenizer.json pre_tokenizer."""
    if spec is not None and not isinstance(spec, dict):
        raise TokenizerError(f"{path}: pre_tokenizer must be an object")
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" \
        else [spec] if spec else []
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise TokenizerError(f"{path}: pre_tokenizer.pretokenizers must be a list of objects")
    pattern, digits, byte_level = None, None, False
    for step in steps:
        kind = step.get("type")
        if kind == "Digits":
            digits = "individual" if step.get("individual_digits") else "runs"
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise TokenizerError(f"{path}: ByteLevel add_prefix_space=true is not "
                                     "supported")
            byte_level = True
            if step.get("use_regex", True):
                pattern = GPT2_PATTERN
        elif kind == "Split" and isinstance(step.get("pattern"), dict) and \
                isinstance(step["pattern"].get("Regex"), str) \
                and step.get("behavior") == "Isolated" and not step.get("invert"):
            pattern = step["pattern"]["Regex"]
        else:
            raise TokenizerError(f"{path}: pre-tokenizer {json.dumps(step)[:120]} is not "
                                 "supported (byte-level BPE with ByteLevel, Digits and "
                                 "isolated Split regexes is)")
    if not byte_level:
        raise TokenizerError(f"{path} is not a byte-level BPE tokenizer (no ByteLevel "
                             "pre-tokenizer)")
    return pattern, digits


def read_tokenizer_json(path: str) -> tuple:
    """`(vocabulary, merges, pattern, digits, normalizer, added_tokens, ignore_merges,
    special_tokens)` of a
    byte-level BPE `tokenizer.json`, checked without building anything (importers validate
    a checkpoint's tokenizer with it before they write).
    """
    if not os.path.isfile(path):
        raise TokenizerError(f"tokenizer file {path} does not exist")
    spec = read_json_object(path, TokenizerError)
    model = spec.get("model")
    vocabulary = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocabulary, dict) or not vocabulary:
        raise TokenizerError(f"{path} is not a tokenizer.json: its model.vocab is not a "
                             "token -> id object")
    if not all(isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool)
               and 0 <= i < MAX_VOCAB for t, i in vocabulary.items()):
        raise TokenizerError(f"{path}: model.vocab must map token strings to ids from 0 to "
                             f"{MAX_VOCAB - 1}")
    vocabulary = dict(vocabulary)
    if model.get("type") != "BPE" or model.get("byte_fallback") \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerError(f"{path}: only plain byte-level BPE models are supported "
                             f"(got type {model.get('type')!r})")
    normalizer = spec.get("normalizer")
    normalizer = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
    if normalizer not in SUPPORTED_NORMALIZERS:
        raise TokenizerError(f"{path}: normalizer {excerpt(normalizer)} is not supported "
                             "(none or NFC are)")
    pattern, digits = _pre_tokenizer_spec(spec.get("pre_tokenizer"), path)
    if pattern:
        translate_pattern(pattern)
    added_tokens = spec.get("added_tokens") or []
    if not isinstance(added_tokens, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and
            isinstance(t.get("id"), int) and not isinstance(t.get("id"), bool) and
            0 <= t["id"] < MAX_VOCAB for t in added_tokens):
        raise TokenizerError(f"{path}: added_tokens must be a list of objects with a "
                             "content string and an id")
    added = {t["content"]: t["id"] for t in added_tokens}
    vocabulary.update(added)
    merges = model.get("merges") or []
    if not isinstance(merges, list) or not all(
            isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m))
            for m in merges):
        raise TokenizerError(f"{path}: model.merges must be a list of \"a b\" strings or "
                             "pairs")
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    bad = [m for m in merges if len(m.split(" ")) != 2
           or any(part not in vocabulary for part in m.split(" "))]
    if bad:
        raise TokenizerError(f"{path}: {len(bad)} merge rule(s) name tokens the vocabulary "
                             f"lacks, e.g. {bad[0]!r}")
    special = [t["content"] for t in added_tokens if t.get("special", True) is not False]
    return (vocabulary, merges, pattern, digits, normalizer, list(added),
            bool(model.get("ignore_merges")), special)


def _unicode_to_byte() -> dict:
    """Byte-level BPE's alphabet: the character that spells each byte -> that byte."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    byte_list, unicode_list = bytes_to_unicode()
    return dict(zip(unicode_list, byte_list))


class HFBytePairTokenizer:
    """A byte-level BPE tokenizer (Hugging Face's `tokenizer.json` kind), applied in-graph.

    Args:
        vocabulary: token -> id, added tokens included.
        merges: merge rules "a b", highest priority first.
        pattern: the pre-tokenizer regex as tokenizer.json spells it (None: no regex).
        digits: None, "individual" or "runs" (a Digits pre-tokenizer before the regex).
        normalizer: None or "NFC".
        added_tokens: tokens matched before splitting and never split (`<|im_start|>`).
        ignore_merges: a word that is a token is that token (Llama 3).
        bos_id, eos_ids, pad_id: special ids; `eos_ids` lists every id that ends
            generation, the first one pads outputs.
        add_bos: prepend `bos_id` to every encoded text.

    Example:
        >>> tok = HFBytePairTokenizer.from_tokenizer_json(  # doctest: +SKIP
        ...     "smollm2/tokenizer.json", bos_id=1, eos_ids=[2])
        >>> tok.encode("<|im_start|>user")  # doctest: +SKIP
        [1, 4093]
    """

    def __init__(self, vocabulary: dict, merges, pattern: str | None, digits=None,
                 normalizer=None, added_tokens=(), ignore_merges=False, bos_id=None,
                 eos_ids=(), pad_id=None, add_bos=False, special_tokens=None):
        self._vocab_size = max(vocabulary.values()) + 1
        # Byte-level tokens spell one byte a character; added tokens are their UTF-8 text.
        self.max_token_bytes = max(len(t.encode("utf-8")) if t in added_tokens else len(t)
                                   for t in vocabulary)
        ids = [i for i in [bos_id, pad_id, *eos_ids] if i is not None]
        if not eos_ids or any(not 0 <= int(i) < self._vocab_size for i in ids):
            raise TokenizerError(f"special token ids {ids} do not fit the {self._vocab_size}-"
                                 "token vocabulary")
        self.added_tokens = list(added_tokens)
        # Control tokens (tokenizer.json's "special": true): tokenize_plain reads their text
        # as ordinary characters; the other added tokens (Qwen's <tool_call>) stay whole.
        self.special_tokens = list(self.added_tokens if special_tokens is None
                                   else special_tokens)
        self.eos_ids = [int(i) for i in eos_ids]
        self.eos_id = self.eos_ids[0]
        self.bos_id = self.eos_id if bos_id is None else int(bos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.add_bos = bool(add_bos)
        self.unk_id = None
        self._decode_fn = None
        self._encode_fn = None
        self.pre_tokenizer = PreTokenizer(pattern, digits, normalizer, self.added_tokens)
        plain = PreTokenizer(pattern, digits, normalizer,
                             [t for t in self.added_tokens if t not in self.special_tokens])
        try:
            # The TF path always, so that eager encode() and exported graphs agree (keras-hub
            # would otherwise take its Python path, with another split rule, when eager).
            self._layer = _layer_class()(vocabulary=vocabulary, merges=list(merges),
                                         pre_tokenizer=self.pre_tokenizer,
                                         plain_pre_tokenizer=plain,
                                         unsplittable_tokens=self.added_tokens,
                                         _allow_python_workflow=False)
        except ValueError as e:  # a merge naming a token the vocabulary lacks
            raise TokenizerError(f"inconsistent BPE vocabulary and merges: {e}") from e
        if ignore_merges:
            self._prefill_whole_words(vocabulary)
        self._layer.build(None)  # it has no weights; exporters refuse unbuilt layers

    @classmethod
    def from_tokenizer_json(cls, path: str, bos_id=None, eos_ids=(), pad_id=None,
                            add_bos=False) -> "HFBytePairTokenizer":
        """Read a Hugging Face `tokenizer.json` (a byte-level BPE one)."""
        *args, special = read_tokenizer_json(path)
        try:
            return cls(*args, bos_id, eos_ids, pad_id, add_bos, special_tokens=special)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e

    def _prefill_whole_words(self, vocabulary):
        # ignore_merges (Llama 3): a word that is itself a token is that token, whatever
        # the merges would make of it; seeding keras-hub's word cache does exactly that.
        to_byte = _unicode_to_byte()
        words, tokens = [], []
        for token in vocabulary:
            if token in self.added_tokens or not all(c in to_byte for c in token):
                continue
            words.append(b"".join(to_byte[c] for c in token))
            tokens.append(token)
        self._layer.cache.insert(tf.constant(words), tf.constant(tokens))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_bytes(self) -> list:
        """The bytes each id adds to decoded text (None for control tokens, which add none
        and which constrained decoding never picks): byte-level tokens spell one byte a
        character, added tokens are their UTF-8 text."""
        to_byte = _unicode_to_byte()
        out = [None] * self._vocab_size
        special = set(self.special_tokens)
        for token, i in self._layer.vocabulary.items():
            if token in special:
                continue
            if token in self.added_tokens or not all(c in to_byte for c in token):
                out[i] = token.encode("utf-8")
            else:
                out[i] = b"".join(to_byte[c] for c in token)
        return out

    @property
    def tf_tokenizer(self):
        """The keras-hub layer (tracked by exporters; `tokenize`/`detokenize` in-graph)."""
        return self._layer

    def tokenize(self, text):
        ids = self._layer.tokenize(text)
        return prepend_bos(ids, self.bos_id) if self.add_bos else ids

    def detokenize(self, ids):
        return self._layer.detokenize(ids)

    def tokenize_plain(self, text):
        """`tokenize` with control tokens' text read as ordinary characters and no BOS: for
        text from users inside a chat template (see `tfllm.tokenizers.chat_encoding.encode_pieces`)."""
        return self._layer.tokenize_plain(text)

    def encode_plain(self, text: str) -> list[int]:
        """Ids of `text` by `tokenize_plain`."""
        if getattr(self, "_plain_fn", None) is None:
            self._plain_fn = tf.function(self.tokenize_plain,
                                         input_signature=[tf.TensorSpec([], tf.string)])
        return [int(i) for i in np.asarray(self._plain_fn(tf.constant(text)))]

    def encode(self, text: str) -> list[int]:
        # One traced function for every call: eagerly, keras-hub traces its merge loop
        # anew for each text with unseen words (measured: seconds per prompt on SmolLM2).
        if self._encode_fn is None:
            self._encode_fn = tf.function(self.tokenize,
                                          input_signature=[tf.TensorSpec([], tf.string)])
        return [int(i) for i in np.asarray(self._encode_fn(tf.constant(text)))]

    def decode(self, ids) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as Hugging Face's
        decoder makes them (keras-hub's eager path would drop them silently)."""
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        if self._decode_fn is None:
            self._decode_fn = tf.function(self._layer.detokenize,
                                          input_signature=[tf.TensorSpec([None], tf.int32)])
        text = self._decode_fn(tf.constant(ids, tf.int32)).numpy()
        return text.decode("utf-8", errors="replace")
