"""Train the same model a few steps under the default strategy and under MirroredStrategy
over two logical CPU devices, on the same global batch; print the loss histories as JSON.

Two optimizers: SGD (no optimizer state, so any difference is in tfllm's model, loss or
gradient aggregation) and tfllm's AdamW recipe (its second moment would differ, ~0.2% in
loss after 5 steps, if repeated position-embedding rows from the two replicas were not
summed before Adam squares them; see tfllm.models.causal_lm.AdamW)."""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfllm.config import ModelConfig  # noqa: E402
from tfllm.models import CausalLM  # noqa: E402
from tfllm.training import choose_strategy, jit_supported  # noqa: E402

CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=2, ffn_dim=64, max_len=16)
GLOBAL_BATCH, STEPS = 8, 5
rng = np.random.default_rng(0)
# The same batch every step, so the loss must fall if the steps really train.
data = np.tile(rng.integers(0, 40, size=(GLOBAL_BATCH, 17)).astype("int32"), (STEPS, 1))
ds = tf.data.Dataset.from_tensor_slices((data[:, :-1], data[:, 1:])).batch(GLOBAL_BATCH)

keras.utils.set_random_seed(0)
init = CausalLM.from_model_config(CFG).get_weights()
histories = {}
for name, opt in [(s, o) for o in ("sgd", "adamw") for s in ("default", "mirrored")]:
    devices = ["/cpu:0", "/cpu:1"] if name == "mirrored" else None
    strategy = choose_strategy(name, devices=devices)
    with strategy.scope():
        model = CausalLM.from_model_config(CFG)
        model.set_weights(init)
        if opt == "sgd":
            model.compile(optimizer=keras.optimizers.SGD(0.5),
                          jit_compile=jit_supported(strategy))
        else:
            model.compile(learning_rate=1e-2, warmup_steps=0, total_steps=STEPS,
                          jit_compile=jit_supported(strategy))
    assert strategy.num_replicas_in_sync == (2 if name == "mirrored" else 1)
    # One epoch per step: the history holds the loss of every step.
    losses = []
    for x, y in ds:
        losses.append(float(model.train_on_batch(x, y, return_dict=True)["loss"]))
    histories[f"{name}_{opt}"] = {"losses": losses, "replicas": strategy.num_replicas_in_sync,
                       "jit": jit_supported(strategy)}
json.dump(histories, sys.stdout)
