"""SentencePiece models rebuilt from a vocabulary list (a GGUF's `tokenizer.ggml.*`), and
an imported model's control tokens made readable in text as Hugging Face reads them.

llama.cpp stores a SentencePiece vocabulary as three lists (pieces, scores, token types)
and changes it on the way: a user-defined piece's `▁` becomes a space, and every token
Hugging Face calls special becomes a CONTROL piece with the score -1000. Rebuilt here as a
BPE `ModelProto` that tf-text's in-graph tokenizer runs, with the ids Hugging Face's
tokenizer gives:

- Gemma's scores are merge ranks with placeholders punched through them (every whitespace
  run and added token scores -1000), so a Gemma vocabulary is ranked by position instead,
  as transformers' GGUF loader does; other vocabularies keep their scores.
- Whitespace runs are spelled with `▁` again.
- CONTROL pieces other than pad/bos/eos/unk become USER_DEFINED: SentencePiece then reads
  `<start_of_turn>` in text as one token, as Hugging Face reads its special tokens
  (`tfllm.tokenizers.chat_encoding` keeps users' messages from forging them).
"""

from __future__ import annotations

import math

from tfllm.checkpoints.common import CheckpointError

# llama.cpp's token types are SentencePiece's.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _spelled(piece: str) -> str:
    """A run of spaces written as SentencePiece writes whitespace."""
    return "\u2581" * len(piece) if piece and not piece.strip(" ") else piece


def build_proto(path: str, tokens, scores, types, special: dict, by_position: bool,
                dummy_prefix: bool = False) -> bytes:
    """The serialized BPE ModelProto of a GGUF SentencePiece vocabulary.

    Args:
        path: the file, for messages.
        tokens, scores, types: `tokenizer.ggml.tokens`, `.scores`, `.token_type`.
        special: {"unk_id", "bos_id", "eos_id", "pad_id"} (None where absent).
        by_position: rank merges by vocabulary position (Gemma), not by score.
        dummy_prefix: prepend a space to every text (llama.cpp's
            `tokenizer.ggml.add_space_prefix`: Llama 2 yes, Gemma no).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    n = len(tokens) if isinstance(tokens, list) else 0
    if not n or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens must be a list of strings")
    if not isinstance(scores, list) or len(scores) != n:
        raise CheckpointError(f"{path}: a SentencePiece vocabulary needs tokenizer.ggml.scores, "
                              f"one number per token ({n:,}); it has "
                              f"{len(scores) if isinstance(scores, list) else 'none'}")
    bad = next((i for i, s in enumerate(scores) if not isinstance(s, (int, float)) or
                isinstance(s, bool) or not math.isfinite(s)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: tokenizer.ggml.scores[{bad}] is not a finite number")
    if not isinstance(types, list) or len(types) != n or \
            any(t not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) for t in types):
        raise CheckpointError(f"{path}: tokenizer.ggml.token_type must give each of the "
                              f"{n:,} tokens a SentencePiece type (1 to 6)")
    unk = special.get("unk_id")
    if unk is None or not 0 <= unk < n:
        raise CheckpointError(f"{path}: a SentencePiece vocabulary needs "
                              "tokenizer.ggml.unknown_token_id within the vocabulary")
    model = pb.ModelProto()
    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = n
    trainer.byte_fallback = BYTE in types
    for key in ("unk_id", "bos_id", "eos_id", "pad_id"):
        setattr(trainer, key, -1 if special.get(key) is None else int(special[key]))
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(dummy_prefix)
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    basics = {special.get(k) for k in ("bos_id", "eos_id", "pad_id")} - {None}
    seen = set()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = model.pieces.add()
        piece.piece = _spelled(token) if kind in (NORMAL, USER_DEFINED) else token
        if piece.piece in seen:
            raise CheckpointError(f"{path}: token {i} ({piece.piece[:40]!r}) occurs twice in "
                                  "tokenizer.ggml.tokens")
        seen.add(piece.piece)
        piece.score = -float(i) if by_position else float(score)
        if i == unk:
            piece.type = UNKNOWN
        elif kind == CONTROL and i not in basics:
            piece.type = USER_DEFINED
        else:
            piece.type = kind
    return model.SerializeToString()



def readable_controls(proto: bytes, keep: set[int]) -> bytes:
    """`proto` with its CONTROL pieces made USER_DEFINED, so SentencePiece reads
    `<start_of_turn>` and `<end_of_turn>` in text as Hugging Face reads a special token;
    kept CONTROL: `keep` (bos/pad ids) and the model's own bos/eos/pad. The same bytes
    where there is none to change.

    A turn marker that is also an end-of-sequence id (Gemma's `<end_of_turn>`, listed in
    generation_config's `eos_token_id`) must be readable too: the chat template writes it
    and fine-tuning teaches the model to emit it as one token."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(proto)
    trainer = model.trainer_spec
    keep = set(keep) | {i for i in (trainer.bos_id, trainer.eos_id, trainer.pad_id) if i >= 0}
    changed = False
    for i, piece in enumerate(model.pieces):
        if piece.type == CONTROL and i not in keep:
            piece.type = USER_DEFINED
            changed = True
    return model.SerializeToString() if changed else proto
