#!/usr/bin/python3
"""The plain PyTorch loop a user would write for pipe's two regimes, for docs/performance.md.

Same work as graphs/cached.yaml (regime A) and graphs/augmented.yaml (regime B): Fashion-MNIST
shirt vs t-shirt, 1000/500/500 images per class, 32x32 RGB, pipe's small_vgg base with the
weights of models/small_vgg_fmnist.pt (frozen, eval, eager forward), a 2048->256->1 head
trained with RMSprop (lr 1e-4, Keras' rho 0.9 and eps 1e-7, as pipe's dense_head), batch 20.
Written the way the book's Keras code reads, not tuned: one batch size for base and head, a
DataLoader with 2 workers (this machine has 2 cores), torchvision's RandomAffine for the
augmentation, validation through the base every epoch in regime B.

  /usr/bin/python3 scripts/peer_loop.py A --features /tmp/peer_feats.pt  # 1st run: extract + train
  /usr/bin/python3 scripts/peer_loop.py A --features /tmp/peer_feats.pt  # 2nd run: reads the file
  /usr/bin/python3 scripts/peer_loop.py B
Debian's torch starts with 1 intra-op thread here; --threads 2 gives the base both cores.
Prints one JSON line: seconds (whole run, from the first line of this file), extract_seconds,
epoch_seconds (each epoch), val_acc, test_acc. Needs torch and torchvision (Debian's 1.13 here).
"""
import argparse
import gzip
import json
import os
import time

T0 = time.perf_counter()  # before the torch import: pipe's run time includes its start-up too

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
SHIRT, TSHIRT = 6, 0  # Fashion-MNIST labels; pipe's classes [shirt, t-shirt] are 0 and 1


def read_idx(name):
    with gzip.open(os.path.join(FMNIST, name)) as f:
        data = f.read()
    if "images" in name:
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8)


def splits(seed=1):
    """train/val from the train file (first 1000 / last 500 of a seeded permutation per class),
    test from t10k (first 500 per class): pipe's rule, though not its random stream."""
    rng = np.random.default_rng(seed)
    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for file, parts in (("train", (("train", 0, 1000), ("val", -500, None))), ("t10k", (("test", 0, 500),))):
        images, labels = read_idx(f"{file}-images-idx3-ubyte.gz"), read_idx(f"{file}-labels-idx1-ubyte.gz")
        for label, fm in enumerate((SHIRT, TSHIRT)):
            idx = rng.permutation(np.flatnonzero(labels == fm))
            for split, a, b in parts:
                out[split][0].append(images[idx[a:b]])
                out[split][1].append(np.full(len(idx[a:b]), label, np.float32))
    return {k: (np.concatenate(x), np.concatenate(y)) for k, (x, y) in out.items()}


class Garments(Dataset):
    def __init__(self, xy, transform):
        self.x, self.y, self.transform = xy[0], xy[1], transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def small_vgg():
    """pipe's builtin:small_vgg (stages/torch_util.cpp): conv3x3-BN-ReLU x2 per block, 32-64-128."""
    layers, c_in = [], 3
    for c in (32, 32, "M", 64, 64, "M", 128, 128, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers)


def head(dropout):
    return nn.Sequential(nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 1))


def fit(model, opt, batches, base=None):
    """One epoch of the head; `base` (frozen, eval) makes features from images on the way."""
    model.train()
    for x, y in batches:
        if base is not None:
            with torch.no_grad():
                x = base(x)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
        opt.step()


@torch.no_grad()
def accuracy(model, batches, base=None):
    model.eval()
    hit = n = 0
    for x, y in batches:
        if base is not None:
            x = base(x)
        hit += ((model(x).squeeze(1) > 0).float() == y).sum().item()
        n += len(y)
    return hit / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("regime", choices=["A", "B"])
    ap.add_argument("--features", default="/tmp/peer_loop_features.pt", help="regime A's feature file")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)

    base = small_vgg()
    base.load_state_dict(torch.jit.load(os.path.join(ROOT, "models/small_vgg_fmnist.pt")).state_dict())
    base.eval().requires_grad_(False)
    plain = transforms.Compose([transforms.Resize((32, 32)), transforms.Grayscale(3), transforms.ToTensor()])
    loader = lambda ds, shuffle: DataLoader(ds, args.batch, shuffle=shuffle, num_workers=args.workers,
                                            persistent_workers=args.workers > 0)
    data = splits()
    report = {"regime": args.regime, "epochs": args.epochs, "workers": args.workers,
              "threads": torch.get_num_threads(), "extract_seconds": 0.0, "epoch_seconds": []}

    if args.regime == "A":
        if os.path.exists(args.features):  # second run: the user's own feature file
            feats = torch.load(args.features)
        else:
            t = time.perf_counter()
            feats = {}
            with torch.no_grad():
                for split, xy in data.items():
                    xs, ys = zip(*((base(x), y) for x, y in loader(Garments(xy, plain), False)))
                    feats[split] = (torch.cat(xs), torch.cat(ys))
            torch.save(feats, args.features)
            report["extract_seconds"] = time.perf_counter() - t
        model = head(0.5)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
        batches = {k: DataLoader(TensorDataset(*v), args.batch, shuffle=(k == "train")) for k, v in feats.items()}
        for _ in range(args.epochs):
            t = time.perf_counter()
            fit(model, opt, batches["train"])
            report["val_acc"] = accuracy(model, batches["val"])
            report["epoch_seconds"].append(time.perf_counter() - t)
        report["test_acc"] = accuracy(model, batches["test"])
    else:
        # Keras' ImageDataGenerator(rotation 40, shifts 0.2, shear 0.2 rad, zoom 0.2, flip).
        augment = transforms.Compose([
            transforms.Resize((32, 32)),
            transforms.RandomAffine(40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=np.degrees(0.2)),
            transforms.RandomHorizontalFlip(), transforms.Grayscale(3), transforms.ToTensor()])
        model = head(0.0)  # the book's regime-B head has no dropout
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
        train = loader(Garments(data["train"], augment), True)
        val, test = loader(Garments(data["val"], plain), False), loader(Garments(data["test"], plain), False)
        for _ in range(args.epochs):
            t = time.perf_counter()
            fit(model, opt, train, base)
            report["val_acc"] = accuracy(model, val, base)
            report["epoch_seconds"].append(time.perf_counter() - t)
        report["test_acc"] = accuracy(model, test, base)
    report["seconds"] = time.perf_counter() - T0
    print(json.dumps(report))


if __name__ == "__main__":
    main()
