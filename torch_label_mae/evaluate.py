"""Evaluation protocols shared by the model and the baselines: same holes, same counting.

A *method* is a callable ``method(images, labels, missing) -> completed`` over lists of tensors
(``image float [3, H, W]`` in [0, 1], ``label int64 [H, W]`` with missing pixels set to 255,
``missing bool [H, W]``; returns ``int64 [H, W]`` each). Protocols:

- ``paper``: image and label resized to 224 x 224 (bilinear / nearest), ``ratio`` of the 16 px patches
  hidden.
- ``native``: original resolution, ``ratio`` of 32 px blocks hidden.

Holes are seeded per image id (:func:`torch_label_mae.data.seed_for`). Which patches a draw hides can
move PA-mIoU by several points on a hundred images (``docs/training.md``), so compare methods on
several seeds: ``evaluate(..., seed=[0, 1, 2])`` counts the hidden pixels of
every draw together and also reports each draw's figure.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence

import torch

from .data import degrade, seed_for
from .io import resize_image, resize_label
from .metrics import SegmentationMetrics

PROTOCOLS = {
    "paper": dict(size=(224, 224), block=16, mode="patches"),
    "native": dict(size=None, block=32, mode="blocks"),
}

Method = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]], Sequence[torch.Tensor]]


def completer_method(completer, batch_size: int | None = None) -> Method:
    """A :class:`~torch_label_mae.LabelCompleter` as a method: ``completer.complete_batch`` on the lists."""

    def method(images, labels, missing):
        return completer.complete_batch(images, labels, missing, batch_size=batch_size)

    return method


def nearest_fill_method(images, labels, missing) -> list[torch.Tensor]:
    """Nearest-label fill as a method (the library's :func:`torch_label_mae.propagation.nearest_fill`)."""
    from .propagation import nearest_fill

    return [nearest_fill(lab[None], ((lab != 255) & ~miss)[None])[0] for lab, miss in zip(labels, missing, strict=True)]


def walk_method(
    beta: float = 2000.0, sweeps: int = 40, solver: str = "sor", connectivity: int = 4, color: str = "rgb"
) -> Method:
    """The image-guided random walk alone (:func:`torch_label_mae.propagation.random_walk`) as a method."""
    from .propagation import random_walk

    graph = dict(solver=solver, connectivity=connectivity, color=color)

    def method(images, labels, missing):
        out = []
        for img, lab, miss in zip(images, labels, missing, strict=True):  # sizes may differ (native)
            known = (lab != 255) & ~miss
            out.append(random_walk(img[None], lab[None], known[None], beta=beta, sweeps=sweeps, **graph)[0])
        return out

    return method


UNFILLED = 255  # the value of the holes degraded_samples marks: a hole a method leaves so counts as wrong


def degraded_samples(dataset, *, protocol: str = "paper", ratio: float = 0.5, seed: int = 0, limit: int | None = None):
    """Yield ``(id, image float [3,H,W], label [H,W], broken [H,W], missing [H,W])`` under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    p = PROTOCOLS[protocol]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, label, key = dataset[i]
        if p["size"] is not None:
            image = resize_image(image.unsqueeze(0), p["size"])[0]
            label = resize_label(label.unsqueeze(0), p["size"])[0]
        else:
            image = resize_image(image.unsqueeze(0), tuple(image.shape[-2:]))[0]
        broken, missing = degrade(label, ratio, p["block"], seed=seed_for(key, seed), mode=p["mode"])
        yield key, image, label, broken, missing


def evaluate(
    method: Method,
    dataset,
    num_classes: int,
    *,
    protocol: str = "paper",
    ratio: float = 0.5,
    seed: int | Sequence[int] = 0,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Run ``method`` on the degraded samples and return metrics (fractions) and images/s. Several seeds:
    every image is degraded once per seed and the metrics count all the draws together (``images`` counts
    each draw; ``seeds`` lists them); ``per_seed`` then lists ``{"seed", "pa_miou", "miou"}`` of each draw alone."""
    seeds = _seed_list(seed)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 (or None: every image), got {limit!r}")
    new = lambda: SegmentationMetrics(num_classes, unfilled_index=UNFILLED)  # noqa: E731
    metrics, per_seed = new(), {s: new() for s in seeds}
    batch, seconds, count = [], 0.0, 0

    def flush():
        nonlocal seconds, count
        draws, samples = zip(*batch, strict=True)
        _, images, labels, brokens, missings = zip(*samples, strict=True)
        t = time.perf_counter()
        preds = method(list(images), list(brokens), list(missings))
        seconds += time.perf_counter() - t
        for s, pred, label, missing in zip(draws, preds, labels, missings, strict=True):
            pred = pred.cpu()
            metrics.update(pred, label, missing)
            per_seed[s].update(pred, label, missing)
        count += len(batch)
        batch.clear()

    for s in seeds:
        for sample in degraded_samples(dataset, protocol=protocol, ratio=ratio, seed=s, limit=limit):
            batch.append((s, sample))
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    out = metrics.compute()
    out.update(images=count, seconds=seconds, images_per_s=count / seconds if seconds else float("nan"), seeds=seeds)
    if len(seeds) > 1:
        out["per_seed"] = [{"seed": s, **_headline(m.compute())} for s, m in per_seed.items()]
    return out


def _seed_list(seed) -> list[int]:
    """``seed`` (an int, or a non-empty sequence of distinct ints; numpy integers count) as a list."""
    items = [seed] if not isinstance(seed, (list, tuple, range)) else list(seed)
    try:
        if not items or any(isinstance(s, (bool, float)) for s in items):
            raise TypeError
        seeds = [operator.index(s) for s in items]
    except TypeError:
        seeds = []
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"seed must be an int or a non-empty sequence of distinct ints, got {seed!r}")
    return seeds


def _headline(res: dict) -> dict:
    """The headline figures of one draw."""
    return {"pa_miou": res["pa_miou"], "miou": res["miou"]}
