"""Label prior: nearest-label fill of the unknown pixels.

Each unknown pixel takes the class of the nearest known pixel (Euclidean), the classical "nearest
fill" baseline. Models built with ``label_prior=True`` start from it and learn what it gets wrong.
The exact Euclidean distance transform comes from ``scipy.ndimage.distance_transform_edt`` (C code,
about 2 ms per 224 x 224 map on one core; it releases the GIL, so the maps of a batch are spread over
as many threads as torch uses); maps are moved to the CPU for it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt


@torch.no_grad()
def nearest_source(known: torch.Tensor) -> torch.Tensor:
    """``known [B, H, W]`` bool -> flat index ``[B, H, W]`` int64 of the nearest known pixel
    (-1 where a sample has no known pixel)."""
    b, h, w = known.shape
    k = known.detach().cpu().numpy()
    out = np.full((b, h, w), -1, dtype=np.int64)

    def one(i: int) -> None:
        if k[i].any():
            idx = np.empty((2, h, w), dtype=np.int32)
            distance_transform_edt(~k[i], return_distances=False, return_indices=True, indices=idx)
            out[i] = idx[0].astype(np.int64) * w + idx[1]

    workers = min(b, torch.get_num_threads())
    if workers > 1:  # scipy's transform releases the GIL: one map per thread
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(b)))
    else:
        for i in range(b):
            one(i)
    return torch.from_numpy(out).to(known.device)


@torch.no_grad()
def nearest_fill(label: torch.Tensor, known: torch.Tensor | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Fill every pixel with the class of the nearest known pixel.

    ``label [B, H, W]`` int; ``known`` defaults to ``label != ignore_index``. Samples without any
    known pixel come back as all ``ignore_index``. The input is not modified.
    """
    if known is None:
        known = label != ignore_index
    src = nearest_source(known)
    flat = label.flatten(1)
    out = flat.gather(1, src.clamp(min=0).flatten(1)).view_as(label)
    return torch.where(src >= 0, out, torch.full_like(out, ignore_index))
