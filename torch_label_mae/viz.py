"""Side-by-side pictures: image | broken label | completed label | confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .io import atomic_write, default_palette


def colorize(label, palette: list[int] | None = None, missing_color=(255, 255, 255)) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` uint8; 255 (missing / void) drawn in ``missing_color``."""
    arr = label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    pal = np.array((palette or default_palette()) + [0] * 768, dtype=np.uint8)[:768].reshape(256, 3)
    rgb = pal[np.clip(arr, 0, 255).astype(np.uint8)]
    rgb[arr == 255] = missing_color
    return rgb


def heatmap(conf) -> np.ndarray:
    """Confidence ``[H, W]`` in [0, 1] -> RGB (dark red = low, yellow-white = high)."""
    c = np.clip(conf.numpy() if isinstance(conf, torch.Tensor) else np.asarray(conf), 0, 1)
    return (np.stack([np.ones_like(c), c, c**3], -1) * np.stack([np.sqrt(c) * 0.7 + 0.3] * 3, -1) * 255).astype(
        np.uint8
    )


def side_by_side(image, broken, completed, confidence=None, palette=None, titles=True) -> Image.Image:
    """One row: image | broken label | completed label | confidence (when given)."""
    img = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    panels = [img, colorize(broken, palette), colorize(completed, palette)]
    names = ["image", "broken label", "completed", "confidence"]
    if confidence is not None:
        panels.append(heatmap(confidence))
    h, w = panels[0].shape[:2]
    bar = 14 if titles else 0
    canvas = Image.new("RGB", (w * len(panels) + 4 * (len(panels) - 1), h + bar), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(panels):
        x = i * (w + 4)
        canvas.paste(Image.fromarray(p), (x, bar))
        if titles:
            draw.text((x + 2, 1), names[i], fill=(0, 0, 0))
    return canvas


def save_grid(rows: list[Image.Image], path: str | Path) -> Path:
    """Stack rows vertically and write a PNG atomically."""
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows) + 4 * (len(rows) - 1)), (255, 255, 255))
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + 4
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return Path(path)
