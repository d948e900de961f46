"""Stack Fuse (paper section III-A): one-hot label channels stacked on the image.

The fuse map of a label ``[B, H, W]`` (class ids, ``ignore_index`` = void / unknown) and an image
``[B, 3, H, W]`` is ``[B, N + 3, H, W]``: channels ``0..N-1`` are the one-hot label (all zero on void
pixels), channels ``N..N+2`` the normalised image.

Image contract: ``image`` is RGB, either ``float`` in ``[0, 1]`` (torchvision's
``ToDtype(torch.float32, scale=True)``) or ``uint8`` in ``[0, 255]``. :func:`normalize_image` maps it
to ImageNet mean / std, which is what every model in this package sees.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 (0..255) or float (0..1) RGB -> float, ImageNet-normalised."""
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def one_hot_label(label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``label [B, H, W]`` int -> ``[B, N, H, W]`` float one-hot; void pixels are all zero."""
    valid = (label >= 0) & (label < num_classes) & (label != ignore_index)
    safe = torch.where(valid, label, torch.zeros_like(label)).long().unsqueeze(1)  # [B, 1, H, W]
    b, h, w = label.shape
    out = torch.zeros(b, num_classes, h, w, device=label.device)
    return out.scatter_(1, safe, valid.unsqueeze(1).float())  # [B, N, H, W]


def fuse_map(image: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Stack Fuse, eq. (1): ``Concat(l_1, ..., l_N, image)`` -> ``[B, N + 3, H, W]``."""
    if image.shape[0] != label.shape[0] or image.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or size")
    return torch.cat([one_hot_label(label, num_classes, ignore_index), normalize_image(image)], dim=1)
