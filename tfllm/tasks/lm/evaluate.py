"""`tfllm evaluate` of a causal LM run: next-token loss and perplexity on text."""

from __future__ import annotations

import json


def evaluate_lm(run_dir, data=None, batch_size=None, eval_steps=None, weights="final",
                text_feature=None, tfds_manual_dir=None, tfds_data_dir=None) -> dict:
    """Validation loss and perplexity of a causal LM run (see
    `tfllm.training.evaluate_windows`): {"loss", "perplexity", "tokens", "data"}."""
    from tfllm.training import CausalWindows, evaluate_windows

    return evaluate_windows(CausalWindows, run_dir, data, batch_size, eval_steps, weights,
                            text_feature, tfds_manual_dir, tfds_data_dir)


def print_evaluation(args) -> dict:
    """Evaluate the run of the parsed `tfllm evaluate` arguments and print the figures."""
    from tfllm.training import window_score_lines

    result = evaluate_lm(args.run, args.data, args.batch_size, args.eval_steps, args.weights,
                         args.text_feature, args.tfds_manual_dir, args.tfds_data_dir)
    print("\n".join(window_score_lines(result)))
    print(json.dumps(result))
    return result
