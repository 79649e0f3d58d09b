"""Training, written once for every task: strategy choice, precision, the run directory
(overwrite, resume, publishing), the one fit loop (`fit`: callbacks, metrics.jsonl,
TensorBoard, backup and resume, divergence guard, best checkpoint, early stopping, time
budget), pretraining (`pretrain`) and language-model evaluation (`evaluate_windows`)
driven by a task's hooks (tfllm/tasks/).

One "epoch" of `model.fit` is one evaluation interval, so validation, the best checkpoint,
metrics.jsonl and the backup state (which Keras restores at epoch boundaries) all line up
on the same steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings

import keras
import tensorflow as tf

from tfllm import runs
from tfllm.config import PRECISIONS, STRATEGIES, ConfigError, ModelConfig, get_preset
from tfllm.errors import RunDirError, TfllmError
from tfllm.untrusted import in_range

# Largest peak learning rate accepted: AdamW steps above it only diverge.
MAX_LR = 1.0


class TrainingDivergedError(TfllmError):
    """The loss or the weights stopped being finite; nothing of the diverged part was saved."""

    def __init__(self, out, lr, last_good_step, diverged_step):
        where = f"in the interval ending at step {diverged_step}" if diverged_step else ""
        if last_good_step:
            kept = (f"nothing from it was saved: the last finite state (step {last_good_step}) "
                    f"is in {os.path.join(out, runs.BACKUP)}; continue from it with a lower "
                    f"learning rate: tfllm train --resume --out {out} --lr {lr / 10:g}")
        else:
            kept = (f"no finite state was saved; start again with a lower learning rate: "
                    f"--lr {lr / 10:g} --overwrite")
        super().__init__(f"training diverged (the loss or the weights became NaN or "
                         f"infinite) {where}; {kept}")
        self.last_good_step = last_good_step


class StrategyError(TfllmError):
    """The requested distribution strategy cannot be created here."""


@dataclasses.dataclass
class TrainSettings:
    """Everything about a training run that is not the model's shape.

    Args:
        steps: optimizer steps in total.
        batch_size: examples per replica per step (the global batch scales with replicas).
        lr: peak learning rate.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final learning rate / peak (cosine decay).
        weight_decay: AdamW decoupled weight decay (2-D+ weights only).
        eval_interval: steps between evaluations, checkpoints and metrics lines.
        eval_steps: at most this many validation batches per evaluation.
        seed: seed of initialization, data order and dropout.
        strategy: one of STRATEGIES.
        tpu: TPU name/address for the TPU strategy (default $TPU_NAME).
        precision: one of PRECISIONS.
        jit_compile: compile train steps with XLA (measured faster on CPU); seq2seq runs
            train without it except on TPUs (their batches vary in width).
    """

    steps: int = 2000
    batch_size: int = 12
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    eval_interval: int = 250
    eval_steps: int = 100
    seed: int = 1337
    strategy: str = "auto"
    tpu: str | None = None
    precision: str = "float32"
    jit_compile: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_interval", "eval_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        check_number("--lr", self.lr, low=0.0, high=MAX_LR, low_open=True)
        check_number("--min-lr-ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_number("--weight-decay", self.weight_decay, low=0.0, high=1.0)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be an integer >= 0, "
                              f"got {self.warmup_steps!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of "
                              f"{', '.join(STRATEGIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of "
                              f"{', '.join(PRECISIONS)}")
        if self.eval_interval > self.steps:
            self.eval_interval = self.steps
        if self.steps % self.eval_interval:
            raise ConfigError(f"--steps ({self.steps}) must be a multiple of --eval-interval "
                              f"({self.eval_interval})")


def check_number(name, value, low=None, high=None, low_open=False):
    """Raise ConfigError unless `value` is a finite number in [low, high] ((low, high] if
    `low_open`); the message names the option and the range."""
    if not in_range(value, low, high, low_open):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a finite number in {bracket}{lo}, {hi}], "
                          f"got {value!r}")


# -- strategy and precision ---------------------------------------------------------------

def _tf_config_workers() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        return len(json.loads(raw).get("cluster", {}).get("worker", []))
    except (json.JSONDecodeError, AttributeError) as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {e}") from e


def resolve_strategy_name(name: str = "auto", tpu: str | None = None) -> str:
    """What `auto` means here: tpu if one is named, multiworker if TF_CONFIG has >1 worker,
    mirrored with >1 GPU, default otherwise."""
    if name != "auto":
        return name
    if tpu or os.environ.get("TPU_NAME"):
        return "tpu"
    if _tf_config_workers() > 1:
        return "multiworker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def choose_strategy(name: str = "auto", tpu: str | None = None, devices=None):
    """Create the `tf.distribute` strategy for `name` (see `resolve_strategy_name`).

    Args:
        name: one of STRATEGIES.
        tpu: TPU name or grpc address (default $TPU_NAME).
        devices: device list for "mirrored" (default: all GPUs, else the CPU).

    Example:
        >>> choose_strategy("default").num_replicas_in_sync
        1
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    name = resolve_strategy_name(name, tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if _tf_config_workers() < 1:
            raise StrategyError("--strategy multiworker needs TF_CONFIG naming the cluster's "
                                "workers and this process's task")
        from tfllm.keras_fixes import apply_multi_worker_fit_fix

        apply_multi_worker_fit_fix()
        return tf.distribute.MultiWorkerMirroredStrategy()
    tpu = tpu or os.environ.get("TPU_NAME")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise StrategyError(f"cannot reach a TPU (--tpu {tpu!r}): "
                            f"{str(e).splitlines()[0]}") from e
    return tf.distribute.TPUStrategy(resolver)


def jit_supported(strategy) -> bool:
    """False where XLA cannot compile the step: replicas on several (logical) CPU devices.

    XLA refuses variables placed on another CPU device than the one it compiles for
    (https://www.tensorflow.org/xla/known_issues); GPUs and TPUs are fine.
    """
    if strategy.num_replicas_in_sync < 2 or not hasattr(strategy.extended, "worker_devices"):
        return True
    return not any("CPU" in d.upper() for d in strategy.extended.worker_devices)


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy; mixed_float16 gets loss scaling from `compile`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of "
                          f"{', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(precision)


# -- callbacks ----------------------------------------------------------------------------

def weights_finite(model) -> bool:
    """True when every weight of `model` is finite (checked before anything is saved)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v.value))) for v in model.weights
               if "float" in str(v.dtype))


class DivergenceGuard(keras.callbacks.Callback):
    """Notices a diverged interval first, so that nothing saves non-finite weights.

    Listed before the saving callbacks: at the end of an interval whose loss or weights
    are not finite it sets `diverged`, and `FiniteBackupAndRestore` / `FiniteModelCheckpoint`
    then keep the last finite state instead of writing this one. `last_good_step` is the
    step of the last interval saved.
    """

    def __init__(self, steps_per_epoch, initial_step=0):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.diverged = False
        self.last_good_step = initial_step
        self.diverged_step = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        losses = [logs.get(k) for k in ("loss", "val_loss") if logs.get(k) is not None]
        finite = all(math.isfinite(float(x)) for x in losses) and weights_finite(self.model)
        step = (epoch + 1) * self.steps_per_epoch
        if finite and not self.diverged:
            self.last_good_step = step
            return
        self.diverged = True
        self.diverged_step = self.diverged_step or step
        self.model.stop_training = True


class _UnlessDiverged:
    """Mixin for a saving callback: its end-of-interval save is skipped once `guard` (a
    `DivergenceGuard` listed before it) has seen non-finite values."""

    def __init__(self, guard, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if not self.guard.diverged:
            super().on_epoch_end(epoch, logs)


class FiniteBackupAndRestore(_UnlessDiverged, keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never overwrites the last finite state with a diverged one."""


class FiniteModelCheckpoint(_UnlessDiverged, keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that never saves a diverged interval's weights."""


class MetricsLogger(keras.callbacks.Callback):
    """Appends one JSON line per evaluation interval to metrics.jsonl.

    Fields: step, loss, val_loss, perplexity, val_perplexity, lr, tokens_per_sec, elapsed_sec,
    and any other metric in the logs (e.g. accuracy, val_accuracy).
    """

    def __init__(self, path, steps_per_epoch, tokens_per_step):
        super().__init__()
        self.path = path
        self.steps_per_epoch = steps_per_epoch
        self.tokens_per_step = tokens_per_step
        self.history = []

    def on_train_begin(self, logs=None):
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        elapsed = time.time() - self._epoch_start
        record = {
            "step": (epoch + 1) * self.steps_per_epoch,
            "loss": _float(logs.get("loss")),
            "val_loss": _float(logs.get("val_loss")),
            "perplexity": _float(logs.get("perplexity")),
            "val_perplexity": _float(logs.get("val_perplexity")),
            "lr": _float(self.model.optimizer.learning_rate),
            "tokens_per_sec": round(self.steps_per_epoch * self.tokens_per_step / elapsed, 1),
            "elapsed_sec": round(time.time() - self._start, 2),
        }
        # Task metrics beyond the LM ones (a classifier's accuracy) are logged as well.
        for key, value in logs.items():
            if key not in record and key not in ("learning_rate",):
                record[key] = _float(value)
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")


def _float(x):
    """A metric for JSON: rounded, and null where it is not finite (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, runs.METRICS)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- the run directory --------------------------------------------------------------------

def run_output(out: str, resume: bool, overwrite: bool, inputs=(), command: str = "train",
               resumable: bool = True):
    """Check that `out` may be written, before any work: nothing is changed here.

    Returns:
        None to continue the run in `out` (`resume`), else the publisher of the new run
        (`tfllm.publish.Output`), which `writing_run` writes through.
    """
    if resume:
        if not runs.is_run_dir(out):
            raise RunDirError(f"--resume: {out} is not a run directory to resume "
                              f"(no {runs.CONFIG}); start a new run without --resume")
        return None
    if resumable and os.path.isdir(out) and os.listdir(out) and runs.is_run_dir(out) and \
            not overwrite:
        raise RunDirError(f"{out} already exists and is not empty; pass --resume to continue "
                          "it or --overwrite to replace it")
    return runs.new_run(out, overwrite, inputs, command=command)


@contextlib.contextmanager
def writing_run(output, out: str):
    """Where a run is written: `out` itself when it is resumed (`output` None) or when
    nothing is replaced (in place, so that a killed run resumes), else a staging sibling
    that replaces the old run when the block ends without an error."""
    if output is None:
        yield out
        return
    with output.staging(in_place=True) as run_dir:
        yield run_dir


# -- the one fit loop ---------------------------------------------------------------------

def _steps_per_execution(eval_interval: int) -> int:
    # Several steps per host round trip cut Keras' per-step overhead; must divide the epoch.
    return math.gcd(eval_interval, 50)


class TimeBudget(keras.callbacks.Callback):
    """Stop `fit` once `minutes` have passed (checked after every execution)."""

    def __init__(self, minutes):
        super().__init__()
        self.seconds = minutes * 60.0
        self.stopped = False

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self.stopped = False

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self._start > self.seconds:
            self.model.stop_training = True
            self.stopped = True


@dataclasses.dataclass
class FitResult:
    """What `fit` saw: Keras' history, the divergence guard (`guard.diverged`,
    `guard.last_good_step`), whether the time budget stopped it, and its seconds."""

    history: dict
    guard: "DivergenceGuard"
    stopped_by_time: bool
    seconds: float


def fit(model, train_ds, val_ds, run_dir: str, *, interval: int, epochs: int,
        tokens_per_step: float, checkpoint=None, backup=None, early_stopping=None,
        max_minutes: float | None = None, initial_epoch: int = 0, initial_step: int = 0,
        val_steps: int | None = None, extra_callbacks=(), verbose="auto",
        ignore_warnings=()) -> FitResult:
    """The one fit loop of every task: `model.fit` over `epochs` intervals of `interval`
    steps, with tfllm's callbacks, in this order:

    TerminateOnNaN; a `DivergenceGuard` (an interval whose loss or weights are not finite
    stops the run, and nothing saves it); `backup` (resume state); `checkpoint` (the best
    model so far); EarlyStopping; TensorBoard (run_dir/logs); a `MetricsLogger`
    (run_dir/metrics.jsonl); a `TimeBudget`; `extra_callbacks`.

    Args:
        model: a compiled Keras model.
        train_ds, val_ds: the datasets (`val_steps`: validation batches when `val_ds`
            repeats).
        run_dir: the run directory being written.
        interval: steps per evaluation interval (one Keras epoch).
        epochs: intervals to run in all (`initial_epoch` of them already done).
        tokens_per_step: for the metrics' tokens/s.
        checkpoint: a function of the guard returning the callback that keeps the best
            model (it must not save a diverged interval: the guard says).
        backup: a function of the guard returning the callback that writes resume state.
        early_stopping: `(monitor, mode, patience)`, or None.
        max_minutes: stop after this many minutes (the best model is kept).
        initial_step: the step the resumed state holds (for the guard's messages).
        ignore_warnings: message patterns of Keras warnings that are expected.

    Example:
        >>> result = fit(model, train_ds, val_ds, "runs/x", interval=250, epochs=8,  # doctest: +SKIP
        ...              tokens_per_step=768)
    """
    guard = DivergenceGuard(interval, initial_step=initial_step)
    budget = TimeBudget(max_minutes) if max_minutes else None
    callbacks = [keras.callbacks.TerminateOnNaN(), guard]
    if backup is not None:
        callbacks.append(backup(guard))
    if checkpoint is not None:
        callbacks.append(checkpoint(guard))
    if early_stopping is not None:
        monitor, mode, patience = early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                       patience=patience))
    callbacks += [keras.callbacks.TensorBoard(os.path.join(run_dir, runs.LOGS),
                                              update_freq="epoch", write_graph=False),
                  MetricsLogger(os.path.join(run_dir, runs.METRICS), interval,
                                tokens_per_step),
                  *([budget] if budget else []), *extra_callbacks]
    started = time.time()
    with warnings.catch_warnings():
        # Validation is one exact pass over a finite set, which Keras reports as running
        # out of data.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        for pattern in ignore_warnings:
            warnings.filterwarnings("ignore", message=pattern)
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=interval,
                            validation_data=val_ds, validation_steps=val_steps,
                            callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch)
    return FitResult(history.history, guard, bool(budget and budget.stopped),
                     time.time() - started)


def best_weights(path: str, best_so_far=None):
    """A `fit` checkpoint: the weights at the lowest validation loss, in `path`."""
    return lambda guard: FiniteModelCheckpoint(
        guard, path, monitor="val_loss", save_best_only=True, save_weights_only=True,
        initial_value_threshold=best_so_far)


def keras_backup(run_dir: str):
    """A `fit` backup: Keras' BackupAndRestore in run_dir/backup, never of a diverged
    interval."""
    return lambda guard: FiniteBackupAndRestore(guard, os.path.join(run_dir, runs.BACKUP),
                                                save_freq="epoch", delete_checkpoint=False)


def _backup_step(out: str, eval_interval: int) -> int:
    """The step the resumable checkpoint holds (0 if none)."""
    path = os.path.join(out, runs.BACKUP, "training_metadata.json")
    try:
        with open(path) as f:
            return int(json.load(f).get("epoch", 0)) * eval_interval
    except (OSError, ValueError, AttributeError):
        return 0


def build_model_config(preset: str, overrides: dict | None = None) -> ModelConfig:
    cfg = get_preset(preset)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    return cfg.replace(**overrides) if overrides else cfg


# -- pretraining ----------------------------------------------------------------------------

def pretrain(task, out: str, data: str, preset: str, settings: TrainSettings = None,
             model_overrides: dict | None = None, text_feature: str | None = None,
             tfds_manual_dir: str | None = None, tfds_data_dir: str | None = None,
             resume: bool = False, overwrite: bool = False, verbose: int | str = "auto",
             strategy=None, extra_callbacks=None) -> dict:
    """Pretrain a model into the run directory `out` the way `task` says (its pretraining
    hooks: `tfllm.tasks.lm`, `mlm`, `translate`); returns the last metrics record.

    The task's hooks: `objective` (stored in config.json), `check_preset(config, preset)`,
    `matches(stored_config)`, `read(data, settings, text_feature, tfds_manual_dir,
    tfds_data_dir)` -> its data, `tokenizer_texts(data)`, `tokenizer_options()`,
    `prepare(data, tokenizer, max_len, verbose)`, `static_shapes(strategy)`,
    `datasets(data, tokenizer, max_len, global_batch, seed, static_shapes)` ->
    (train, val, tokens per step), `build(model_config, tokenizer)` -> a model, and
    `run_config()` -> more config.json entries.

    Args: as `tfllm.tasks.train`.
    """
    from tfllm.data.spec import data_paths
    from tfllm.tokenizers import SentencePieceTokenizer

    settings = settings or TrainSettings()
    # Multi-worker strategies must exist before any other TF op runs.
    strategy = strategy or choose_strategy(settings.strategy, settings.tpu)
    output = run_output(out, resume, overwrite, data_paths(data, tfds_manual_dir, tfds_data_dir))
    requested = build_model_config(preset, model_overrides)
    task.check_preset(requested, preset)
    if resume:
        stored = runs.read_run_config(out)
        stored_model = ModelConfig.from_dict(stored["model"])
        if (stored.get("preset") != preset or
                stored_model.replace(vocab_size=requested.vocab_size) != requested):
            raise RunDirError(f"{out} was written by another model config (preset "
                              f"{stored.get('preset')!r}); resume it with the same --preset "
                              "and model options, or train into a new --out")
        if not task.matches(stored):
            raise RunDirError(f"{out} was trained with --objective {stored.get('objective')}, "
                              f"not {task.objective}")
        if stored["data"]["spec"] != data:
            raise RunDirError(f"{out} was trained on {stored['data']['spec']!r}, not {data!r}")
    set_precision(settings.precision)
    keras.utils.set_random_seed(settings.seed)

    source = task.read(data, settings, text_feature, tfds_manual_dir, tfds_data_dir)
    if resume:
        tokenizer = SentencePieceTokenizer.load(os.path.join(out, runs.TOKENIZER))
    else:
        tokenizer = SentencePieceTokenizer.train(task.tokenizer_texts(source),
                                                 requested.tokenizer, requested.vocab_size,
                                                 **task.tokenizer_options())
    model_config = requested.replace(vocab_size=tokenizer.vocab_size)
    task.prepare(source, tokenizer, model_config.max_len, verbose)
    with writing_run(output, out) as run_dir:
        # Everything is checked: a new run is written in place when nothing is replaced (so
        # a killed one resumes), else beside the old one, which it replaces when done.
        if not resume:
            tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
            runs.write_run_config(run_dir, {
                "model": model_config.to_dict(), "preset": preset, "data": source.describe(),
                "training": dataclasses.asdict(settings), "objective": task.objective,
                "tokenizer": runs.TOKENIZER, **task.run_config()})
        diverged = _pretrain_fit(task, run_dir, out, resume, tokenizer, model_config, source,
                                 settings, strategy, verbose, extra_callbacks)
    if diverged is not None:
        raise diverged
    records = read_metrics(out)
    return records[-1] if records else {}


def _pretrain_fit(task, run_dir, out, resume, tokenizer, model_config, source, settings,
                  strategy, verbose, extra_callbacks):
    """Build, compile and fit the task's model into `run_dir`; returns the
    TrainingDivergedError to raise once the run is published, or None."""
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.batch_size * replicas
    static_shapes = task.static_shapes(strategy)
    train_ds, val_ds, tokens_per_step = task.datasets(
        source, tokenizer, model_config.max_len, global_batch, settings.seed, static_shapes)
    val_ds = val_ds.take(settings.eval_steps)
    spe = _steps_per_execution(settings.eval_interval)
    lockstep = (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)
    if isinstance(strategy, lockstep):
        # Workers must run the same number of steps (and TPUs static shapes): a repeated
        # stream with a fixed count. Keras runs validation in whole executions of
        # steps_per_execution, so the count is a multiple of it, or batches would be
        # counted twice.
        val_steps = sum(1 for _ in val_ds)
        val_steps = max(spe, val_steps // spe * spe)
        val_ds = val_ds.repeat()
    else:
        val_steps = None  # one exact pass over the held-out batches

    with strategy.scope():
        model = task.build(model_config, tokenizer)
        model.compile(learning_rate=settings.lr, warmup_steps=settings.warmup_steps,
                      total_steps=settings.steps, min_lr_ratio=settings.min_lr_ratio,
                      weight_decay=settings.weight_decay,
                      jit_compile=(settings.jit_compile and jit_supported(strategy)
                                   and static_shapes),
                      steps_per_execution=spe)

    previous = read_metrics(run_dir) if resume else []
    best_so_far = min((r["val_loss"] for r in previous if r.get("val_loss") is not None),
                      default=None)
    result = fit(model, train_ds, val_ds, run_dir, interval=settings.eval_interval,
                 epochs=settings.steps // settings.eval_interval,
                 tokens_per_step=tokens_per_step, val_steps=val_steps,
                 backup=keras_backup(run_dir),
                 checkpoint=best_weights(os.path.join(run_dir, runs.BEST_WEIGHTS),
                                         best_so_far),
                 initial_step=_backup_step(run_dir, settings.eval_interval),
                 extra_callbacks=extra_callbacks or (), verbose=verbose)
    if result.guard.diverged:
        # The run keeps its last finite state and resumes from it, like a killed one.
        return TrainingDivergedError(out, settings.lr, result.guard.last_good_step,
                                     result.guard.diverged_step)
    model.save(os.path.join(run_dir, runs.MODEL))
    return None


class TextPretraining:
    """`pretrain` hooks of tasks that learn from token windows of a text corpus (lm, mlm):
    a subclass sets `objective` and `make_dataset(texts, tokenizer, max_len, batch_size,
    training, seed)` and adds `check_preset` and `build`."""

    objective = ""

    def matches(self, stored) -> bool:
        return stored.get("objective") == self.objective

    def read(self, data, settings, text_feature, tfds_manual_dir, tfds_data_dir):
        from tfllm.data import Corpus

        return Corpus(data, text_feature, tfds_manual_dir, tfds_data_dir)

    def tokenizer_texts(self, corpus):
        return corpus.sample_texts()

    def tokenizer_options(self) -> dict:
        return {}

    def prepare(self, corpus, tokenizer, max_len, verbose):
        from tfllm.data import check_nonempty

        check_nonempty(corpus.train_texts(), tokenizer, max_len, "training")
        check_nonempty(corpus.val_texts(), tokenizer, max_len, "validation")

    def static_shapes(self, strategy) -> bool:
        return True

    def datasets(self, corpus, tokenizer, max_len, global_batch, seed, static_shapes):
        train = self.make_dataset(corpus.train_texts(), tokenizer, max_len, global_batch,
                                  training=True, seed=seed)
        val = self.make_dataset(corpus.val_texts(), tokenizer, max_len, global_batch,
                                training=False, seed=seed)
        return train, val, global_batch * max_len

    def run_config(self) -> dict:
        return {}


# -- evaluating a language model ----------------------------------------------------------

class CausalWindows:
    """`evaluate_windows` hooks of a causal LM: next-token loss over token windows (the lm
    and chat tasks score their runs so)."""

    @staticmethod
    def eval_dataset(texts, tokenizer, max_len, batch_size):
        from tfllm.data.windows import make_lm_dataset

        return make_lm_dataset(texts, tokenizer, max_len, batch_size, training=False)

    @staticmethod
    def compile_eval(model):
        from tfllm.models import Perplexity

        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), metrics=[Perplexity()], jit_compile=True)

    @staticmethod
    def count_tokens(ds) -> int:
        return sum(int(tf.size(y)) for _, y in ds)

    @staticmethod
    def eval_fields(results) -> dict:
        return {}


def evaluate_windows(task, run_dir: str, data: str | None = None, batch_size: int | None = None,
                     eval_steps: int | None = None, weights: str = "final", text_feature=None,
                     tfds_manual_dir=None, tfds_data_dir=None) -> dict:
    """Validation loss and perplexity of a language model run on token windows of text,
    the way `task` scores them (its hooks `eval_dataset(texts, tokenizer, max_len, batch)`,
    `compile_eval(model)`, `count_tokens(ds)` and `eval_fields(results)`).

    Args:
        run_dir: a run directory.
        data: data spec to evaluate on (default: the run's own validation split).
        batch_size: evaluation batch (default: the run's training batch size).
        eval_steps: evaluate at most this many batches (default: all).
        weights: "final" or "best".

    Returns:
        {"loss", "perplexity", "tokens", "data", ...the task's fields}.
    """
    from tfllm.data import Corpus, check_nonempty

    stored = runs.read_run_config(run_dir)
    # Fixed masks for every evaluation. Seeded first: reseeding later invalidates the
    # tokenizer's kernel resources.
    keras.utils.set_random_seed(0)
    model = runs.load(run_dir, weights=weights)
    tokenizer = model.tokenizer
    if data is None:
        if not stored.get("data"):
            raise TfllmError(f"{run_dir} has no data of its own (an imported model?); "
                             "pass --data tfds:NAME or --data text:GLOB")
        data = stored["data"]["spec"]
        text_feature = text_feature or stored["data"].get("text_feature")
    corpus = Corpus(data, text_feature, tfds_manual_dir, tfds_data_dir)
    max_len = model.backbone.max_len
    check_nonempty(corpus.val_texts(), tokenizer, max_len, "validation")
    batch_size = batch_size or (stored.get("training") or {}).get("batch_size", 12)
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    ds = task.eval_dataset(corpus.val_texts(), tokenizer, max_len, batch_size)
    task.compile_eval(model)
    if eval_steps:
        ds = ds.take(eval_steps)
    with warnings.catch_warnings():
        # A finite evaluation set ends by running out of data, which Keras warns about.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        results = model.evaluate(ds, verbose=0, return_dict=True)
    # Perplexity accumulates over all tokens; loss is the same token-weighted mean.
    return {"loss": round(math.log(float(results["perplexity"])), 6),
            "perplexity": round(float(results["perplexity"]), 4),
            "tokens": task.count_tokens(ds), "data": data, **task.eval_fields(results)}


def print_window_scores(task, args) -> dict:
    """`tfllm evaluate` of a run scored by `evaluate_windows` with `task`'s hooks: print the
    figures, then the result as a JSON line."""
    result = evaluate_windows(task, args.run, args.data, args.batch_size, args.eval_steps,
                              args.weights, args.text_feature, args.tfds_manual_dir,
                              args.tfds_data_dir)
    print("\n".join(window_score_lines(result)))
    print(json.dumps(result))
    return result


def window_score_lines(result: dict) -> list[str]:
    """The lines `tfllm evaluate` prints of an `evaluate_windows` result."""
    lines = [f"data: {result['data']}  tokens: {result['tokens']}",
             f"validation loss: {result['loss']:.4f}", f"perplexity: {result['perplexity']:.3f}"]
    if "accuracy" in result:
        lines.append(f"masked-token accuracy: {result['accuracy']:.4f}")
    return lines
