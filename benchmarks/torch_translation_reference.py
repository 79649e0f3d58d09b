"""PyTorch's `nn.Transformer` trained on the same pairs, tokenizer, size and wall-clock budget
as tfllm's transformer-mt-small: the reference of benchmarks/translation.py.

Runs in its own venv (torch, sentencepiece, numpy); not part of tfllm. Reads the encoded
pairs tfllm's run trained on (so both see the same split and the same token ids), trains
with the same recipe (AdamW, warmup + cosine, label smoothing 0.1, clip 1.0, batches of
similar lengths) until the budget is spent, then translates the evaluation sources with
beam search under Hugging Face's rules (as tfllm's) and writes them as JSON.

    python benchmarks/torch_translation_reference.py --pairs PAIRS.json --out OUT.json
"""

import argparse
import json
import math
import random
import time

import numpy as np
import torch
from torch import nn

PAD, BOS, EOS = 0, 2, 3
NEG = -1e9


class Model(nn.Module):
    """nn.Transformer with one shared token embedding (tied to the output) and learned
    positions, pre-LN: the original Transformer's blocks (LayerNorm, ReLU feed-forward) at
    the size of tfllm's transformer-mt-small (whose blocks are rotary/RMSNorm/SwiGLU, which
    nn.Transformer does not offer; the benchmark gives this side at least as many
    parameters)."""

    def __init__(self, vocab, d_model, heads, enc_layers, dec_layers, ffn, max_len, dropout):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.tf = nn.Transformer(d_model, heads, enc_layers, dec_layers, ffn, dropout,
                                 activation="relu", batch_first=True, norm_first=True)

    def embed(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.tok(ids) + self.pos(pos)[None])

    def encode(self, src):
        return self.tf.encoder(self.embed(src), src_key_padding_mask=src == PAD)

    def decode(self, tgt, memory, src):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=torch.bool)
        h = self.tf.decoder(self.embed(tgt), memory, tgt_mask=mask, tgt_is_causal=True,
                            memory_key_padding_mask=src == PAD)
        return h @ self.tok.weight.T

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src), src)


def batches(pairs, batch_size, rng):
    """Batches of pairs of similar length (as tfllm's buckets), shuffled, forever."""
    while True:
        order = sorted(range(len(pairs)), key=lambda i: (max(len(pairs[i][0]),
                                                             len(pairs[i][1]) + 1),
                                                         rng.random()))
        chunks = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1,
                                                         batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            src = [pairs[i][0] for i in chunk]
            tgt = [pairs[i][1] for i in chunk]
            w = max(max(len(s) for s in src), max(len(t) for t in tgt) + 1)
            s = np.zeros((len(chunk), w), np.int64)
            d = np.zeros((len(chunk), w), np.int64)
            y = np.zeros((len(chunk), w), np.int64)
            for r, (a, b) in enumerate(zip(src, tgt)):
                s[r, :len(a)] = a
                d[r, :len(b) + 1] = [BOS] + b
                y[r, :len(b) + 1] = b + [EOS]
            yield torch.from_numpy(s), torch.from_numpy(d), torch.from_numpy(y)


@torch.no_grad()
def beam_search(model, src, beams, max_new, alpha=1.0):
    """Hugging Face's beam rules (as tfllm.models.beam_search), no cache: nn.Transformer has none."""
    memory = model.encode(src)
    b = src.shape[0]
    memory = memory.repeat_interleave(beams, 0)
    src_k = src.repeat_interleave(beams, 0)
    alive_logp = torch.full((b, beams), NEG)
    alive_logp[:, 0] = 0.0
    seqs = torch.full((b * beams, 1), BOS, dtype=torch.long)
    finished = [[] for _ in range(b)]  # (score, tokens)
    done = [False] * b
    for step in range(max_new):
        logits = model.decode(seqs, memory, src_k)[:, -1]
        logp = torch.log_softmax(logits.float(), -1)
        vocab = logp.shape[-1]
        cand = (alive_logp[:, :, None] + logp.view(b, beams, vocab)).view(b, -1)
        top, idx = cand.topk(2 * beams, dim=1)
        src_beam, token = idx // vocab, idx % vocab
        new_alive, new_seqs = torch.full((b, beams), NEG), []
        for r in range(b):
            kept = []
            for rank in range(2 * beams):
                lp, beam, tok = float(top[r, rank]), int(src_beam[r, rank]), int(token[r, rank])
                if lp < NEG / 2:
                    continue
                prev = seqs[r * beams + beam, 1:].tolist()
                if tok == EOS:
                    if rank < beams and not done[r]:
                        finished[r].append((lp / (step + 1) ** alpha, prev + [EOS]))
                        finished[r].sort(key=lambda x: -x[0])
                        del finished[r][beams:]
                    continue
                kept.append((lp, beam, tok))
                if len(kept) == beams:
                    break
            rows = []
            for j in range(beams):
                lp, beam, tok = kept[j] if j < len(kept) else (NEG, 0, EOS)
                new_alive[r, j] = lp
                rows.append(torch.cat([seqs[r * beams + beam], torch.tensor([tok])]))
            new_seqs.extend(rows)
            best_live = float(new_alive[r, 0]) / (step + 1) ** alpha
            if len(finished[r]) == beams and finished[r][-1][0] >= best_live:
                done[r] = True
        seqs, alive_logp = torch.stack(new_seqs), new_alive
        if all(done):
            break
    out = []
    for r in range(b):
        cands = list(finished[r])
        if not done[r]:
            n = seqs.shape[1] - 1
            cands += [(float(alive_logp[r, j]) / n ** alpha, seqs[r * beams + j, 1:].tolist())
                      for j in range(beams) if alive_logp[r, j] > NEG / 2]
        best = max(cands, key=lambda x: x[0])[1]
        out.append([t for t in best if t != EOS])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="JSON written by benchmarks/translation.py")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    spec = json.load(open(a.pairs))
    cfg, train = spec["config"], spec["train"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg["threads"])
    model = Model(cfg["vocab_size"], cfg["d_model"], cfg["num_heads"], cfg["num_layers"],
                  cfg["num_decoder_layers"], cfg["ffn_dim"], cfg["max_len"], cfg["dropout"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(0.9, 0.99))
    steps, warmup = cfg["steps"], cfg["warmup_steps"]

    def lr_at(step):
        if step < warmup:
            return cfg["lr"] * step / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=cfg["label_smoothing"])
    rng = random.Random(cfg["seed"])
    start, step = time.time(), 0
    model.train()
    for src, dec, y in batches(train, cfg["batch_size"], rng):
        if step >= steps or time.time() - start >= cfg["budget_sec"]:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(src, dec)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    train_sec = time.time() - start
    model.eval()
    sources = spec["eval_sources"]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = [None] * len(sources)
    t0 = time.time()
    for i in range(0, len(order), 32):
        chunk = order[i:i + 32]
        w = max(len(sources[j]) for j in chunk)
        src = torch.zeros((len(chunk), w), dtype=torch.long)
        for r, j in enumerate(chunk):
            src[r, :len(sources[j])] = torch.tensor(sources[j])
        for j, ids in zip(chunk, beam_search(model, src, cfg["num_beams"], cfg["max_len"])):
            out[j] = ids
    json.dump({"steps": step, "train_sec": round(train_sec, 1),
               "decode_sec": round(time.time() - t0, 1), "final_loss": float(loss.item()),
               "params": sum(p.numel() for p in model.parameters()),
               "outputs": out}, open(a.out, "w"))
    print(f"done: {step} steps in {train_sec:.0f}s")


if __name__ == "__main__":
    main()
