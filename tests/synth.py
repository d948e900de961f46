"""Small synthetic datasets in the shared folder layout, made by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from torch_label_mae.io import default_palette

# the smallest model the tests build: 1 encoder and 1 decoder block of width 32, 8 px patches at 32 px
TINY_MODEL = dict(
    img_size=32,
    patch_size=8,
    encoder_depth=1,
    encoder_dim=32,
    encoder_heads=2,
    decoder_depth=1,
    decoder_dim=32,
    decoder_heads=2,
)


def make_pair(rng: np.random.Generator, h: int, w: int, num_classes: int):
    """An image whose colour follows its label (so there is something to learn) and the label."""
    label = np.zeros((h, w), dtype=np.uint8)
    for c in range(1, num_classes):
        y, x = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(max(2, h // 8), max(3, h // 3))
        yy, xx = np.ogrid[:h, :w]
        label[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = c
    colors = rng.integers(0, 255, (num_classes, 3))
    image = colors[label].astype(np.float64) + rng.normal(0, 10, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_dataset(
    root: Path, splits=(("train", 8), ("val", 4)), size=(48, 64), num_classes: int = 4, seed: int = 0
) -> Path:
    """Write ``root/dataset.json`` and ``root/<split>/{images,labels}`` with palette PNG labels."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = ["background"] + [f"class{i}" for i in range(1, num_classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"name": "synth", "classes": names, "ignore_index": 255}))
    for split, n in splits:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = make_pair(rng, *size, num_classes)
            Image.fromarray(image).save(root / split / "images" / f"{split}_{i:03d}.jpg", quality=95)
            lab = Image.fromarray(label, mode="P")
            lab.putpalette(default_palette())
            lab.save(root / split / "labels" / f"{split}_{i:03d}.png")
    return root


def voc_label(h: int, w: int, seed: int, num_classes: int, hole_value: int = 255) -> np.ndarray:
    """Class ids in 8 px blocks, VOC's 255 borders between them and a rectangular hole of ``hole_value``."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_classes, (-(-h // 8), -(-w // 8)))
    lab = np.kron(blocks, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
    edge = np.zeros_like(lab, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    lab[edge] = 255
    lab[h // 4 : h // 2, w // 3 : w - 2] = hole_value
    return lab


VOC_IDS = ["2007_000001", "2007_000002", "2007_000003"]
VOC_SIZES = [(37, 45), (32, 32), (50, 29)]  # (H, W), not multiples of the patch


def make_voc_tree(root: Path, image_of, label_of) -> Path:
    """``root/VOCdevkit/VOC2012`` as torchvision's ``VOCSegmentation`` reads it: ``JPEGImages``, palette PNG
    ``SegmentationClass`` and a ``train`` split of :data:`VOC_IDS` at :data:`VOC_SIZES`; ``image_of(i, h, w)``
    and ``label_of(i, h, w)`` give sample ``i``'s uint8 arrays. Returns ``root``."""
    base = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    for i, (name, (h, w)) in enumerate(zip(VOC_IDS, VOC_SIZES, strict=True)):
        Image.fromarray(image_of(i, h, w)).save(base / "JPEGImages" / f"{name}.jpg")
        lab = Image.fromarray(label_of(i, h, w), mode="P")
        lab.putpalette(default_palette())
        lab.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_IDS) + "\n")
    return Path(root)


def voc_segmentation(root: Path, transforms=None):
    """torchvision's ``VOCSegmentation`` over a :func:`make_voc_tree` folder (train split, no download)."""
    from torchvision import datasets

    return datasets.VOCSegmentation(str(root), year="2012", image_set="train", download=False, transforms=transforms)
