"""Translation quality for a fixed CPU budget: tfllm's transformer-mt-small vs PyTorch's
nn.Transformer, English -> French program messages (../shared/data/l10n-en-fr).

Both train on the same pairs (tfllm's training split of train.tsv, the same SentencePiece
ids, placeholders protected as tfllm's seq2seq training does by default, restored alike
after decoding), at the same size (nn.Transformer gets at least tfllm's parameter count)
and recipe, for the same wall-clock budget, one after the other on this machine; each side
with its own blocks (tfllm's preset: rotary positions, RMSNorm, SwiGLU; nn.Transformer's:
LayerNorm, ReLU feed-forward, learned positions added); both translate valid.tsv with beam 4 (Hugging Face's beam rules); sacrebleu
scores both, with placeholder accuracy over the rows that have placeholders.

    python benchmarks/translation.py --torch-python /tmp/torchvenv/bin/python [--minutes 20]

The torch venv needs `pip install torch==2.13.0 sentencepiece numpy`. Last line: one JSON
object with both sides' figures.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATA = os.environ.get("TFLLM_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def reference_ffn_dim(cfg):
    """The feed-forward width of a plain (two-matrix, ReLU) reference of `cfg`'s size: at
    least its parameters (a SwiGLU of width f holds 3f columns, a plain one 2f), rounded up
    to a multiple of 64: 672 (SwiGLU) -> 1024. Peers without gated feed-forwards
    (nn.Transformer, KerasHub's BART) get this width."""
    if cfg.ffn == "plain":
        return cfg.ffn_dim
    return -(-3 * cfg.ffn_dim // 2 // 64) * 64


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per side")
    p.add_argument("--steps", type=int, default=3600,
                   help="schedule length (warmup + cosine) of both sides; training stops "
                        "at the budget or here, whichever comes first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--eval-rows", type=int, default=None, help="default: all of valid.tsv")
    p.add_argument("--work", default="/tmp/tfllm-translation-bench")
    p.add_argument("--torch-python", help="python of a venv with torch (omit: tfllm only)")
    a = p.parse_args()

    import keras

    from tfllm.data.parallel import ParallelData
    from tfllm.tasks.translate.data import encode_pairs
    from tfllm.tokenizers.placeholders import restore
    from tfllm.tasks import train
    from tfllm.training import TrainSettings
    from tfllm.tasks.translate.evaluate import evaluate_translation, score_translations

    budget = a.minutes * 60
    data_dir = os.path.join(DATA, "l10n-en-fr")
    train_spec, valid_spec = (f"tsv:{os.path.join(data_dir, f)}"
                              for f in ("train.tsv", "valid.tsv"))
    run = os.path.join(a.work, "tfllm-run")
    os.makedirs(a.work, exist_ok=True)
    settings = TrainSettings(steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                             warmup_steps=100, eval_interval=a.steps // 4, eval_steps=5)

    class Budget(keras.callbacks.Callback):
        """Stops training once the wall-clock budget is spent (compilation included)."""

        def on_train_begin(self, logs=None):
            self.start = time.time()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps = int(self.model.optimizer.iterations)
            if time.time() - self.start >= budget:
                self.model.stop_training = True

    budget_cb = Budget()
    t0 = time.time()
    train(run, train_spec, "transformer-mt-small", settings, verbose=2, objective="seq2seq",
          source_column="en", target_column="fr", overwrite=True,
          extra_callbacks=[budget_cb])
    tfllm_train_sec = time.time() - t0
    t0 = time.time()
    ours = evaluate_translation(run, valid_spec, num_beams=a.num_beams, max_rows=a.eval_rows)
    ours.update(decode_sec=round(time.time() - t0, 1))
    import tfllm

    model = tfllm.load(run)
    ours.update(steps=budget_cb.steps, train_sec=round(tfllm_train_sec, 1),
                params=model.count_params())
    print("tfllm:", json.dumps(ours), flush=True)

    result = {"budget_minutes": a.minutes, "batch_size": a.batch_size, "steps": a.steps,
              "num_beams": a.num_beams, "tfllm": ours}
    if a.torch_python:
        tok = model.tokenizer
        cfg = model.config
        split = ParallelData(train_spec, "en", "fr", settings.seed)
        # The same pairs as tfllm trained on, placeholders protected alike, so the two
        # sides differ only in the framework that trains and decodes the model.
        protect = model.protect_placeholders
        encoded, _ = encode_pairs(split.train, tok, cfg.max_len, truncate=True,
                                  protect=protect)
        valid = ParallelData(valid_spec, "en", "fr").all[:a.eval_rows]
        sources = [s for s, _ in encode_pairs(valid, tok, cfg.max_len, truncate=True,
                                              protect=protect)[0]]
        pairs_path = os.path.join(a.work, "pairs.json")
        ffn_dim = reference_ffn_dim(cfg)
        json.dump({"config": dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                                  num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                                  num_decoder_layers=cfg.num_decoder_layers,
                                  ffn_dim=ffn_dim, max_len=cfg.max_len,
                                  dropout=cfg.dropout, lr=a.lr, steps=a.steps,
                                  warmup_steps=100, weight_decay=settings.weight_decay,
                                  label_smoothing=0.1, batch_size=a.batch_size,
                                  budget_sec=budget, seed=settings.seed, threads=2,
                                  num_beams=a.num_beams),
                   "train": encoded, "eval_sources": sources}, open(pairs_path, "w"))
        out_path = os.path.join(a.work, "torch-out.json")
        subprocess.run([a.torch_python, os.path.join(REPO, "benchmarks",
                                                     "torch_translation_reference.py"),
                        "--pairs", pairs_path, "--out", out_path], check=True)
        ref = json.load(open(out_path))
        outputs = [tok.decode(ids) for ids in ref["outputs"]]
        if protect:
            outputs = [restore(o, src) for o, (src, _) in zip(outputs, valid)]
        theirs = score_translations([s for s, _ in valid], outputs, [t for _, t in valid])
        theirs.update(steps=ref["steps"], train_sec=ref["train_sec"], params=ref["params"],
                      decode_sec=ref["decode_sec"], rows=len(valid))
        result["torch_nn_transformer"] = theirs
        result["bleu_gain"] = round(ours["bleu"] - theirs["bleu"], 2)
        print("torch:", json.dumps(theirs), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
