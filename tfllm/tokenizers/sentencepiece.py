"""SentencePiece tokenizers: trained with `sentencepiece`, applied in-graph with tf-text.

The `.model` file is the tokenizer's whole state; it lives in the run directory and is
bundled as-is into SavedModels and LiteRT-LM packages.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.errors import TokenizerError
from tfllm.tokenizers.special import prepend_bos

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Masked-LM pretraining's mask: a control symbol, so no text ever tokenizes to it.
MASK_PIECE = "<mask>"
# Character models take every character of the corpus; this only caps the search.
_CHAR_VOCAB_CAP = 100_000


class SentencePieceTokenizer:
    """A SentencePiece model that tokenizes strings to int32 ids inside TensorFlow graphs.

    Models tfllm trains have fixed special ids: pad 0, unk 1, bos 2, eos 3; text is not
    normalized and newlines are a token of their own, so `detokenize(tokenize(s)) == s` for
    text the model covers. Imported models (Llama 2, Mistral `tokenizer.model`) keep their
    own ids, given by the importer.

    Args:
        proto: the serialized SentencePiece model (the bytes of a `.model` file).
        special_ids: None (tfllm's fixed ids), or {"bos_id", "eos_ids", "pad_id"} of an
            imported model; `eos_ids` lists every id that ends generation.
        add_bos: prepend the model's BOS id to every encoded text (Llama 2, Mistral).

    Example:
        >>> tok = SentencePieceTokenizer.train(["hello world"], model_type="char")
        >>> tok.detokenize(tok.tokenize("hello")).numpy()
        b'hello'
    """

    def __init__(self, proto: bytes, special_ids: dict | None = None, add_bos: bool = False):
        self.proto = proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
            raise TokenizerError(f"not a valid SentencePiece model: {e}") from e
        self.add_bos = bool(add_bos)
        if special_ids is not None:
            eos_ids = [int(i) for i in special_ids["eos_ids"]]
            ids = [special_ids.get("bos_id"), special_ids.get("pad_id"), *eos_ids]
            if not eos_ids or any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                raise TokenizerError(f"special token ids {ids} do not fit the "
                                     f"{self.vocab_size}-piece SentencePiece model")
            self.eos_ids, self.eos_id = eos_ids, eos_ids[0]
            self.bos_id = eos_ids[0] if special_ids.get("bos_id") is None \
                else int(special_ids["bos_id"])
            self.pad_id = self.eos_id if special_ids.get("pad_id") is None \
                else int(special_ids["pad_id"])
            self.unk_id = self._sp.unk_id()
        self._tf = tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)

    @classmethod
    def train(cls, texts: Iterable[str], model_type: str = "char", vocab_size: int | None = None,
              max_sentences: int = 2_000_000, mask_token: bool = False,
              user_symbols: Sequence[str] = ()) -> "SentencePieceTokenizer":
        """Train on an iterable of texts (split into lines internally).

        Args:
            texts: documents or lines of the training corpus.
            model_type: "char", "bpe" or "unigram".
            vocab_size: required for bpe/unigram; ignored for char (the corpus decides).
            max_sentences: lines sampled for training on large corpora.
            mask_token: reserve `<mask>` (id `mask_id`) for masked-LM pretraining.
            user_symbols: strings that are always one piece each (e.g. a placeholder
                sentinel), in text and in training alike.
        """
        if model_type not in ("char", "bpe", "unigram"):
            raise TokenizerError(f"unknown model_type {model_type!r}; use char, bpe or unigram")
        if model_type != "char" and not vocab_size:
            raise TokenizerError(f"{model_type} tokenizers need a vocab_size")

        def lines():
            for text in texts:
                for line in text.split("\n"):
                    if line:
                        yield line

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(), model_writer=model, model_type=model_type,
                vocab_size=_CHAR_VOCAB_CAP if model_type == "char" else vocab_size,
                hard_vocab_limit=model_type != "char",
                # No normalization: generated text must round-trip byte for byte.
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, split_by_whitespace=model_type != "char",
                allow_whitespace_only_pieces=True,
                # Training reads line by line, so a newline would never be seen otherwise.
                user_defined_symbols=["\n", *user_symbols],
                control_symbols=[MASK_PIECE] if mask_token else [],
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                character_coverage=1.0, byte_fallback=model_type != "char",
                input_sentence_size=max_sentences, shuffle_input_sentence=True,
                max_sentence_length=1 << 16, num_threads=os.cpu_count() or 1, minloglevel=2)
        except RuntimeError as e:
            msg = str(e).splitlines()[-1] if str(e) else repr(e)
            if "Vocabulary size" in msg or "vocab_size" in msg:
                fix = "larger" if "smaller than required" in msg else "smaller"
                raise TokenizerError(
                    f"cannot train a {model_type} tokenizer with vocab_size={vocab_size} on "
                    f"this corpus ({msg}); use a {fix} --vocab-size") from e
            raise TokenizerError(f"SentencePiece training failed: {msg}") from e
        if not model.getvalue():
            raise TokenizerError("SentencePiece training produced no model: is the corpus empty?")
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str, special_ids: dict | None = None, add_bos: bool = False
             ) -> "SentencePieceTokenizer":
        """Load a `.model` file (`special_ids`, `add_bos`: as the constructor takes)."""
        if not tf.io.gfile.exists(path):
            raise TokenizerError(f"tokenizer file {path} does not exist")
        with tf.io.gfile.GFile(path, "rb") as f:
            return cls(f.read(), special_ids, add_bos)

    def save(self, path: str) -> None:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(self.proto)

    @property
    def max_token_bytes(self) -> int:
        """The most UTF-8 bytes of text one token stands for (a byte-fallback piece: 1)."""
        if not hasattr(self, "_max_token_bytes"):
            sizes = [1 if self._sp.is_byte(i) else
                     len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
                     for i in range(self._sp.get_piece_size())]
            self._max_token_bytes = max(sizes)
        return self._max_token_bytes

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_bytes(self) -> list:
        """The bytes each id adds to decoded text (None for control and unknown pieces,
        which constrained decoding never picks): `\u2581` spells a space, byte-fallback
        pieces `<0xNN>` their byte. Decoding drops a leading space of the whole text where
        the model adds a dummy prefix (Llama 2)."""
        sp = self._sp
        out = []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                out.append(None)
            elif sp.is_byte(i):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    eos_ids = [EOS_ID]

    @property
    def mask_id(self) -> int | None:
        """Id of `<mask>`, or None when the tokenizer was trained without one."""
        i = self._sp.piece_to_id(MASK_PIECE)
        return None if i == self._sp.unk_id() else i

    @property
    def tf_tokenizer(self):
        """The tf-text SentencepieceTokenizer (a tf.Module) that exporters track and call."""
        return self._tf

    def tokenize(self, text):
        """Strings -> int32 ids, in-graph. A scalar gives (n,); a (batch,) gives ragged (batch, None)."""
        ids = self._tf.tokenize(text)
        return prepend_bos(ids, self.bos_id) if self.add_bos else ids

    def detokenize(self, ids):
        """Int ids (n,) or (batch, n) / ragged -> strings, in-graph."""
        return self._tf.detokenize(ids)

    def encode(self, text: str) -> list[int]:
        """Python-side tokenization (same ids as `tokenize`)."""
        return ([self.bos_id] if self.add_bos else []) + self._sp.encode(text)

    def decode(self, ids) -> str:
        """Python-side detokenization."""
        return self._sp.decode([int(i) for i in ids])

    @property
    def special_tokens(self) -> list[str]:
        """The model's user-defined symbols of more than one character (`<|im_start|>` in a
        chat run's): SentencePiece reads them as one token wherever their text occurs."""
        if not hasattr(self, "_special_tokens"):
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(self.proto)
            user = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
            self._special_tokens = [p.piece for p in proto.pieces
                                    if p.type == user and len(p.piece) > 1]
        return self._special_tokens

    def tokenize_plain(self, text):
        """`tokenize` without BOS, where the text of `special_tokens` is tokenized one
        character at a time (plain characters, never the symbol): for text from users inside
        a chat template (see `tfllm.tokenizers.chat_encoding.encode_pieces`). In-graph."""
        if not self.special_tokens:
            return self._tf.tokenize(text)
        text = tf.convert_to_tensor(text, tf.string)
        scalar = text.shape.rank == 0
        batch = tf.reshape(text, [-1])
        alternatives = "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len,
                                                                reverse=True))
        pieces = tf_text.regex_split(batch, alternatives, alternatives)  # (batch, pieces)
        flat = pieces.flat_values  # (P,)
        special = tf.strings.regex_full_match(flat, alternatives)
        whole = tf.RaggedTensor.from_tensor(flat[:, None])  # (P, 1)
        chars = tf.strings.unicode_split(flat, "UTF-8")  # (P, chars)
        n = tf.shape(flat, out_type=tf.int64)[0]
        rows = tf.range(n)
        units = tf.gather(tf.concat([whole, chars], axis=0), tf.where(special, rows + n, rows))
        ids = self._tf.tokenize(units.flat_values)  # (units, tokens)
        ids = pieces.with_flat_values(units.with_flat_values(ids)).merge_dims(1, 3)
        return ids[0] if scalar else ids

    def encode_plain(self, text: str) -> list[int]:
        """Ids of `text` by `tokenize_plain` (Python side)."""
        if not self.special_tokens:
            return self._sp.encode(text)
        return [int(i) for i in self.tokenize_plain(tf.constant(text)).numpy()]
