"""Helpers the benchmark scripts share: input sets (real samples or synthetic), timing, the classical
baselines as methods. Scripts in this folder import it as ``common`` (Python puts a script's own folder
first on ``sys.path``); they do not import each other."""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch

from torch_label_mae.data import FolderDataset, degrade, seed_for
from torch_label_mae.evaluate import nearest_fill_method as nearest_fill
from torch_label_mae.io import resize_image, resize_label

MISSING = 255
__all__ = ["nearest_fill"]


def parse_size(s: str) -> tuple[int, int]:
    """``"480x360"`` (W x H, as image sizes are written) -> ``(H, W)``."""
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 480x360, got {s!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {s!r}")
    return h, w


def size_name(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def read_samples(root: str, split: str, n: int):
    """The first ``n`` samples of a dataset folder (cycled when it has fewer), as ``(image, label, key)``."""
    ds = FolderDataset(root, split)
    if len(ds) == 0:
        raise SystemExit(f"{root}/{split}: no images")
    out = []
    for i in range(n):
        image, label, key = ds[i % len(ds)]
        out.append((image, label, key if i < len(ds) else f"{key}#{i // len(ds)}"))
    return ds.info, out


def real_inputs(samples, hw, ratio: float, seed: int):
    """Images at their own size get 32 px blocks hidden (native protocol); images resized to ``hw`` get
    16 px patches hidden (paper protocol). Returns uint8 images, broken labels (255 = missing)."""
    images, labels = [], []
    for image, label, key in samples:
        if tuple(image.shape[-2:]) == hw:
            broken, _ = degrade(label, ratio, 32, seed=seed_for(key, seed), mode="blocks")
        else:
            image = (resize_image(image.unsqueeze(0), hw)[0] * 255).round().to(torch.uint8)
            label = resize_label(label.unsqueeze(0), hw)[0]
            mode = "patches" if hw[0] % 16 == 0 and hw[1] % 16 == 0 else "blocks"
            broken, _ = degrade(label, ratio, 16, seed=seed_for(key, seed), mode=mode)
        images.append(image.contiguous())
        labels.append(broken)
    return images, labels


def synthetic_inputs(n: int, hw, num_classes: int, model_size, ratio: float, seed: int):
    """Random images; piecewise-constant random labels (an 8 x 8 grid of classes, upsampled); ``ratio``
    of the 16 px patches hidden at the model's size, of 32 px blocks at any other size."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    images, labels = [], []
    for i in range(n):
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        coarse = torch.randint(0, num_classes, (1, 8, 8), generator=g)
        label = resize_label(coarse, hw)[0]
        if tuple(hw) == tuple(model_size) and h % 16 == 0 and w % 16 == 0:
            broken, _ = degrade(label, ratio, 16, seed=seed * 100003 + i, mode="patches")
        else:
            broken, _ = degrade(label, ratio, 32, seed=seed * 100003 + i, mode="blocks")
        labels.append(broken)
    return images, labels


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, repeats: int, warmup, device: torch.device) -> list[float]:
    """Run ``warmup()`` (not timed), then ``fn()`` ``repeats`` times; seconds per run."""
    if warmup is not None:
        warmup()
        sync(device)
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def bench_api(completer, images, labels, b, repeats, warmup):
    dev = completer.device

    def run():
        completer.complete_batch(images, labels, batch_size=b)

    def warm():
        for _ in range(warmup):
            completer.complete_batch(images[:b], labels[:b], batch_size=b)

    return time_it(run, repeats, warm if warmup else None, dev)


def random_walker(beta: float = 130.0):
    from skimage.segmentation import random_walker as rw

    def method(images, labels, missing):
        out = []
        for img, lab, miss in zip(images, labels, missing, strict=True):
            arr = lab.numpy()
            known = ~miss.numpy() & (arr != 255)
            present = np.unique(arr[known])
            if len(present) == 0:  # nothing to walk from: unfilled, as nearest fill and the walk leave it
                out.append(torch.full_like(lab, MISSING))
                continue
            if len(present) == 1:
                out.append(torch.full_like(lab, int(present[0])))
                continue
            seeds = np.zeros(arr.shape, dtype=np.int32)
            seeds[known] = np.searchsorted(present, arr[known]) + 1
            x = img.permute(1, 2, 0).numpy().astype(np.float64)
            x = x if img.is_floating_point() else x / 255.0  # beta is tuned on [0, 1] images (as evaluate gives)
            res = rw(x, seeds, beta=beta, mode="bf", channel_axis=-1)
            out.append(torch.from_numpy(present[res - 1].astype(np.int64)))
        return out

    return method
