"""Data: specs at the bottom, then sources (tables, TFDS), then what models train on.

    spec         what a --data value names; shared defaults
    tables       tsv/csv/jsonl rows with a held-out split (seeded, or sentence-disjoint)
    tfds_source  TFDS preparation offline, text feature and splits
    corpus       LM corpora (train/validation text of any spec)
    labeled      (text, label) rows for classification; texts may be (text, pair)
    classification  texts and pairs to a classifier's token ids, in-graph
    parallel     (source, target) pairs for translation, with a held-out split
    seq2seq      length-bucketed encoder-decoder batches for `fit`
    chat         conversations (messages, or prompt/response columns) and their
                 token ids with a loss mask on the assistant replies
    lm           tf.data pipelines of LM and masked-LM windows for `fit`
"""

from tfllm.data.corpus import Corpus
from tfllm.data.labeled import LabeledData, sort_labels
from tfllm.data.lm import (check_nonempty, lm_windows, make_lm_dataset, make_mlm_dataset,
                           training_options)
from tfllm.data.spec import DataSpec, is_labeled_spec, parse_data_spec

__all__ = ["Corpus", "LabeledData", "DataSpec", "parse_data_spec", "is_labeled_spec",
           "sort_labels", "check_nonempty", "lm_windows", "make_lm_dataset",
           "make_mlm_dataset", "training_options"]
