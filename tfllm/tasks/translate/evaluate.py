"""Translation quality: BLEU and chrF (sacrebleu, the field's standard) and placeholder
accuracy, and `evaluate_translation`, what `tfllm evaluate` runs on a seq2seq run."""

from __future__ import annotations

import math

from tfllm.tokenizers.placeholders import placeholders


def placeholder_accuracy(sources, outputs) -> float:
    """Share of rows whose output keeps exactly the source's placeholders (no more, no
    fewer); rows without placeholders count as kept when the output adds none."""
    if not sources:
        return float("nan")
    kept = sum(placeholders(s) == placeholders(o) for s, o in zip(sources, outputs))
    return kept / len(sources)


def score_translations(sources, outputs, references) -> dict:
    """{"bleu", "chrf", "placeholder_accuracy", "placeholder_rows"} of a set of outputs.

    BLEU is sacrebleu's corpus BLEU with its default 13a tokenization, chrF its chrF2.
    `placeholder_rows` counts the rows whose source has any placeholder, and
    `placeholder_accuracy` is measured over those rows (0 rows: null).
    """
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(outputs, [references])
    chrf = sacrebleu.corpus_chrf(outputs, [references])
    rows = [(s, o) for s, o in zip(sources, outputs) if placeholders(s)]
    acc = placeholder_accuracy([s for s, _ in rows], [o for _, o in rows]) if rows else None
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2),
            "placeholder_accuracy": None if acc is None else round(acc, 4),
            "placeholder_rows": len(rows)}


def evaluate_translation(run_dir, data=None, source_column=None, target_column=None,
                         num_beams=4, length_penalty=1.0, batch_size=32, max_rows=None,
                         weights="final", tfds_manual_dir=None, tfds_data_dir=None,
                         progress=False) -> dict:
    """Loss, perplexity, BLEU, chrF and placeholder accuracy of a seq2seq run.

    Args:
        run_dir: a run trained with `--objective seq2seq`.
        data: parallel data to score (default: the run's held-out pairs); a file given
            here is scored whole.
        source_column, target_column: default the run's own.
        num_beams, length_penalty: decoding (beam 4 by default, as translation reports).
        batch_size: pairs per batch.
        max_rows: score only the first this many pairs.
        weights: "final" or "best".

    Returns:
        {"loss", "perplexity", "tokens", "bleu", "chrf", "placeholder_accuracy",
         "placeholder_rows", "rows", "num_beams", "data"}.
    """
    import tensorflow as tf

    from tfllm import runs
    from tfllm.data.parallel import ParallelData
    from tfllm.tasks.translate.data import encode_pairs, make_seq2seq_dataset
    from tfllm.errors import TfllmError
    from tfllm.models.seq2seq_lm import SmoothedSparseCrossentropy
    from tfllm.models.translation import check_num_beams, translate

    stored = runs.read_run_config(run_dir)
    if stored.get("objective") != "seq2seq":
        raise TfllmError(f"{run_dir} is not a translation (seq2seq) run")
    check_num_beams(num_beams)
    model = runs.load(run_dir, weights=weights)
    tok = model.tokenizer
    own = stored["data"]
    source_column = source_column or own["source_column"]
    target_column = target_column or own["target_column"]
    if data is None:
        pairs = ParallelData(own["spec"], source_column, target_column,
                             stored["training"]["seed"], tfds_manual_dir, tfds_data_dir).val
        data = own["spec"] + " (held-out pairs)"
    else:
        pairs = ParallelData(data, source_column, target_column, 0, tfds_manual_dir,
                             tfds_data_dir).all
    if max_rows:
        pairs = pairs[:max_rows]
    max_len = model.backbone.max_len
    encoded, _ = encode_pairs(pairs, tok, max_len, truncate=True,
                              protect=model.protect_placeholders)
    ds = make_seq2seq_dataset(encoded, tok, max_len, batch_size, training=False)
    nll = SmoothedSparseCrossentropy(0.0, reduction="sum")

    @tf.function(jit_compile=True)
    def batch_loss(x, y, w):
        return nll(y, model(x), sample_weight=w), tf.reduce_sum(w)

    loss_sum, tokens = 0.0, 0.0
    for x, y, w in ds:
        total, count = batch_loss(x, y, w)
        loss_sum, tokens = loss_sum + float(total), tokens + float(count)
    loss = loss_sum / max(tokens, 1.0)
    sources = [s for s, _ in pairs]
    outputs = translate(model, sources, num_beams=num_beams, length_penalty=length_penalty,
                        truncate=True, batch_size=batch_size, progress=progress)
    scores = score_translations(sources, outputs, [t for _, t in pairs])
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4),
            "tokens": int(tokens), **scores, "rows": len(pairs), "num_beams": num_beams,
            "data": data}


def print_evaluation(args) -> dict:
    """`tfllm evaluate` of a translation run: score it and print the figures."""
    import json
    import sys

    result = evaluate_translation(args.run, args.data, args.source_column, args.target_column,
                                  args.num_beams, args.length_penalty, args.batch_size or 32,
                                  args.max_rows, args.weights, args.tfds_manual_dir,
                                  args.tfds_data_dir, progress=sys.stderr.isatty())
    print(f"data: {result['data']}  rows: {result['rows']}  target tokens: "
          f"{result['tokens']}")
    print(f"loss: {result['loss']:.4f}  perplexity: {result['perplexity']:.3f}")
    print(f"BLEU: {result['bleu']:.2f}  chrF: {result['chrf']:.2f}  (beam "
          f"{result['num_beams']}, sacrebleu)")
    acc = result["placeholder_accuracy"]
    print(f"placeholder accuracy: {'n/a' if acc is None else f'{acc:.2%}'} over "
          f"{result['placeholder_rows']} rows with placeholders")
    print(json.dumps(result, ensure_ascii=False))
    return result
