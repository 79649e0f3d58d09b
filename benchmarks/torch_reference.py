"""Training tokens/s of a PyTorch GPT at the `shakespeare-char` shape: the reference figure.

The issue's other training target is "above the ~21k tokens/s a PyTorch reference reaches on
this machine kind". This script measures that reference on the machine at hand instead of
quoting it: a GPT written the way the well-known PyTorch reference (nanoGPT) writes it,
run the way its CPU recipe runs it (eager, no torch.compile, dropout 0), at the same shape
and batch as `train_throughput.py`: 4 layers, 128 wide, 4 heads, context 64, vocabulary 65,
batch 12; AdamW, gradient clipping at 1.0, tied embeddings, PyTorch's fused attention.

PyTorch is not a tfllm dependency; give it a venv of its own (2.13.0 is the CPU build
this machine kind keeps on disk; any CPU build will do):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python benchmarks/torch_reference.py [--reps 5] [--steps 200]

The last line of output is one JSON object: median tokens per wall-clock second and per
CPU-second of the process.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, LAYERS, WIDTH, HEADS, CONTEXT, BATCH = 65, 4, 128, 4, 64, 12


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(WIDTH, dim=2)
        # (batch, heads, seq, head_dim)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.tokens.weight  # tied, as tfllm's and KerasHub's models
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids, targets):
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="steps per measurement")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    data = torch.randint(0, VOCAB, (64 * BATCH, CONTEXT + 1))

    def run(steps, start=0):
        for i in range(steps):
            s = ((start + i) % 64) * BATCH
            batch = data[s:s + BATCH]
            loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()

    run(20)  # warm up the allocator and kernels
    wall, cpu = [], []
    for rep in range(args.reps):
        c0, t0 = os.times(), time.perf_counter()
        last_loss = run(args.steps, start=rep)
        w, c1 = time.perf_counter() - t0, os.times()
        tokens = args.steps * BATCH * CONTEXT
        wall.append(tokens / w)
        cpu.append(tokens / max((c1.user - c0.user) + (c1.system - c0.system), 1e-9))
        print(f"rep {rep + 1}: {wall[-1]:,.0f} tok/s ({cpu[-1]:,.0f} per CPU-s)", flush=True)
    assert math.isfinite(last_loss), last_loss
    print(json.dumps({
        "benchmark": "torch_reference", "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {"layers": LAYERS, "d_model": WIDTH, "heads": HEADS, "ffn": 4 * WIDTH,
                  "context": CONTEXT, "vocab": VOCAB, "batch": BATCH},
        "tokens_per_sec": round(statistics.median(wall), 1),
        "tokens_per_cpu_sec": round(statistics.median(cpu), 1),
        "reps": args.reps, "steps_per_rep": args.steps}))


if __name__ == "__main__":
    main()
