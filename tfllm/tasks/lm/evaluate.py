"""`tfllm evaluate` of a causal LM run: next-token loss and perplexity on text."""

from __future__ import annotations


def evaluate_lm(run_dir, data=None, batch_size=None, eval_steps=None, weights="final",
                text_feature=None, tfds_manual_dir=None, tfds_data_dir=None) -> dict:
    """Validation loss and perplexity of a causal LM run (see
    `tfllm.training.evaluate_windows`): {"loss", "perplexity", "tokens", "data"}."""
    from tfllm.training import CausalWindows, evaluate_windows

    return evaluate_windows(CausalWindows, run_dir, data, batch_size, eval_steps, weights,
                            text_feature, tfds_manual_dir, tfds_data_dir)


def print_evaluation(args) -> dict:
    """Evaluate the run of the parsed `tfllm evaluate` arguments and print the figures."""
    from tfllm.training import CausalWindows, print_window_scores

    return print_window_scores(CausalWindows, args)
