"""Data: sources and specs, which the tasks' data adapters (tfllm/tasks/*/data.py) build on.

    spec         what a --data value names; shared defaults
    tables       tsv/csv/jsonl rows with a held-out split (seeded, or sentence-disjoint)
    tfds_source  TFDS preparation offline, text feature and splits
    corpus       LM corpora (train/validation text of any spec)
    labeled      (text, label) rows for classification; texts may be (text, pair)
    parallel     (source, target) pairs for translation, with a held-out split
    windows      text to token windows, and the tf.data options of every `fit` pipeline
"""

from tfllm.data.corpus import Corpus
from tfllm.data.labeled import LabeledData, sort_labels
from tfllm.data.spec import DataSpec, is_labeled_spec, parse_data_spec
from tfllm.data.windows import check_nonempty, lm_windows, training_options

__all__ = ["Corpus", "LabeledData", "DataSpec", "parse_data_spec", "is_labeled_spec",
           "sort_labels", "check_nonempty", "lm_windows", "training_options"]
