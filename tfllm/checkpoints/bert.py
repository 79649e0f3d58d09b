"""Import Hugging Face BERT checkpoints (`model_type: bert`): BertModel, BertForMaskedLM,
BertForPreTraining and BertForSequenceClassification, with or without the `bert.` prefix,
legacy `gamma`/`beta` LayerNorm names included.

BERT is a post-LN encoder: embeddings (token + learned position + token type) then a
LayerNorm, blocks `LN(x + attn(x))`, `LN(x + ffn(x))` with exact (erf) GELU, and a pooler
(dense + tanh over `[CLS]`). The run the import writes follows the checkpoint's head:
- a classification head: a classifier run (class names from `id2label`), ready for
  `tfllm classify`, `tfllm evaluate` and every exporter;
- a masked-LM head: a pretrained MLM run (`tfllm finetune --task classify` takes it, and so
  does `tfllm train --objective mlm --run`);
- no head (BertModel, sentence-transformers models such as all-MiniLM-L6-v2): an encoder
  run, for `tfllm embed` and `tfllm finetune --task classify`.
NSP heads (`cls.seq_relationship`) are not used and not imported.
"""

from __future__ import annotations

import os

import numpy as np

from tfllm.checkpoints.common import (CheckpointError, build_deferred, check_tensors,
                                      config_fields, read_safetensors, write_imported_run)
from tfllm.config import LIMITS, ConfigError, ModelConfig

MODEL_TYPES = ("bert",)
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                "relu": "relu"}
# Buffers some checkpoints carry that are not weights (int64 position ids).
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_NSP = ("cls.seq_relationship.weight", "cls.seq_relationship.bias")
# Pieces of legacy names -> today's.
_LEGACY = ((".gamma", ".weight"), (".beta", ".bias"))


def read_config(checkpoint: str, max_len: int | None = None) -> tuple[ModelConfig, dict]:
    """(ModelConfig, parsed config.json) of a BERT checkpoint, every value type-checked and
    bounded before anything is built; the pooler and the head are decided by the tensors
    (see `import_bert`)."""
    from tfllm.checkpoints.llama import choose_max_len

    f = config_fields(checkpoint)
    path, cfg = f.path, f.data
    f.text("model_type", choices=MODEL_TYPES)
    f.require(("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
               "vocab_size", "max_position_embeddings"),
              "a bert config.json")
    act = f.text("hidden_act", "gelu", choices=_ACTIVATIONS)
    f.text("position_embedding_type", "absolute", choices=("absolute",))
    hidden = f.integer("hidden_size", high=LIMITS["d_model"])
    heads = f.integer("num_attention_heads", high=LIMITS["num_heads"])
    if hidden % heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} does not divide "
                              f"hidden_size {hidden}")
    model_max = f.integer("max_position_embeddings", high=LIMITS["max_len"])
    try:
        return ModelConfig(
            vocab_size=f.integer("vocab_size", low=2, high=LIMITS["vocab_size"]),
            num_layers=f.integer("num_hidden_layers", high=LIMITS["num_layers"]),
            d_model=hidden, num_heads=heads,
            ffn_dim=f.integer("intermediate_size", high=LIMITS["ffn_dim"]),
            max_len=choose_max_len(model_max, max_len, "this checkpoint"),
            dropout=f.number("hidden_dropout_prob", 0.1, low=0, high=0.99, low_open=False),
            causal=False, activation=_ACTIVATIONS[act], norm_first=False,
            layer_norm_epsilon=f.number("layer_norm_eps", 1e-12, low=0, high=0.5),
            tokenizer="unigram",
            type_vocab_size=f.integer("type_vocab_size", 2, low=0,
                                      high=LIMITS["type_vocab_size"]),
            pooler=False), cfg
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def normalized_names(names) -> dict[str, str]:
    """Today's name (no `bert.` prefix, weight/bias) -> the checkpoint's name."""
    out = {}
    for name in names:
        new = name[len("bert."):] if name.startswith("bert.") else name
        for old, now in _LEGACY:
            if new.endswith(old) and "LayerNorm" in new:
                new = new[: -len(old)] + now
        out[new] = name
    return out


