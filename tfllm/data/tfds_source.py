"""Preparing a TFDS dataset offline and finding its text feature and splits.

Both LM corpora and labeled data read TFDS datasets through `TfdsSource`.
"""

from __future__ import annotations

import sys

import tensorflow as tf

from tfllm.data.spec import VAL_FRACTION
from tfllm.errors import DataError


class TfdsSource:
    """A prepared TFDS dataset: its builder, text feature, and train/validation splits.

    The validation split is the dataset's own (validation, else test), or the last 10% of
    train when it has neither.

    Args:
        name: the TFDS dataset name (e.g. "tiny_shakespeare", "glue/sst2").
        split: the training split (default "train").
        text_feature: the text feature (default: the only text feature).
        manual_dir: directory with the dataset's source files, for offline preparation.
        data_dir: where TFDS prepares datasets.
        require_text: find the text feature (False: the caller picks features itself,
            as parallel data does).

    Example:
        >>> source = TfdsSource("tiny_shakespeare")  # doctest: +SKIP
        >>> source.texts(source.train_split)  # doctest: +SKIP
    """

    def __init__(self, name, split=None, text_feature=None, manual_dir=None, data_dir=None,
                 require_text=True):
        import tensorflow_datasets as tfds

        self.name = name
        self.text_feature = text_feature
        try:
            builder = tfds.builder(self.name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"unknown TFDS dataset {self.name!r}: {str(e).splitlines()[0]}") from e
        if not builder.is_prepared():
            if not sys.stderr.isatty():
                # tqdm bars redrawn into a log or a pipe are dozens of garbled lines.
                tfds.disable_progress_bar()
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as e:  # network errors, missing manual files: many types
                raise DataError(
                    f"could not prepare TFDS dataset {self.name!r} "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, "
                    "put its source files in a directory and pass --tfds-manual-dir DIR "
                    "or set TFDS_MANUAL_DIR") from e
        self.builder = builder
        features = builder.info.features
        text_features = [k for k, v in features.items()
                         if isinstance(v, tfds.features.Text)
                         or (getattr(v, "dtype", None) == tf.string and not v.shape)]
        if not require_text:
            pass
        elif self.text_feature:
            if self.text_feature not in features:
                raise DataError(f"TFDS dataset {self.name!r} has no feature "
                                f"{self.text_feature!r}; features: {sorted(features)}")
        elif len(text_features) == 1:
            self.text_feature = text_features[0]
        else:
            raise DataError(f"TFDS dataset {self.name!r} has "
                            f"{'no' if not text_features else 'several'} text features "
                            f"({sorted(text_features) or sorted(features)}); "
                            "pick one with --text-feature")
        splits = builder.info.splits
        self.train_split = split or "train"
        if self.train_split.split("[")[0] not in splits:
            raise DataError(f"TFDS dataset {self.name!r} has no split "
                            f"{self.train_split!r}; splits: {sorted(splits)}")
        for candidate in ("validation", "test"):
            if candidate in splits and candidate != self.train_split:
                self.val_split = candidate
                break
        else:
            if splits[self.train_split].num_examples < 2:
                raise DataError(f"TFDS dataset {self.name!r} has no validation split and "
                                "too few examples to hold some out")
            pct = int(VAL_FRACTION * 100)
            self.val_split = f"{self.train_split}[-{pct}%:]"
            self.train_split = f"{self.train_split}[:-{pct}%]"

    def texts(self, split) -> tf.data.Dataset:
        """The text feature of `split` as a dataset of scalar strings."""
        ds = self.builder.as_dataset(split=split, shuffle_files=False)
        return ds.map(lambda ex: ex[self.text_feature], num_parallel_calls=tf.data.AUTOTUNE)
