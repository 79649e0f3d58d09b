"""`tfllm evaluate` of a masked-LM run: loss, perplexity and accuracy on its masked tokens."""

from __future__ import annotations


def evaluate_mlm(run_dir, data=None, batch_size=None, eval_steps=None, weights="final",
                 text_feature=None, tfds_manual_dir=None, tfds_data_dir=None) -> dict:
    """Masked-token loss, perplexity and accuracy of a masked-LM run on a fixed draw of
    BERT's masking (see `tfllm.training.evaluate_windows`)."""
    from tfllm.tasks.mlm.pretraining import MaskedWindows
    from tfllm.training import evaluate_windows

    return evaluate_windows(MaskedWindows, run_dir, data, batch_size, eval_steps, weights,
                            text_feature, tfds_manual_dir, tfds_data_dir)


def print_evaluation(args) -> dict:
    """Evaluate the run of the parsed `tfllm evaluate` arguments and print the figures."""
    from tfllm.tasks.mlm.pretraining import MaskedWindows
    from tfllm.training import print_window_scores

    return print_window_scores(MaskedWindows, args)
