"""Chat and instruction fine-tuning: `tfllm finetune --task chat`, with or without LoRA.

A chat run directory holds config.json (`"objective": "chat"`, the chat template, the
base run and the LoRA settings), the tokenizer files, metrics.jsonl and logs/, and then
either `adapter.safetensors` (LoRA: only the adapter; the base run is loaded and checked
by its weights' fingerprint) or `model.keras` (full fine-tuning). `tfllm.runs.load`
returns a plain model for both (the adapter added into the base's kernels).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import keras

from tfllm import publish, runs
from tfllm.config import ConfigError
from tfllm.errors import DataError, RunDirError, TfllmError

ADAPTER = runs.ADAPTER
BEST_ADAPTER = "best.adapter.safetensors"


@dataclasses.dataclass
class ChatSettings:
    """Settings of a chat fine-tuning run.

    Args:
        steps: optimizer steps (default: `epochs` passes over the training rows).
        epochs: passes over the training rows when `steps` is not given.
        batch_size: conversations per step.
        lr: peak learning rate (LoRA adapters take ~10x a full fine-tune's).
        warmup_ratio: fraction of the steps spent warming up linearly.
        weight_decay: AdamW decoupled weight decay (2-D+ weights).
        eval_interval: steps between validations, checkpoints and metrics lines.
        eval_steps: validation batches per validation at most.
        patience: validations without a lower validation loss before stopping early.
        max_minutes: stop training after this many minutes (the best model is kept).
        lora_rank: adapter rank; None for full fine-tuning.
        lora_alpha: adapter scale numerator (`alpha / rank`); default 2 * rank.
        lora_targets: comma-separated `tfllm.models.lora.TARGETS` ("qkv,out,ffn").
        seed: seed of adapter initialization and data order.
        strategy: as `tfllm train --strategy`.
    """

    steps: int | None = None
    epochs: int = 1
    batch_size: int = 8
    lr: float | None = None
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_interval: int = 100
    eval_steps: int = 20
    patience: int = 5
    max_minutes: float | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str = "qkv,out,ffn"
    seed: int = 1337
    strategy: str = "auto"

    def __post_init__(self):
        from tfllm.models import lora
        from tfllm.training import MAX_LR, check_number

        for name in ("epochs", "batch_size", "eval_interval", "eval_steps", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps <= 0):
            raise ConfigError(f"--steps must be a positive integer, got {self.steps!r}")
        if self.lr is None:
            self.lr = 2e-4 if self.lora_rank else 2e-5
        check_number("--lr", self.lr, low=0.0, high=MAX_LR, low_open=True)
        check_number("--weight-decay", self.weight_decay, low=0.0, high=1.0)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes!r}")
        self.lora_targets = ",".join(lora.parse_targets(self.lora_targets))
        if self.lora_rank is not None:
            lora.check_rank(self.lora_rank, self.lora_alpha)
        elif self.lora_alpha is not None:
            raise ConfigError("--lora-alpha needs --lora-rank (LoRA fine-tuning)")


class BestAdapterCheckpoint(keras.callbacks.Callback):
    """Write the adapter (or, in a full fine-tune, the weights) at the lowest
    validation loss."""

    def __init__(self, path, meta=None, best=math.inf):
        super().__init__()
        self.path, self.meta = path, meta
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        from tfllm.models import lora
        from tfllm.training import weights_finite

        val = (logs or {}).get("val_loss")
        if val is None or not math.isfinite(val) or val >= self.best or \
                not weights_finite(self.model):
            return
        self.best = float(val)
        if self.meta is not None:
            lora.save_adapter(self.model, self.path, self.meta)
        else:
            self.model.save_weights(self.path)


class ChatBackup(keras.callbacks.Callback):
    """After each interval, the trainable weights (the adapter, or every weight), the
    optimizer's state and the interval number go to `backup/state.npz` (written to a
    temporary name, then renamed), for `--resume` after a kill.

    Keras' BackupAndRestore cannot do it for LoRA: its weights files hold merged kernels
    and zero the adapters on load (see `tfllm.models.lora`).
    """

    def __init__(self, out):
        super().__init__()
        self.dir = os.path.join(out, runs.BACKUP)

    def on_epoch_end(self, epoch, logs=None):
        import numpy as np

        os.makedirs(self.dir, exist_ok=True)
        arrays = {f"t:{v.path}": v.numpy() for v in self.model.trainable_variables}
        arrays.update({f"o:{i}": v.numpy() for i, v in enumerate(self.model.optimizer.variables)})
        tmp = os.path.join(self.dir, "state.tmp.npz")
        np.savez(tmp, epoch=np.array(epoch), **arrays)
        os.replace(tmp, os.path.join(self.dir, "state.npz"))


def restore_backup(model, out) -> int:
    """Load `backup/state.npz` into a compiled model; returns the next interval (0 when
    there is no backup)."""
    import numpy as np

    path = os.path.join(out, runs.BACKUP, "state.npz")
    if not os.path.isfile(path):
        return 0
    state = np.load(path)
    model.optimizer.build(model.trainable_variables)
    by_path = {v.path: v for v in model.trainable_variables}
    for key in state.files:
        if key.startswith("t:"):
            by_path[key[2:]].assign(state[key])
        elif key.startswith("o:"):
            model.optimizer.variables[int(key[2:])].assign(state[key])
    return int(state["epoch"]) + 1


def resume_chat(out: str, verbose="auto", extra_callbacks=None) -> dict:
    """Continue the chat fine-tune in `out` from its last finished interval, with the
    settings, data and base run its config.json names.

    Example:
        >>> resume_chat("runs/mt-chat")  # doctest: +SKIP
    """
    config = runs.read_run_config(out)
    if config.get("objective") != "chat" or "chat_data" not in config:
        raise RunDirError(f"{out} is not a chat fine-tuning run; --resume continues one")
    if os.path.isfile(os.path.join(out, ADAPTER)) or \
            os.path.isfile(os.path.join(out, runs.MODEL)):
        raise RunDirError(f"{out} is finished (its model is written); nothing to resume")
    fields = {f.name for f in dataclasses.fields(ChatSettings)}
    settings = ChatSettings(**{k: v for k, v in config["finetune"].items() if k in fields})
    d = config["chat_data"]
    return finetune_chat(out, config["data"]["spec"], config["base"]["run"], settings,
                         d["prompt_column"], d["response_column"], d["prompt_template"],
                         d["system"], config["chat"]["template"], verbose=verbose,
                         extra_callbacks=extra_callbacks, _resume=True)


def _fit_chat(run_dir, _resume, run, spec, stored, chat, base_meta, chats, train, val,
              too_long, settings, prompt_column, response_column, prompt_template, system,
              total, interval, epochs, model, verbose, extra_callbacks):
    """Fine-tune into `run_dir` (`out`, or its staging sibling); returns the
    `tfllm.training.FitResult`."""
    from tfllm.tasks.chat.data import make_chat_dataset
    from tfllm.tokenizers import tokenizer_files
    from tfllm.training import fit, read_metrics

    if not _resume:
        for f in tokenizer_files(spec):
            shutil.copyfile(os.path.join(run, f), os.path.join(run_dir, f))
    config = {
        "model": stored["model"], "objective": "chat", "tokenizer": spec, "chat": chat,
        "base": {"run": os.path.abspath(run),
                 **({"fingerprint": base_meta["base_fingerprint"]} if base_meta else {})},
        "lora": ({k: v for k, v in base_meta.items() if k != "base_fingerprint"}
                 if base_meta else None),
        "data": {**chats.describe(), "too_long": too_long,
                 "train": len(train), "val": len(val)},
        "finetune": {**dataclasses.asdict(settings), "total_steps": total,
                     "eval_interval": interval},
        "chat_data": {"prompt_column": prompt_column, "response_column": response_column,
                      "prompt_template": prompt_template, "system": system},
    }
    if not _resume:
        runs.write_run_config(run_dir, config)
    initial_epoch = restore_backup(model, run_dir) if _resume else 0
    previous = read_metrics(run_dir) if _resume else []

    train_ds = make_chat_dataset(train, settings.batch_size, training=True,
                                 seed=settings.seed)
    val_ds = make_chat_dataset(val, settings.batch_size, training=False) \
        .take(settings.eval_steps)
    best_path = os.path.join(run_dir, BEST_ADAPTER if base_meta else runs.BEST_WEIGHTS)
    tokens_per_step = settings.batch_size * sum(len(ids) for ids, _ in train) / len(train)
    best_so_far = min((r["val_loss"] for r in previous if r.get("val_loss") is not None),
                      default=math.inf)
    result = fit(model, train_ds, val_ds, run_dir, interval=interval, epochs=epochs,
                 tokens_per_step=tokens_per_step,
                 checkpoint=lambda guard: BestAdapterCheckpoint(best_path, base_meta,
                                                                best_so_far),
                 backup=lambda guard: ChatBackup(run_dir),
                 early_stopping=("val_loss", "min", settings.patience),
                 max_minutes=settings.max_minutes, initial_epoch=initial_epoch,
                 extra_callbacks=extra_callbacks or (), verbose=verbose)
    losses = result.history.get("loss") or [0.0]  # none: resumed after the last interval
    if result.guard.diverged or not math.isfinite(losses[-1]):
        raise TfllmError(f"fine-tuning diverged (the loss became NaN or infinite); lower "
                         f"--lr (now {settings.lr:g}) and run again with --overwrite")
    if not os.path.isfile(best_path):
        raise TfllmError("no validation finished before the end of training; raise "
                         "--max-minutes or lower --eval-interval")
    if base_meta:
        os.replace(best_path, os.path.join(run_dir, ADAPTER))
    else:
        model.load_weights(best_path)
        model.save(os.path.join(run_dir, runs.MODEL))
    # Finished: nothing left to resume.
    publish.remove_tree(os.path.join(run_dir, runs.BACKUP))
    return result


def finetune_chat(out: str, data: str, run: str, settings: ChatSettings | None = None,
                  prompt_column=None, response_column=None, prompt_template=None,
                  system=None, template=None, overwrite: bool = False,
                  verbose="auto", extra_callbacks=None, _resume=False) -> dict:
    """Fine-tune a language model run on conversations into the chat run `out`.

    Args:
        out: the chat run directory to write.
        data: `jsonl:PATH` with `messages`, or `tsv:|csv:|jsonl:PATH` with
            `prompt_column` and `response_column` (see `tfllm.data.ChatData`).
        run: the base run (imported or trained causal LM, or a chat run).
        settings: `ChatSettings` (LoRA when `lora_rank` is set).
        prompt_template: formats prompts from a row, e.g. "Translate to French: {en}".
        system: a system turn put first in every conversation that has none.
        template: a Jinja chat template (text) to use instead of the run's; tfllm's own
            runs without one get `tfllm.tokenizers.chat_template.DEFAULT_TEMPLATE`.
        overwrite: replace an existing `out`.
        extra_callbacks: more Keras callbacks for `fit`, run after tfllm's own.

    `resume_chat(out)` continues a killed run from its last interval.

    Returns:
        the best validation record and counts: {"val_loss", "step", "steps_run",
        "train_conversations", "trainable_params", ...}.

    Example:
        >>> finetune_chat("runs/mt-chat", "tsv:train.tsv", "runs/smollm2",  # doctest: +SKIP
        ...               ChatSettings(lora_rank=8), prompt_column="en", response_column="fr",
        ...               prompt_template="Translate to French: {en}")
    """
    from tfllm.models import lora
    from tfllm.tokenizers.chat_template import chat_config_of, template_of
    from tfllm.tasks.chat.data import ChatData, encode_conversations
    from tfllm.models import make_optimizer
    from tfllm.models.causal_lm import Perplexity
    from tfllm.models.seq2seq_lm import SmoothedSparseCrossentropy
    from tfllm.data.spec import data_paths
    from tfllm import tasks
    from tfllm.training import choose_strategy, read_metrics, run_output, writing_run

    settings = settings or ChatSettings()
    stored = runs.read_run_config(run)
    # A language model (imported or trained) or a fine-tuned chat run (LoRA runs load
    # merged).
    if not tasks.of_config(stored).causal:
        raise RunDirError(f"{run} is a {stored.get('objective')!r} run; --task chat "
                          "fine-tunes a causal language model (tfllm train, tfllm import-hf / "
                          "import-gguf)")
    strategy = choose_strategy(settings.strategy)
    output = run_output(out, _resume, overwrite, runs.inputs_of(run) + data_paths(data),
                        "finetune")
    keras.utils.set_random_seed(settings.seed)

    with strategy.scope():
        model = runs.load(run)
    tokenizer = model.tokenizer
    chat = chat_config_of(stored, tokenizer, template, allow_default=True)
    chat_template = template_of(chat)
    # The template decides how rows with tools are written (as ChatSession writes them).
    chats = ChatData(data, prompt_column, response_column, prompt_template, system,
                     seed=settings.seed, template=chat["template"])
    if not chats.val:
        raise DataError(f"{data} has too few conversations to hold some out for validation")
    max_len = int(model.backbone.max_len)
    train, too_long = encode_conversations(chats.train, chat_template, tokenizer, max_len)
    val, val_too_long = encode_conversations(chats.val, chat_template, tokenizer, max_len)
    steps_per_epoch = max(1, len(train) // settings.batch_size)
    total = settings.steps or settings.epochs * steps_per_epoch
    interval = min(settings.eval_interval, total)
    epochs = max(1, math.ceil(total / interval))
    total = epochs * interval

    base_meta = None
    with strategy.scope():
        if settings.lora_rank:
            base_meta = {"rank": settings.lora_rank,
                         "alpha": float(settings.lora_alpha or 2 * settings.lora_rank),
                         "targets": settings.lora_targets.split(","),
                         "base_fingerprint": lora.fingerprint(model)}
            lora.enable(model, settings.lora_rank, base_meta["alpha"],
                        settings.lora_targets, seed=settings.seed)
        optimizer = make_optimizer(model, settings.lr, int(settings.warmup_ratio * total),
                                   total, 0.1, settings.weight_decay, 0.999, 1.0)
        # Batches are as wide as their longest conversation: a plain graph runs every
        # width, where XLA would compile a step per width.
        model.compile(optimizer=optimizer, loss=SmoothedSparseCrossentropy(0.0), metrics=[],
                      weighted_metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy"),
                                        Perplexity()],
                      jit_compile=False, steps_per_execution=math.gcd(interval, 10))
    trainable = int(sum(math.prod(v.shape) for v in model.trainable_variables))
    total_params = int(sum(math.prod(v.shape) for v in model.weights
                           if "lora_kernel" not in v.path))

    # Data and model are ready: a new run is written in place when nothing is replaced (so
    # a killed one resumes), else beside the old one, which it replaces once complete.
    spec = stored.get("tokenizer", runs.TOKENIZER)
    with writing_run(output, out) as run_dir:
        result = _fit_chat(run_dir, _resume, run, spec, stored, chat, base_meta, chats, train,
                           val, too_long + val_too_long, settings, prompt_column,
                           response_column, prompt_template, system, total, interval, epochs,
                           model, verbose, extra_callbacks)
    records = read_metrics(out)
    best = min((r for r in records if r.get("val_loss") is not None),
               key=lambda r: r["val_loss"], default={})
    return {"val_loss": best.get("val_loss"), "val_accuracy": best.get("val_accuracy"),
            "step": best.get("step"), "steps_run": records[-1]["step"] if records else 0,
            "train_conversations": len(train), "val_conversations": len(val),
            "too_long": too_long + val_too_long, "skipped": chats.skipped,
            "trainable_params": trainable, "base_params": total_params,
            "train_seconds": round(result.seconds, 1),
            "stopped_by_time": result.stopped_by_time}
