"""Check that the synthetic-scenes dataset can rank architectures.

Trains, on the same cached data, (a) a one-layer model (a single 3x3 conv from
RGB to class logits) and (b) a small fully-convolutional encoder-decoder, both
with Adam, and prints model | params | train time (s) | val mIoU.
Target: (a) stays below 0.5 mIoU, (b) exceeds 0.8 mIoU within a few minutes on
2 CPU cores.

    python bench/synthetic_difficulty.py [--minutes N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasplat.data import SyntheticScenes, synthetic_splits  # noqa: E402


def cache(dataset: SyntheticScenes) -> tuple[Tensor, Tensor]:
    """Materialise a dataset into stacked (images, masks) tensors."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallFCN(nn.Module):
    """Tiny U-Net-like encoder-decoder: full, 1/2 and 1/4 resolution with skips."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(conv_bn_relu(3, w1), conv_bn_relu(w1, w1))
        self.enc2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2))
        self.enc3 = nn.Sequential(conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3))
        self.dec2 = conv_bn_relu(w3 + w2, w2)
        self.dec1 = conv_bn_relu(w2 + w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([_upsample_to(e3, e2), e2], dim=1))
        d1 = self.dec1(torch.cat([_upsample_to(d2, e1), e1], dim=1))
        return self.head(d1)


def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def confusion_matrix(model: nn.Module, images: Tensor, masks: Tensor, num_classes: int,
                     batch_size: int = 100) -> Tensor:
    """Confusion matrix [true, pred] over a whole set (pixels labelled 255 ignored)."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pred = model(images[start:start + batch_size]).argmax(1).flatten()
            true = masks[start:start + batch_size].flatten()
            keep = true != 255
            idx = true[keep] * num_classes + pred[keep]
            conf += torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)
    return conf


def mean_iou(conf: Tensor) -> float:
    """Mean over classes of TP/(TP+FP+FN), skipping classes with zero denominator."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, math.nan))
    return float(np.nanmean(iou.numpy()))


def train(model: nn.Module, images: Tensor, masks: Tensor, epochs: int, lr: float,
          batch_size: int, max_seconds: float, seed: int) -> float:
    """Adam + cosine LR training; stops early after ``max_seconds``. Returns seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for b in range(0, len(images), batch_size):
            idx = order[b:b + batch_size]
            loss = F.cross_entropy(model(images[idx]), masks[idx], ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if time.perf_counter() - start > max_seconds:
            break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="training time cap per model (default 5)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10, help="epochs for the small net")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    splits = synthetic_splits(args.num_train, args.num_val, size=(args.size, args.size),
                              seed=args.seed)
    num_classes = splits["val"].num_classes
    t0 = time.perf_counter()
    train_sets = [cache(splits["train_a"]), cache(splits["train_b"])]
    x_train = torch.cat([x for x, _ in train_sets])
    y_train = torch.cat([y for _, y in train_sets])
    x_val, y_val = cache(splits["val"])
    print(f"generated {len(x_train)} train + {len(x_val)} val samples "
          f"at {args.size}x{args.size} in {time.perf_counter() - t0:.1f}s", flush=True)

    budget = 60.0 * args.minutes
    configs = [
        ("one-layer 3x3 conv", nn.Conv2d(3, num_classes, 3, padding=1), 20, 1e-2),
        ("small FCN", SmallFCN(num_classes), args.epochs, 1e-2),
    ]
    rows = []
    for name, model, epochs, lr in configs:
        seconds = train(model, x_train, y_train, epochs, lr, 32, budget, args.seed)
        miou = mean_iou(confusion_matrix(model, x_val, y_val, num_classes))
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, params, seconds, miou))
        print(f"  {name}: {params} params, {seconds:.1f}s, val mIoU {miou:.3f}", flush=True)

    print()
    print("| model | params | train time (s) | val mIoU |")
    print("|---|---:|---:|---:|")
    for name, params, seconds, miou in rows:
        print(f"| {name} | {params:,} | {seconds:.1f} | {miou:.3f} |")


if __name__ == "__main__":
    main()
