"""The masked-LM data adapter: BERT's masking rule, seeded masks, deterministic validation."""

import numpy as np

from tests.conftest import shakespeare_text
from tfllm.data import Corpus
from tfllm.tokenizers import SentencePieceTokenizer


def _mlm_batches(path, tok, seed, batch_size, training, n=3, other_random_ops=0):
    import tensorflow as tf

    from tfllm.tasks.mlm.data import make_mlm_dataset

    for _ in range(other_random_ops):  # what a process did before must not matter
        tf.random.uniform([3])
        tf.random.shuffle(tf.range(5))
    c = Corpus(f"text:{path}")
    ds = make_mlm_dataset(c.train_texts(), tok, max_len=32, batch_size=batch_size,
                          training=training, seed=seed)
    return [tuple(tf.nest.map_structure(np.asarray, b)) for b in ds.take(n)]


def test_mlm_masks_follow_berts_rule_and_depend_on_the_seed_alone(tmp_path):
    mtok = SentencePieceTokenizer.train([shakespeare_text(100_000)], model_type="char",
                                        mask_token=True)
    path = tmp_path / "t.txt"
    path.write_text(shakespeare_text(60_000))
    batches = _mlm_batches(path, mtok, seed=5, batch_size=16, training=True, n=8)
    again = _mlm_batches(path, mtok, seed=5, batch_size=16, training=True, n=8,
                         other_random_ops=7)
    other_seed = _mlm_batches(path, mtok, seed=6, batch_size=16, training=True, n=8)
    for (x, _, _), (x2, _, _) in zip(batches, again):
        np.testing.assert_array_equal(x["token_ids"], x2["token_ids"])
        np.testing.assert_array_equal(x["mask_positions"], x2["mask_positions"])
    assert any(not np.array_equal(a[0]["mask_positions"], b[0]["mask_positions"])
               for a, b in zip(batches, other_seed))

    # Validation: the same masks at any batch size, whatever seed the run trained with.
    val4 = _mlm_batches(path, mtok, seed=1, batch_size=4, training=False, n=4)
    val16 = _mlm_batches(path, mtok, seed=2, batch_size=16, training=False, n=1,
                         other_random_ops=3)
    np.testing.assert_array_equal(np.concatenate([b[0]["token_ids"] for b in val4]),
                                  val16[0][0]["token_ids"])

    selected = 0
    counts = {"mask": 0, "same": 0, "other": 0}
    for x, target, weight in batches:
        masked, positions = x["token_ids"], x["mask_positions"]
        rows = masked.shape[0]
        original = masked.copy()
        for r in range(rows):
            real = positions[r][weight[r] > 0]
            assert len(real) == np.ceil(0.15 * 31) and np.all(np.diff(real) > 0)
            assert 0 not in real  # never the leading BOS
            original[r, real] = target[r][weight[r] > 0]
            for p, t in zip(real, target[r][weight[r] > 0]):
                m = masked[r, p]
                counts["mask" if m == mtok.mask_id else "same" if m == t else "other"] += 1
            selected += len(real)
            # Unused slots carry zero targets and zero weights.
            assert np.all(target[r][weight[r] == 0] == 0)
    # Restoring the targets at their positions gives back a window of the corpus (BOS, then
    # text), so nothing off the selected positions was changed.
    assert np.all(original[:, 0] == mtok.bos_id)
    text = path.read_text()
    for row in original:
        assert mtok.decode(row[1:].tolist()).strip() in text
    assert 0.72 < counts["mask"] / selected < 0.88, counts
    assert 0.04 < counts["same"] / selected < 0.17 and 0.04 < counts["other"] / selected < 0.17
