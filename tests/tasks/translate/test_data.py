"""The translate data adapter: padded batches of source/target pairs."""

import numpy as np
import pytest

from tests.conftest import shakespeare_text
from tfllm.tokenizers import SentencePieceTokenizer


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer.train([shakespeare_text(100_000)], model_type="char")


@pytest.mark.parametrize("static_shapes", [False, True])
def test_seq2seq_batches_pad_to_their_longest_pair_or_a_fixed_width(tok, static_shapes):
    """Without static shapes (CPU/GPU) each batch is as wide as its longest side; with them
    (TPU, XLA) widths come from `bucket_widths`. Weights mark exactly the real labels."""
    from tfllm.models.translation import bucket_widths
    from tfllm.tasks.translate.data import make_seq2seq_dataset

    rng = np.random.default_rng(0)
    encoded = [(list(rng.integers(4, 30, size=rng.integers(1, 40))) + [tok.eos_id],
                list(rng.integers(4, 30, size=rng.integers(1, 40)))) for _ in range(200)]
    ds = make_seq2seq_dataset(encoded, tok, 64, 8, training=False,
                              static_shapes=static_shapes)
    seen = 0
    for inputs, labels, weights in ds:
        src, tgt_in = inputs["encoder_token_ids"].numpy(), inputs["decoder_token_ids"].numpy()
        real_src = (src != 0).sum(1)
        real_tgt = weights.numpy().sum(1)
        rows = real_src > 0
        np.testing.assert_array_equal(real_tgt[rows] > 0, True)
        longest = max(real_src.max(), real_tgt.max())
        if static_shapes:
            assert src.shape[1] == tgt_in.shape[1] == min(w for w in bucket_widths(64)
                                                         if w >= longest)
        else:
            # Each side padded to the batch's longest side of that kind.
            assert src.shape[1] == real_src.max() and tgt_in.shape[1] == real_tgt.max()
        seen += int(rows.sum())
    assert seen == len(encoded)
