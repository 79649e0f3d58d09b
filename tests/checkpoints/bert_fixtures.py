"""Random BERT checkpoints in the Hugging Face file layout, a WordPiece tokenizer.json made
by the `tokenizers` library, and an independent NumPy BERT to check imports against."""

import json
import math
import os

import numpy as np

from tests.conftest import shakespeare_text

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Accents, CJK, punctuation, URLs, emoji, digits, control characters, special tokens.
TEXT = ("Héllo, WORLD! Ça va? naïve café — résumé; 東京は晴れ。北京欢迎你 "
        "see https://example.com/a?b=1&c=2 or mail@example.org 😀👍🏽 x² 3.14 "
        "don't [SEP] it's [MASK] ok\u200bzero\x00width\ttab\nnew line Ω≈ç √")
EDGE = ["", " ", "[CLS]", "a[SEP]b", "ÉCOLE", "ﬁne", "İstanbul", "東", "😀", "a" * 150,
        "hello\u0301", "tab\there", "\u00a0nbsp", "...!!!", "x" * 99, "Ünïcödé wörds"]

TINY_BERT = dict(vocab_size=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)


def train_tokenizer_json(path, vocab_size=600, lowercase=True):
    """A WordPiece tokenizer.json trained by the `tokenizers` library on Shakespeare and
    TEXT (so accents, CJK and emoji are in the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tok.train_from_iterator([shakespeare_text(20_000), TEXT] * 2, trainer)
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                        ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(path)
    return tok


def write_checkpoint(root, head="classifier", seed=0, prefix=True, legacy=False,
                     num_labels=3, vocab_txt=False):
    """A random BERT checkpoint directory; returns (path, config, weights by HF name)."""
    from safetensors.numpy import save_file

    os.makedirs(root, exist_ok=True)
    tok = train_tokenizer_json(os.path.join(root, "tokenizer.json"))
    if vocab_txt:  # the older layout: vocab.txt + tokenizer_config.json
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        with open(os.path.join(root, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t, _ in vocab))
        os.remove(os.path.join(root, "tokenizer.json"))
        with open(os.path.join(root, "tokenizer_config.json"), "w") as f:
            json.dump({"do_lower_case": True}, f)
    config = dict(TINY_BERT, vocab_size=tok.get_vocab_size(), model_type="bert",
                  hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
                  position_embedding_type="absolute")
    if head == "classifier":
        config["id2label"] = {str(i): f"class_{'abc'[i]}" for i in range(num_labels)}
        config["architectures"] = ["BertForSequenceClassification"]
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(seed)
    d, f_, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": r(v, d),
         "embeddings.position_embeddings.weight": r(config["max_position_embeddings"], d),
         "embeddings.token_type_embeddings.weight": r(2, d),
         "embeddings.LayerNorm.weight": 1 + r(d, scale=0.1),
         "embeddings.LayerNorm.bias": r(d, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"], w[p + f"attention.self.{n}.bias"] = r(d, d), r(d)
        w.update({p + "attention.output.dense.weight": r(d, d),
                  p + "attention.output.dense.bias": r(d),
                  p + "attention.output.LayerNorm.weight": 1 + r(d, scale=0.1),
                  p + "attention.output.LayerNorm.bias": r(d, scale=0.1),
                  p + "intermediate.dense.weight": r(f_, d), p + "intermediate.dense.bias": r(f_),
                  p + "output.dense.weight": r(d, f_), p + "output.dense.bias": r(d),
                  p + "output.LayerNorm.weight": 1 + r(d, scale=0.1),
                  p + "output.LayerNorm.bias": r(d, scale=0.1)})
    if head != "mlm":
        w.update({"pooler.dense.weight": r(d, d), "pooler.dense.bias": r(d)})
    extra = {}
    if head == "classifier":
        extra = {"classifier.weight": r(num_labels, d), "classifier.bias": r(num_labels)}
    elif head == "mlm":
        extra = {"cls.predictions.transform.dense.weight": r(d, d),
                 "cls.predictions.transform.dense.bias": r(d),
                 "cls.predictions.transform.LayerNorm.weight": 1 + r(d, scale=0.1),
                 "cls.predictions.transform.LayerNorm.bias": r(d, scale=0.1),
                 "cls.predictions.bias": r(v)}
    stored = {}
    for name, value in w.items():
        if legacy and "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        stored[("bert." if prefix else "") + name] = value
    for name, value in extra.items():
        if legacy and "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        stored[name] = value
    if head == "mlm":  # transformers saves the tied decoder too
        stored["cls.predictions.decoder.weight"] = w["embeddings.word_embeddings.weight"]
    stored[("bert." if prefix else "") + "embeddings.position_ids"] = \
        np.arange(config["max_position_embeddings"], dtype=np.int64)[None]
    save_file(stored, os.path.join(root, "model.safetensors"))
    return root, config, {**w, **extra}


def _ln(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def numpy_bert(w, config, ids, types=None, mask=None):
    """(hidden states, pooled output) of a BERT, in float64, written from the paper and
    Hugging Face's modeling_bert (not from tfllm)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ids = np.asarray(ids)
    b, s = ids.shape
    types = np.zeros_like(ids) if types is None else np.asarray(types)
    mask = np.ones_like(ids, bool) if mask is None else np.asarray(mask, bool)
    d, h = config["hidden_size"], config["num_attention_heads"]
    hd = d // h
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(s)][None]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    bias = np.where(mask, 0.0, -1e9)[:, None, None, :]  # (b, 1, 1, s)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(t, name):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(t):
            return t.reshape(b, s, h, hd).transpose(0, 2, 1, 3)  # (b, h, s, hd)

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        x = _ln(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"])
        inner = lin(x, "intermediate.dense")
        inner = 0.5 * inner * (1 + _erf(inner / math.sqrt(2)))
        x = _ln(x + lin(inner, "output.dense"), w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"])
    pooled = None
    if "pooler.dense.weight" in w:
        pooled = np.tanh(x[:, 0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return x, pooled


def numpy_classifier_probs(w, config, ids, types=None, mask=None):
    _, pooled = numpy_bert(w, config, ids, types, mask)
    logits = pooled @ w["classifier.weight"].T.astype(np.float64) + w["classifier.bias"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_mlm_logits(w, config, ids, mask=None):
    x, _ = numpy_bert(w, config, ids, None, mask)
    c = "cls.predictions."
    t = x @ w[c + "transform.dense.weight"].T.astype(np.float64) + w[c + "transform.dense.bias"]
    t = 0.5 * t * (1 + _erf(t / math.sqrt(2)))
    t = _ln(t, w[c + "transform.LayerNorm.weight"], w[c + "transform.LayerNorm.bias"])
    return t @ w["embeddings.word_embeddings.weight"].T.astype(np.float64) + w[c + "bias"]


def numpy_embedding(w, config, ids, mask):
    """sentence-transformers' mean pooling over real tokens, then L2 normalization."""
    x, _ = numpy_bert(w, config, ids, None, mask)
    m = np.asarray(mask, np.float64)[:, :, None]
    pooled = (x * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
