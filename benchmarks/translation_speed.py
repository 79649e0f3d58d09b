"""Translation speed: tfllm's cached encoder-decoder loop vs KerasHub's BartSeq2SeqLM.generate,
same size (transformer-mt-small: 3 + 3 layers, 256 wide, 4 heads, 8k vocab; its SwiGLU
672 wide, BART's GELU feed-forward 1024, at least as many parameters),
random weights, same shapes: a 16-token source, 32 new tokens (no early stop), beam 4,
batches of 1 and 32. Median of 3 timed runs after one warm-up (compilation) run.

    python benchmarks/translation_speed.py [--threads 2]

Last line: one JSON object (sentences per second of both, and the ratio).
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def timed(fn, runs=3):
    fn()  # warm-up: tracing and XLA compilation
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--source-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batches", default="1,32")
    a = p.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    import keras
    import keras_hub
    import numpy as np

    from benchmarks.translation import reference_ffn_dim
    from tfllm.config import get_preset
    from tfllm.models import Seq2SeqLM
    from tfllm.models.translation import Translator

    cfg = get_preset("transformer-mt-small").replace(vocab_size=8000)
    keras.utils.set_random_seed(0)
    ours = Seq2SeqLM.from_model_config(cfg)
    # An end id no token has: every row decodes exactly --new-tokens tokens, as KerasHub's
    # loop does with stop_token_ids=None.
    tr = Translator(ours, bos_id=2, end_id=cfg.vocab_size + 1)
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        hidden_dim=cfg.d_model, intermediate_dim=reference_ffn_dim(cfg), dropout=0.0,
        max_sequence_length=cfg.max_len)
    theirs = keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=None)
    sampler = keras_hub.samplers.BeamSampler(num_beams=a.num_beams) if a.num_beams > 1 \
        else "greedy"
    theirs.compile(sampler=sampler)
    rng = np.random.RandomState(0)
    results = {"num_beams": a.num_beams, "source_len": a.source_len,
               "new_tokens": a.new_tokens, "threads": a.threads}
    for batch in [int(b) for b in a.batches.split(",")]:
        src = rng.randint(4, cfg.vocab_size, (batch, a.source_len)).astype("int32")
        src[:, -1] = 3
        sources = [list(row) for row in src]

        def run_ours():
            tr.translate_ids(sources, max_new_tokens=a.new_tokens, num_beams=a.num_beams)

        dec = np.zeros((batch, a.new_tokens + 1), "int32")
        dec[:, 0] = 2
        dec_mask = np.zeros_like(dec, dtype=bool)
        dec_mask[:, 0] = True
        prompt = {"encoder_token_ids": src, "encoder_padding_mask": np.ones_like(src, bool),
                  "decoder_token_ids": dec, "decoder_padding_mask": dec_mask}

        def run_theirs():
            theirs.generate(prompt, stop_token_ids=None)

        t_ours, t_theirs = timed(run_ours), timed(run_theirs)
        results[f"batch{batch}"] = {
            "tfllm_sentences_per_sec": round(batch / t_ours, 2),
            "keras_hub_bart_sentences_per_sec": round(batch / t_theirs, 2),
            "speedup": round(t_theirs / t_ours, 2)}
        print(f"batch {batch}: tfllm {batch / t_ours:.2f} sentences/s, KerasHub BART "
              f"{batch / t_theirs:.2f} sentences/s, {t_theirs / t_ours:.2f}x", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
