"""Narrow fixes for upstream Keras bugs. Each names its issue; drop it when Keras fixes it.

keras-team/keras#20585: Keras 3 `model.fit` under `MultiWorkerMirroredStrategy` fails in
`keras/src/backend/tensorflow/trainer.py` (open since TF 2.16, still in Keras 3.15):
  1. `_maybe_symbolic_build` reduces the first *data batch* across workers
     (`strategy.reduce("MEAN", PerReplica)` -> "Attempt to convert a value (PerReplica ...)").
     Building only needs shapes, so we build from the local replica's batch.
  2. `reduce_per_replica` reduces scalar logs with `axis=0`
     ("Invalid reduction dimension 0 for input with 0 dimensions"); scalars need `axis=None`.
Both patches act only when the strategy is multi-worker, so every other path is untouched.
"""

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as _tf_trainer

_applied = False


def _is_multi_worker(strategy):
    return _tf_trainer._collective_all_reduce_multi_worker(strategy)


def _local_value(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def apply_multi_worker_fit_fix():
    """Patch Keras so `model.fit` works under MultiWorkerMirroredStrategy (idempotent)."""
    global _applied
    if _applied:
        return
    original_build = _tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = _tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and _is_multi_worker(strategy):
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(lambda v: _local_value(v, strategy), batch)
                break
            return original_build(self, data_batch=data_batch)
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            def _reduce(v):
                if isinstance(v, tf.distribute.DistributedValues) or tf.is_tensor(v):
                    if v.shape.rank == 0:
                        return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)
            return tree.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    _tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _tf_trainer.reduce_per_replica = reduce_per_replica
    _applied = True
