"""Conversions between the caller's types and tensors, and palette PNG read / write.

Accepted images: ``PIL.Image`` (RGB, or L which is replicated to RGB), ``numpy`` ``HxWx3`` uint8 (or
``HxW`` gray), ``torch`` ``3xHxW`` uint8 / float in [0, 1], ``tv_tensors.Image``. Accepted labels:
``PIL.Image`` (P / L / I), ``numpy`` ``HxW`` int, ``torch`` ``HxW`` (or ``1xHxW``) int, ``tv_tensors.Mask``.
Outputs come back as the label's own type, size, dtype (and palette for a 'P' image).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

_LABEL_MODES = ("P", "L", "I", "I;16")


def image_to_tensor(image, name: str = "image") -> torch.Tensor:
    """Any accepted image -> ``[3, H, W]`` (uint8, or float in [0, 1]) on the CPU."""
    if isinstance(image, Image.Image):
        if image.mode in ("L", "I;16", "I", "F"):
            image = image.convert("L").convert("RGB")
        elif image.mode in ("RGBA", "LA", "CMYK", "PA"):
            raise ValueError(
                f"{name}: PIL mode {image.mode!r} has {len(image.getbands())} channels; convert it "
                f"first, e.g. image.convert('RGB')"
            )
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            alpha = "; drop the alpha channel: image[..., :3]" if arr.ndim == 3 and arr.shape[2] == 4 else ""
            raise ValueError(f"{name}: numpy image must be HxWx3 RGB (or HxW gray), got shape {arr.shape}{alpha}")
        arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)  # never written to
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            alpha = "; drop the alpha channel: image[:3]" if t.ndim == 3 and t.shape[0] == 4 else ""
            raise ValueError(
                f"{name}: tensor image must be 3xHxW RGB (or 1xHxW / HxW gray), got shape {tuple(t.shape)}{alpha}"
            )
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        t = t.as_subclass(torch.Tensor)
    else:
        raise TypeError(f"{name}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if t.dtype == torch.uint8:
        return t
    if t.dtype.is_floating_point:
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise ValueError(
                f"{name}: float images must be in [0, 1], got values in [{float(t.min()):.3g}, {float(t.max()):.3g}];"
                " pass uint8 for 0..255"
            )
        return t.float()
    raise ValueError(f"{name}: image dtype {t.dtype} not supported; use uint8 (0..255) or float (0..1)")


def label_to_tensor(label, name: str = "label") -> torch.Tensor:
    """Any accepted label -> ``int64 [H, W]`` on the CPU (a copy; the input is never modified)."""
    if isinstance(label, Image.Image):
        if label.mode not in _LABEL_MODES:
            raise ValueError(f"{name}: PIL mode {label.mode!r} is not a label; expected one of {_LABEL_MODES}")
        return torch.from_numpy(np.array(label).astype(np.int64))
    if isinstance(label, np.ndarray):
        arr = label
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: numpy label must be an HxW integer array, got {arr.dtype} {arr.shape}")
        return torch.from_numpy(arr.astype(np.int64))
    if isinstance(label, torch.Tensor):
        t = label.detach().cpu().as_subclass(torch.Tensor)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"{name}: tensor label must be an HxW integer tensor, got {t.dtype} {tuple(label.shape)}")
        return t.to(torch.int64, copy=True)
    raise TypeError(f"{name}: expected a PIL image, numpy array or torch tensor, got {type(label).__name__}")


def missing_to_tensor(missing, shape, name: str = "missing") -> torch.Tensor:
    """A boolean HxW map (numpy, tensor or PIL) -> ``bool [H, W]``, checked against ``shape``."""
    if isinstance(missing, Image.Image):
        missing = np.array(missing) > 0
    t = torch.as_tensor(np.asarray(missing) if not isinstance(missing, torch.Tensor) else missing.detach().cpu())
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)} differs from the label's {tuple(shape)}")
    return t.as_subclass(torch.Tensor).bool()


def label_like(values: torch.Tensor, like):
    """``int64 [H, W]`` -> the type, shape, dtype (and palette) of ``like``."""
    if isinstance(like, Image.Image):
        arr = values.numpy()
        if like.mode == "P":
            out = Image.fromarray(arr.astype(np.uint8), mode="P")
            pal = like.getpalette()
            if pal is not None:
                out.putpalette(pal)
            if "transparency" in like.info:
                out.info["transparency"] = like.info["transparency"]
            return out
        if like.mode == "L":
            return Image.fromarray(arr.astype(np.uint8), mode="L")
        if like.mode == "I;16":
            return Image.fromarray(arr.astype(np.uint16))  # mode I;16
        return Image.fromarray(arr.astype(np.int32), mode="I")
    if isinstance(like, np.ndarray):
        return values.numpy().astype(like.dtype).reshape(like.shape)
    if isinstance(like, torch.Tensor):
        out = values.to(like.dtype).reshape(like.shape).to(like.device)
        return type(like)(out) if type(like) is not torch.Tensor else out  # tv_tensors.Mask stays a Mask
    raise TypeError(f"cannot convert to {type(like).__name__}")


def confidence_like(conf: torch.Tensor, like):
    """``float [H, W]`` -> numpy float32 for PIL / numpy labels, a tensor (label's shape) for tensors."""
    if isinstance(like, torch.Tensor):
        return conf.reshape(like.shape).to(like.device).as_subclass(torch.Tensor)
    return conf.numpy().astype(np.float32)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``. The temp
    file is ``.<name>.<pid>.<random>.tmp``: the pid tells a dead run's leftovers from a live one's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_label_png(values, path: str | Path, palette: list[int] | None = None) -> None:
    """Write class ids as a palette PNG atomically (``palette`` kept when given)."""
    arr = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError(f"{path}: class ids must be in 0..255 for a palette PNG")
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(full_palette(palette))
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def full_palette(palette: list[int] | None) -> list[int]:
    """``palette`` padded to 256 entries with :func:`default_palette`'s colours (or that palette when
    None). A shorter palette would make Pillow write a PNG of lower bit depth, silently changing every
    id at or above its length."""
    base = default_palette()
    if not palette:
        return base
    palette = list(palette)[:768]
    return palette + base[len(palette) :]


def default_palette() -> list[int]:
    """Pascal VOC's colour map (256 entries) for class ids."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal
