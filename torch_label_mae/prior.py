"""Label prior: nearest-label fill of the unknown pixels, in torch (CPU or CUDA, batched).

Each unknown pixel takes the class of the nearest known pixel (Euclidean), computed with the jump
flooding algorithm (log2(max(H, W)) + 1 passes of 9 shifted comparisons). This is the classical
"nearest fill" baseline; models built with ``label_prior=True`` start from it and learn what it gets
wrong.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_FAR = 1.0e6


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]`` with ``_FAR`` outside."""
    h, w = t.shape[-2:]
    pad = (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0))
    t = F.pad(t, pad, value=_FAR)
    y0, x0 = max(dy, 0), max(dx, 0)
    return t[..., y0 : y0 + h, x0 : x0 + w]


@torch.no_grad()
def nearest_source(known: torch.Tensor) -> torch.Tensor:
    """``known [B, H, W]`` bool -> flat index ``[B, H, W]`` int64 of the nearest known pixel
    (-1 where a sample has no known pixel)."""
    b, h, w = known.shape
    ys = torch.arange(h, device=known.device, dtype=torch.float32).view(1, h, 1).expand(b, h, w)
    xs = torch.arange(w, device=known.device, dtype=torch.float32).view(1, 1, w).expand(b, h, w)
    own = torch.stack([ys, xs], 1)  # [B, 2, H, W]
    best = torch.where(known.unsqueeze(1), own, torch.full_like(own, _FAR))
    steps = [2**k for k in range(max(math.ceil(math.log2(max(h, w))) - 1, 0), -1, -1)] + [1]
    for s in steps:
        dist = ((best - own) ** 2).sum(1)  # [B, H, W]
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                if dy == 0 and dx == 0:
                    continue
                cand = _shift(best, dy, dx)
                cdist = ((cand - own) ** 2).sum(1)
                better = cdist < dist
                best = torch.where(better.unsqueeze(1), cand, best)
                dist = torch.where(better, cdist, dist)
    found = best[:, 0] < _FAR / 2
    idx = (best[:, 0] * w + best[:, 1]).long()
    return torch.where(found, idx, torch.full_like(idx, -1))


@torch.no_grad()
def nearest_fill(label: torch.Tensor, known: torch.Tensor | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Fill every pixel with the class of the nearest known pixel.

    ``label [B, H, W]`` int; ``known`` defaults to ``label != ignore_index``. Samples without any
    known pixel come back as all ``ignore_index``.
    """
    if known is None:
        known = label != ignore_index
    src = nearest_source(known)
    flat = label.flatten(1)
    out = flat.gather(1, src.clamp(min=0).flatten(1)).view_as(label)
    return torch.where(src >= 0, out, torch.full_like(out, ignore_index))