def expected_shapes(cfg: ModelConfig, head: str, num_labels: int = 0,
                    positions: int | None = None) -> dict[str, tuple]:
    """Every tensor name (normalized) a BERT checkpoint of this head holds, and its shape.

    `positions`: the checkpoint's `max_position_embeddings` (the table is cut to
    `cfg.max_len` when written); default `cfg.max_len`.
    """
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    shapes = {"embeddings.word_embeddings.weight": (v, d),
              "embeddings.position_embeddings.weight": (positions or cfg.max_len, d),
              "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    if cfg.type_vocab_size:
        shapes["embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, d)
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            shapes[p + f"attention.self.{n}.weight"] = (d, d)
            shapes[p + f"attention.self.{n}.bias"] = (d,)
        shapes.update({
            p + "attention.output.dense.weight": (d, d), p + "attention.output.dense.bias": (d,),
            p + "attention.output.LayerNorm.weight": (d,),
            p + "attention.output.LayerNorm.bias": (d,),
            p + "intermediate.dense.weight": (f, d), p + "intermediate.dense.bias": (f,),
            p + "output.dense.weight": (d, f), p + "output.dense.bias": (d,),
            p + "output.LayerNorm.weight": (d,), p + "output.LayerNorm.bias": (d,),
        })
    if cfg.pooler:
        shapes.update({"pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)})
    if head == "mlm":
        shapes.update({"cls.predictions.transform.dense.weight": (d, d),
                       "cls.predictions.transform.dense.bias": (d,),
                       "cls.predictions.transform.LayerNorm.weight": (d,),
                       "cls.predictions.transform.LayerNorm.bias": (d,),
                       "cls.predictions.bias": (v,)})
    elif head == "classifier":
        shapes.update({"classifier.weight": (num_labels, d), "classifier.bias": (num_labels,)})
    return shapes


def head_of(names) -> str:
    """"classifier", "mlm" or "encoder", from the tensors present."""
    if "classifier.weight" in names:
        return "classifier"
    if "cls.predictions.transform.dense.weight" in names:
        return "mlm"
    return "encoder"


def class_names_of(path: str, cfg: dict, num_labels: int) -> list[str]:
    """The classifier's label names, index i for class i (`id2label`, else LABEL_i)."""
    raw = cfg.get("id2label") or {}
    try:
        names = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: id2label must map class indices to names: {e}") from e
    if names and sorted(names) != list(range(num_labels)):
        raise CheckpointError(f"{path}: id2label names classes {sorted(names)} but the "
                              f"classifier head has {num_labels} outputs")
    labels = [names.get(i, f"LABEL_{i}") for i in range(num_labels)]
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"{path}: id2label repeats a name: {labels}")
    return labels


def bert_weights(model, cfg: ModelConfig, w, names: dict[str, str], head: str,
                 dtype) -> list[tuple]:
    """Each variable of the imported model and a function making its value from the
    checkpoint's tensors `w` (looked up by their normalized `names`)."""
    def take(name, transpose=False, rows=None):
        def make():
            x = np.asarray(w[names[name]]).astype(dtype, copy=False)
            x = x[:rows] if rows is not None else x
            return x.T if transpose else x
        return make

    def joined(parts):
        return lambda: np.concatenate([m() for m in parts], axis=-1)

    bb = model.backbone
    e = "embeddings."
    pairs = [(bb.embedding.token_embeddings, take(e + "word_embeddings.weight")),
             (bb.embedding.position_embeddings,
              take(e + "position_embeddings.weight", rows=cfg.max_len)),
             (bb.norm.gamma, take(e + "LayerNorm.weight")),
             (bb.norm.beta, take(e + "LayerNorm.bias"))]
    if cfg.type_vocab_size:
        pairs.append((bb.embedding.token_type_embeddings, take(e + "token_type_embeddings.weight")))
    for i, block in enumerate(bb.blocks):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        att = block.attention
        # The fused projection's columns are [Q heads | K heads | V heads].
        pairs += [
            (att.qkv.kernel, joined([take(a + f"self.{n}.weight", True)
                                     for n in ("query", "key", "value")])),
            (att.qkv.bias, joined([take(a + f"self.{n}.bias") for n in ("query", "key",
                                                                          "value")])),
            (att.out.kernel, take(a + "output.dense.weight", True)),
            (att.out.bias, take(a + "output.dense.bias")),
            (block.norm1.gamma, take(a + "output.LayerNorm.weight")),
            (block.norm1.beta, take(a + "output.LayerNorm.bias")),
            (block.ffn.inner.kernel, take(p + "intermediate.dense.weight", True)),
            (block.ffn.inner.bias, take(p + "intermediate.dense.bias")),
            (block.ffn.outer.kernel, take(p + "output.dense.weight", True)),
            (block.ffn.outer.bias, take(p + "output.dense.bias")),
            (block.norm2.gamma, take(p + "output.LayerNorm.weight")),
            (block.norm2.beta, take(p + "output.LayerNorm.bias")),
        ]
    if cfg.pooler:
        pairs += [(bb.pooler_dense.kernel, take("pooler.dense.weight", True)),
                  (bb.pooler_dense.bias, take("pooler.dense.bias"))]
    if head == "mlm":
        c = "cls.predictions."
        pairs += [(model.transform.kernel, take(c + "transform.dense.weight", True)),
                  (model.transform.bias, take(c + "transform.dense.bias")),
                  (model.transform_norm.gamma, take(c + "transform.LayerNorm.weight")),
                  (model.transform_norm.beta, take(c + "transform.LayerNorm.bias")),
                  (model.output_bias, take(c + "bias"))]
    elif head == "classifier":
        pairs += [(model.head.kernel, take("classifier.weight", True)),
                  (model.head.bias, take("classifier.bias"))]
    return pairs


def tokenizer_entry(checkpoint: str, vocab_size: int):
    """(the run's tokenizer entry, the file to copy, the tokenizer): a WordPiece
    `tokenizer.json`, or a `vocab.txt` with `tokenizer_config.json`'s `do_lower_case`."""
    from tfllm.checkpoints.common import read_optional_json
    from tfllm.errors import TokenizerError
    from tfllm.tokenizers.wordpiece import WordPieceTokenizer

    json_path = os.path.join(checkpoint, "tokenizer.json")
    txt_path = os.path.join(checkpoint, "vocab.txt")
    try:
        if os.path.isfile(json_path):
            tok = WordPieceTokenizer.from_tokenizer_json(json_path, vocab_size)
            entry, files = {"type": "wordpiece", "file": "tokenizer.json"}, {
                "tokenizer.json": json_path}
        elif os.path.isfile(txt_path):
            config = read_optional_json(checkpoint, "tokenizer_config.json")
            lowercase = bool(config.get("do_lower_case", True))
            tok = WordPieceTokenizer.from_vocab_txt(txt_path, lowercase=lowercase,
                                                    vocab_size=vocab_size)
            entry, files = {"type": "wordpiece", "file": "vocab.txt",
                            "lowercase": lowercase}, {"vocab.txt": txt_path}
        else:
            raise CheckpointError(f"{checkpoint} has no tokenizer.json or vocab.txt (BERT's "
                                  "WordPiece vocabulary); copy the checkpoint's tokenizer "
                                  "files beside config.json")
    except TokenizerError as e:
        raise CheckpointError(f"the checkpoint's tokenizer cannot be used: {e}") from e
    if tok.vocab_size != vocab_size:
        raise CheckpointError(f"the WordPiece vocabulary has {tok.vocab_size} tokens but "
                              f"config.json's vocab_size is {vocab_size}; the tokenizer "
                              "files do not belong to this checkpoint")
    return entry, files, tok


def import_bert(checkpoint: str, out: str, overwrite: bool = False,
                max_len: int | None = None, dtype: str = "float32") -> str:
    """Import a BERT checkpoint into the run directory `out`; returns `out`.

    Args:
        checkpoint: a directory with config.json, model.safetensors and tokenizer.json
            (or vocab.txt).
        out: the run directory to write (an existing run only with `overwrite`).
        max_len: the longest input in tokens (at most the checkpoint's positions, 512 for
            BERT): the position table is cut to it.
        dtype: "float32" or "bfloat16", the dtype of the stored weights.

    Example:
        >>> import_bert("downloads/all-MiniLM-L6-v2", "runs/minilm")  # doctest: +SKIP
    """
    from tfllm import runs
    from tfllm.checkpoints.llama import check_dtype, numpy_dtype

    check_dtype(dtype)
    output = runs.new_run(out, overwrite, [checkpoint], "import-hf")
    cfg, hf = read_config(checkpoint, max_len)
    entry, files, tok = tokenizer_entry(checkpoint, cfg.vocab_size)
    path, raw = read_safetensors(checkpoint, ignore=_BUFFERS)
    names = normalized_names(k for k in raw if k not in _NSP
                             and k != "cls.predictions.decoder.weight"  # tied to the embedding
                             and k != "cls.predictions.decoder.bias")  # = cls.predictions.bias
    head = head_of(names)
    cfg.pooler = "pooler.dense.weight" in names
    num_labels = raw.shapes[names["classifier.weight"]][0] if head == "classifier" else 0
    expected = expected_shapes(cfg, head, num_labels, hf["max_position_embeddings"])
    check_tensors(path, {k: raw.shapes[v] for k, v in names.items()}, expected)
    if head == "classifier":
        if not cfg.pooler:
            raise CheckpointError(f"{path}: a classification head without the pooler it "
                                  "reads is not a BertForSequenceClassification checkpoint")
        classes = class_names_of(os.path.join(checkpoint, "config.json"), hf, num_labels)
    else:
        classes = None
    model = build_deferred(lambda: _build(cfg, head, dtype, classes, tok.pad_id))
    objective = {"classifier": "classify", "mlm": "mlm", "encoder": "encoder"}[head]
    run_config = {"model": cfg.to_dict(), "preset": "bert", "objective": objective,
                  "data": None, "training": None, "dtype": dtype, "tokenizer": entry,
                  "imported_from": {"format": "huggingface-bert",
                                    "path": os.path.abspath(checkpoint), "head": head}}
    if head == "classifier":
        # What fine-tuning records of a classifier. No training length is known: 128
        # tokens (Hugging Face's usual) is the padded length, and the TFLite input's.
        # Whether it was fine-tuned on single texts or pairs (MRPC, NLI) the checkpoint
        # does not say: "pair": None takes either.
        run_config["task"] = {"type": "classify", "class_names": classes,
                              "seq_len": min(128, cfg.max_len), "add_bos": True,
                              "pooling": "first", "pair": None}
    weights = bert_weights(model, cfg, raw, names, head, numpy_dtype(dtype))
    return write_imported_run(output, model, weights, run_config, files)


def _build(cfg: ModelConfig, head: str, dtype: str, classes, pad_id: int):
    from tfllm.models import MaskedLM, SequenceClassifier, TextEncoder, TransformerBackbone

    backbone = TransformerBackbone.from_model_config(cfg, name="backbone", dtype=dtype)
    backbone.build((None, None))
    if head == "mlm":
        return MaskedLM(backbone, name="masked_lm")
    if head == "classifier":
        return SequenceClassifier(backbone, classes, pooling="first", dropout=cfg.dropout,
                                  pad_id=pad_id, name="classifier")
    return TextEncoder(backbone, pad_id=pad_id, name="text_encoder")
