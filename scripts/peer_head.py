#!/usr/bin/python3
"""The peer of `pipe bench`'s cached-head figures, for docs/performance.md: a plain PyTorch loop
training pipe's dense_head on cached features, the way a user would write it.

2,000 random 2048-wide features (128x4x4 flattened, two labels), a 2048 -> 256 -> 1 head
(Linear, ReLU, Dropout 0.5, Linear), BCEWithLogitsLoss, RMSprop with pipe's settings (lr 1e-4,
Keras' rho 0.9 as alpha, eps 1e-7), batch 20, a shuffled epoch. Only the training epoch is
timed (forward, loss, backward, step, and reading the loss as pipe's metrics do); each of
--threads is timed separately, best of --reps epochs after one warm-up epoch.

  /usr/bin/python3 scripts/peer_head.py --threads 1 2
Prints one JSON line per thread count: threads, best and all epoch seconds.
"""
import argparse
import json
import time

import torch
from torch import nn


def epoch(model, opt, loss_fn, x, y, batch, gen):
    model.train()
    order = torch.randperm(x.shape[0], generator=gen)
    total = 0.0
    for i in range(0, x.shape[0], batch):
        idx = order[i:i + batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        loss = loss_fn(model(xb).squeeze(1), yb)
        loss.backward()
        opt.step()
        total += loss.item() * xb.shape[0]
    return total / x.shape[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(1)
    y = (torch.arange(args.count) % 2).float()
    x = torch.rand(args.count, 2048, generator=gen) + 0.1 * y[:, None]  # as the bench's features
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 1))
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
        loss_fn = nn.BCEWithLogitsLoss()
        epoch(model, opt, loss_fn, x, y, args.batch, gen)  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            epoch(model, opt, loss_fn, x, y, args.batch, gen)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"threads": threads, "best_epoch_seconds": round(min(times), 4),
                          "epoch_seconds": [round(t, 4) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
