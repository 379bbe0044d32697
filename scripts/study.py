#!/usr/bin/env python3
"""Combines the two sweeps of the augmentation study (scripts/study.sh) into one table.

Usage: python3 scripts/study.py A/sweep.csv B/sweep.csv > study.md
Per (pose, training images per class): mean ± sample sd over seeds of best validation and
test accuracy, and train - validation gap, for regime A and each regime-B augmentation.
Standard library only.
"""
import csv
import statistics
import sys
from collections import defaultdict


def cells(path, extra_key=None):
    out = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "completed":
                continue
            key = (row["data.pose"], row["data.per_class"], row[extra_key] if extra_key else "A")
            out[key].append(row)
    return out


def stat(rows, field, scale=100.0):
    vals = [float(r[field]) * scale for r in rows]
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def short(augment):
    return "B flip" if "rotation" not in augment else "B book"


def main(a_csv, b_csv):
    a, b = cells(a_csv), cells(b_csv, "nodes.augment")
    regimes = ["A"] + sorted({short(k[2]) for k in b}, key=lambda s: s != "B flip")
    merged = defaultdict(dict)
    for (pose, n, _), rows in a.items():
        merged[(pose, n)]["A"] = rows
    for (pose, n, aug), rows in b.items():
        merged[(pose, n)][short(aug)] = rows
    head = ["pose", "train / class"] + [f"{r} best val" for r in regimes] + [f"{r} test" for r in regimes]
    head += [f"{r} gap" for r in regimes]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(head) - 2))
    for (pose, n) in sorted(merged, key=lambda k: (k[0] != "{}", int(k[1].strip("[]").split(",")[0]))):
        m = merged[(pose, n)]
        row = ["none" if pose == "{}" else "random", n.strip("[]").split(",")[0]]
        row += [stat(m.get(r, []), "best_val_acc") for r in regimes]
        row += [stat(m.get(r, []), "test_acc") for r in regimes]
        for r in regimes:  # final train - final validation accuracy: how much the head overfits
            row.append(stat([dict(x, gap=float(x["train_acc"]) - float(x["val_acc"])) for x in m.get(r, [])], "gap"))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
