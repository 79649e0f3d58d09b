"""Training: strategy choice, precision, callbacks, checkpoints and resume.

`train()` is what `tfllm train` runs. One "epoch" of `model.fit` is one evaluation
interval, so validation, the best checkpoint, metrics.jsonl and the BackupAndRestore
state (which Keras restores at epoch boundaries) all line up on the same steps.
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
from tfllm.tokenizers import placeholders
from tfllm.config import PRECISIONS, STRATEGIES, ConfigError, ModelConfig, get_preset
from tfllm.errors import DataError, RunDirError, TfllmError
from tfllm.untrusted import in_range

OBJECTIVES = ("clm", "mlm", "seq2seq")
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


# -- the run ------------------------------------------------------------------------------

def _steps_per_execution(eval_interval: int) -> int:
    # Several steps per host round trip cut Keras' per-step overhead; must divide the epoch.
    return math.gcd(eval_interval, 50)


def prepare_run_dir(out: str, resume: bool, overwrite: bool, inputs=()):
    """Check that `out` may be written, before any work: nothing is changed here.

    Returns:
        None to resume the run in `out`, else the publisher of the new run.
    """
    if resume:
        if not runs.is_run_dir(out):
            raise RunDirError(f"--resume: {out} is not a run directory to resume "
                              f"(no {runs.CONFIG}); start a new run without --resume")
        return None
    if os.path.isdir(out) and os.listdir(out) and runs.is_run_dir(out) and not overwrite:
        raise RunDirError(f"{out} already exists and is not empty; pass --resume to continue "
                          "it or --overwrite to replace it")
    return runs.new_run(out, overwrite, inputs, command="train")


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


def train(out: str, data: str, preset: str = "shakespeare-char", settings: TrainSettings = None,
          model_overrides: dict | None = None, text_feature: str | None = None,
          tfds_manual_dir: str | None = None, tfds_data_dir: str | None = None,
          resume: bool = False, overwrite: bool = False, verbose: int | str = "auto",
          strategy=None, objective: str = "clm", extra_callbacks=None,
          source_column: str | None = None, target_column: str | None = None,
          label_smoothing: float = 0.1, truncate: bool = False,
          protect_placeholders: bool = True) -> dict:
    """Pretrain a language model into the run directory `out`; returns the last metrics record.

    Args:
        out: run directory to create (or continue with `resume=True`).
        data: data spec, `tfds:NAME[:SPLIT]`, `text:GLOB` or a labeled table's text
            (`tsv:PATH`, `csv:PATH`, `jsonl:PATH`).
        preset: a preset name from `tfllm.config.PRESETS`.
        settings: `TrainSettings` (defaults if None).
        model_overrides: ModelConfig fields to change from the preset (e.g. dropout).
        text_feature, tfds_manual_dir, tfds_data_dir: see `tfllm.data.Corpus`.
        resume: continue a killed run from its last saved interval.
        overwrite: replace an existing run directory.
        verbose: Keras fit verbosity.
        strategy: an existing `tf.distribute.Strategy` (else created from settings).
        objective: "clm" (next-token prediction, causal presets), "mlm" (BERT's masked
            LM, bidirectional presets such as bert-mini) or "seq2seq" (translation:
            encoder-decoder presets such as transformer-mt-small, on parallel data).
        extra_callbacks: more Keras callbacks for `fit`, run after tfllm's own.
        source_column, target_column: seq2seq only: the two sides of the parallel data
            (see `tfllm.data.parallel.ParallelData`).
        label_smoothing: seq2seq only: of the cross-entropy (0.1, the Transformer's).
        truncate: seq2seq only: cut pairs longer than the context instead of failing.
        protect_placeholders: seq2seq only: train with format placeholders (`%s`,
            `{name}`) replaced by one sentinel token, which translation puts back
            (`tfllm.tokenizers.placeholders`); a model then keeps them far more reliably.

    Example:
        >>> train("runs/demo", "tfds:tiny_shakespeare", settings=TrainSettings(steps=100))  # doctest: +SKIP
    """
    from tfllm.data import Corpus, check_nonempty
    from tfllm.data.spec import data_paths
    from tfllm.tokenizers import SentencePieceTokenizer

    settings = settings or TrainSettings()
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    # Multi-worker strategies must exist before any other TF op runs.
    strategy = strategy or choose_strategy(settings.strategy, settings.tpu)
    output = prepare_run_dir(out, resume, overwrite,
                             data_paths(data, tfds_manual_dir, tfds_data_dir))

    requested = build_model_config(preset, model_overrides)
    seq2seq = objective == "seq2seq"
    if seq2seq or requested.is_seq2seq:
        if not (seq2seq and requested.is_seq2seq):
            raise ConfigError(
                f"preset {preset!r} is "
                f"{'an encoder-decoder' if requested.is_seq2seq else 'not an encoder-decoder'}"
                f"; --objective {objective} needs "
                f"{'an encoder-decoder preset (e.g. transformer-mt-small)' if seq2seq else 'a decoder or encoder preset'}")
        check_number("--label-smoothing", label_smoothing, low=0.0, high=0.99)
        if not target_column:
            raise ConfigError("--objective seq2seq needs --source-column and --target-column "
                              "(e.g. --source-column en --target-column fr)")
    elif requested.causal != (objective == "clm"):
        raise ConfigError(
            f"preset {preset!r} is a {'causal decoder' if requested.causal else 'bidirectional encoder'}"
            f"; --objective {objective} needs "
            f"{'a causal preset (e.g. shakespeare-char)' if objective == 'clm' else 'an encoder preset (e.g. bert-mini)'}")
    if resume:
        stored = runs.read_run_config(out)
        stored_model = ModelConfig.from_dict(stored["model"])
        if (stored.get("preset") != preset or
                stored_model.replace(vocab_size=requested.vocab_size) != requested):
            raise RunDirError(f"{out} was written by another model config (preset "
                              f"{stored.get('preset')!r}); resume it with the same --preset "
                              "and model options, or train into a new --out")
        if stored.get("objective", "clm") != objective:
            raise RunDirError(f"{out} was trained with --objective {stored.get('objective')}, "
                              f"not {objective}")
        if stored["data"]["spec"] != data:
            raise RunDirError(f"{out} was trained on {stored['data']['spec']!r}, not {data!r}")
    set_precision(settings.precision)
    keras.utils.set_random_seed(settings.seed)

    if seq2seq:
        from tfllm.data.parallel import ParallelData

        corpus = ParallelData(data, source_column, target_column, settings.seed,
                              tfds_manual_dir, tfds_data_dir)
        # A joint vocabulary of both sides, as the model sees them.
        sample_texts = (placeholders.protect(text) if protect_placeholders else text
                        for pair in corpus.train for text in pair)
    else:
        corpus = Corpus(data, text_feature, tfds_manual_dir, tfds_data_dir)
        sample_texts = corpus.sample_texts()
    tok_path = os.path.join(out, runs.TOKENIZER)
    if resume:
        tokenizer = SentencePieceTokenizer.load(tok_path)
    else:
        tokenizer = SentencePieceTokenizer.train(
            sample_texts, requested.tokenizer, requested.vocab_size,
            mask_token=objective == "mlm",
            user_symbols=[placeholders.SENTINEL] if seq2seq and protect_placeholders else ())
    model_config = requested.replace(vocab_size=tokenizer.vocab_size)
    seq_len = model_config.max_len
    train_pairs = val_pairs = None
    if seq2seq:
        from tfllm.data.seq2seq import encode_pairs

        train_pairs, cut = encode_pairs(corpus.train, tokenizer, seq_len, truncate,
                                        protect_placeholders)
        val_pairs, val_cut = encode_pairs(corpus.val, tokenizer, seq_len, truncate,
                                          protect_placeholders)
        if not val_pairs:
            raise DataError(f"{data} has too few pairs to hold some out for validation")
        if verbose:
            print(f"{len(train_pairs)} training pairs, {len(val_pairs)} validation pairs"
                  + (f"; {corpus.skipped_empty} rows with an empty side skipped"
                     if corpus.skipped_empty else "")
                  + (f"; {cut + val_cut} long rows cut (--truncate)" if cut + val_cut else ""))
    else:
        check_nonempty(corpus.train_texts(), tokenizer, seq_len, "training")
        check_nonempty(corpus.val_texts(), tokenizer, seq_len, "validation")

    with contextlib.ExitStack() as publishing:
        # Everything is checked: a new run is written in place when nothing is replaced (so
        # a killed one resumes), else beside the old one, which it replaces when done.
        run_dir = out if resume else publishing.enter_context(output.staging(in_place=True))
        diverged = _fit(run_dir, out, resume, tokenizer, model_config, preset, corpus,
                        settings, objective, seq2seq, label_smoothing, truncate,
                        protect_placeholders, strategy, verbose, extra_callbacks,
                        train_pairs, val_pairs)
    if diverged is not None:
        raise diverged
    records = read_metrics(out)
    return records[-1] if records else {}


def _fit(run_dir, out, resume, tokenizer, model_config, preset, corpus, settings, objective,
         seq2seq, label_smoothing, truncate, protect_placeholders, strategy, verbose,
         extra_callbacks, train_pairs, val_pairs):
    """Train into `run_dir` (`out` itself, or its staging sibling); returns the
    TrainingDivergedError to raise once the run is published, or None."""
    from tfllm.data import make_lm_dataset, make_mlm_dataset
    from tfllm.data.seq2seq import make_seq2seq_dataset
    from tfllm.models import CausalLM, MaskedLM, Seq2SeqLM

    seq_len = model_config.max_len
    if not resume:
        tokenizer.save(os.path.join(run_dir, runs.TOKENIZER))
        runs.write_run_config(run_dir, {
            "model": model_config.to_dict(), "preset": preset, "data": corpus.describe(),
            "training": dataclasses.asdict(settings), "objective": objective,
            "tokenizer": runs.TOKENIZER,
            **({"seq2seq": {"label_smoothing": label_smoothing, "truncate": truncate,
                            "protect_placeholders": protect_placeholders}}
               if seq2seq else {}),
        })

    replicas = strategy.num_replicas_in_sync
    global_batch = settings.batch_size * replicas
    # Seq2seq batches vary in width. XLA would compile one train step per width (measured
    # 23-27 s each for transformer-mt-small on 2 CPU cores, 9 widths) and fixed widths pad
    # 21% more than padding each batch to its longest pair (l10n-en-fr), so on CPUs and
    # GPUs a plain graph with dynamic widths trains more pairs per minute
    # (benchmarks/README.md). TPUs need static shapes.
    static_shapes = not seq2seq or isinstance(strategy, tf.distribute.TPUStrategy)
    if seq2seq:
        train_ds = make_seq2seq_dataset(train_pairs, tokenizer, seq_len, global_batch,
                                        training=True, seed=settings.seed,
                                        static_shapes=static_shapes)
        val_ds = make_seq2seq_dataset(val_pairs, tokenizer, seq_len, global_batch,
                                      training=False)
        # Real (unpadded) source and target tokens of an average step, for tokens/sec.
        tokens_per_step = global_batch * sum(len(s) + len(t) + 1 for s, t in train_pairs) \
            / len(train_pairs)
    else:
        make_dataset = make_lm_dataset if objective == "clm" else make_mlm_dataset
        train_ds = make_dataset(corpus.train_texts(), tokenizer, seq_len, global_batch,
                                training=True, seed=settings.seed)
        val_ds = make_dataset(corpus.val_texts(), tokenizer, seq_len, global_batch,
                              training=False, seed=settings.seed)
        tokens_per_step = global_batch * seq_len
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
        if objective == "clm":
            model = CausalLM.from_model_config(model_config, name="causal_lm")
        elif seq2seq:
            model = Seq2SeqLM.from_model_config(model_config, name="seq2seq_lm",
                                                label_smoothing=label_smoothing,
                                                protect_placeholders=protect_placeholders,
                                                pad_id=tokenizer.pad_id)
        else:
            model = MaskedLM.from_model_config(model_config, name="masked_lm")
        model.compile(learning_rate=settings.lr, warmup_steps=settings.warmup_steps,
                      total_steps=settings.steps, min_lr_ratio=settings.min_lr_ratio,
                      weight_decay=settings.weight_decay,
                      jit_compile=(settings.jit_compile and jit_supported(strategy)
                                   and static_shapes),
                      steps_per_execution=spe)

    previous = read_metrics(run_dir) if resume else []
    best_so_far = min((r["val_loss"] for r in previous if r.get("val_loss") is not None),
                      default=None)
    metrics_logger = MetricsLogger(os.path.join(run_dir, runs.METRICS), settings.eval_interval,
                                   tokens_per_step)
    guard = DivergenceGuard(settings.eval_interval,
                            initial_step=_backup_step(run_dir, settings.eval_interval))
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        guard,
        FiniteBackupAndRestore(guard, os.path.join(run_dir, runs.BACKUP), save_freq="epoch",
                               delete_checkpoint=False),
        FiniteModelCheckpoint(guard, os.path.join(run_dir, runs.BEST_WEIGHTS),
                              monitor="val_loss", save_best_only=True,
                              save_weights_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.TensorBoard(os.path.join(run_dir, runs.LOGS), update_freq="epoch",
                                    write_graph=False),
        metrics_logger,
        *(extra_callbacks or []),
    ]
    epochs = settings.steps // settings.eval_interval
    with warnings.catch_warnings():
        # Validation is one exact pass over a finite set, which Keras reports as running
        # out of data.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        model.fit(train_ds, epochs=epochs, steps_per_epoch=settings.eval_interval,
                  validation_data=val_ds, validation_steps=val_steps,
                  callbacks=callbacks, verbose=verbose)
    if guard.diverged:
        # The run keeps its last finite state and resumes from it, like a killed one.
        return TrainingDivergedError(out, settings.lr, guard.last_good_step,
                                     guard.diverged_step)
    model.save(os.path.join(run_dir, runs.MODEL))
    return None


def evaluate(run_dir: str, data: str | None = None, batch_size: int | None = None,
             eval_steps: int | None = None, weights: str = "final", text_feature=None,
             tfds_manual_dir=None, tfds_data_dir=None) -> dict:
    """Validation loss and perplexity of a language model run (causal or masked).

    A masked LM is scored on its masked tokens (a fixed draw of BERT's masking), and
    also reports the accuracy of predicting them.

    Args:
        run_dir: a run directory.
        data: data spec to evaluate on (default: the run's own validation split).
        batch_size: evaluation batch (default: the run's training batch size).
        eval_steps: evaluate at most this many batches (default: all).
        weights: "final" or "best".

    Returns:
        {"loss", "perplexity", "tokens", "data"} (+ "accuracy" for masked LMs).
    """
    from tfllm.data import Corpus, check_nonempty, make_lm_dataset, make_mlm_dataset
    from tfllm.models import Perplexity

    stored = runs.read_run_config(run_dir)
    objective = stored.get("objective", "clm")
    if objective == "seq2seq":
        raise TfllmError(f"{run_dir} is a translation run: score it with "
                         "tfllm.translation_metrics.evaluate_translation (tfllm evaluate "
                         "does)")
    if objective not in OBJECTIVES:
        raise TfllmError(f"{run_dir} is a {objective!r} run, not a language model")
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
    seq_len = model.backbone.max_len
    check_nonempty(corpus.val_texts(), tokenizer, seq_len, "validation")
    batch_size = batch_size or (stored.get("training") or {}).get("batch_size", 12)
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if objective == "clm":
        ds = make_lm_dataset(corpus.val_texts(), tokenizer, seq_len, batch_size, training=False)
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), metrics=[Perplexity()], jit_compile=True)
    else:
        ds = make_mlm_dataset(corpus.val_texts(), tokenizer, seq_len, batch_size,
                              training=False)
        model.compile(optimizer="sgd", jit_compile=True)
    if eval_steps:
        ds = ds.take(eval_steps)
    with warnings.catch_warnings():
        # A finite evaluation set ends by running out of data, which Keras warns about.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        results = model.evaluate(ds, verbose=0, return_dict=True)
    if objective == "clm":
        tokens = sum(int(tf.size(y)) for _, y in ds)
    else:
        tokens = int(sum(float(tf.reduce_sum(w)) for _, _, w in ds))
    # Perplexity accumulates over all tokens; loss is the same token-weighted mean.
    out = {"loss": round(math.log(float(results["perplexity"])), 6),
           "perplexity": round(float(results["perplexity"]), 4),
           "tokens": tokens, "data": data}
    if objective == "mlm":
        out["accuracy"] = round(float(results["accuracy"]), 4)
    return out
