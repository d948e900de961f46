"""Conversions between the caller's types and tensors, and palette PNG read / write.

Accepted images: ``PIL.Image`` (RGB, or one-channel gray replicated to RGB: see :func:`gray_to_uint8`
for 16-bit and float gray), ``numpy`` ``HxWx3`` uint8 (or ``HxW`` gray), ``torch`` ``3xHxW`` uint8 /
float in [0, 1] (finite), ``tv_tensors.Image``. Accepted labels: ``PIL.Image`` (P / L / I), ``numpy``
``HxW`` int, ``torch`` ``HxW`` (or ``1xHxW``) int, ``tv_tensors.Mask``; colour-coded labels (PIL 'RGB',
``HxWx3`` / ``3xHxW`` uint8) with a colour table (:mod:`torch_label_mae.colors`). Images and labels must have at
least one pixel. Outputs come back as the label's own type, size, dtype (and palette for a 'P' image).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LABEL_MODES = ("P", "L", "I", "I;16")  # PIL modes of a label of class ids (palette or grayscale)
COLOR_HINT = (
    "a colour-coded label is read with a colour table: pass colors= (a ColorTable, 'camvid', 'cityscapes', "
    "'voc' or a JSON table file; see torch_label_mae.colors), e.g. complete(image, label, colors='camvid')"
)


def image_to_tensor(image, name: str = "image") -> torch.Tensor:
    """Any accepted image -> ``[3, H, W]`` (uint8, or float in [0, 1]) on the CPU.

    Raises ``ValueError`` naming ``name`` for an image without pixels (``H`` or ``W`` is 0), a float
    image with NaN / inf values or values outside [0, 1] by more than :data:`F_UNIT_SLACK` (within it they
    are clipped), and a gray image :func:`gray_to_uint8` refuses.
    """
    if isinstance(image, Image.Image):
        values = np.array(image, dtype=np.float32) if image.mode == "F" else None
        if values is not None and values.size and np.isfinite(values).all() and _float_range(values) == 1.0:
            return image_to_tensor(torch.from_numpy(np.clip(values, 0.0, 1.0)), name)  # as a float tensor
        if image.mode in WIDE_GRAY_MODES:
            gray = torch.from_numpy(gray_to_uint8(image, name))
            return check_not_empty(gray.unsqueeze(0).expand(3, -1, -1), name)
        if image.mode == "L":
            image = image.convert("RGB")
        elif image.mode in ("RGBA", "LA", "CMYK", "PA"):
            raise ValueError(
                f"{name}: PIL mode {image.mode!r} has {len(image.getbands())} channels; convert it "
                f"first, e.g. image.convert('RGB')"
            )
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return check_not_empty(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1), name)
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
    check_not_empty(t, name)
    if t.dtype == torch.uint8:
        return t
    if t.dtype.is_floating_point:
        _check_range(t, name)
        return t.float().clamp(0.0, 1.0)  # a resampling's small over- and undershoot, clipped as for 'F'
    sixteen = "; a 16-bit image: image // 257 as uint8, or image / 65535 as float" if t.dtype == torch.uint16 else ""
    raise ValueError(f"{name}: image dtype {t.dtype} not supported; use uint8 (0..255) or float (0..1){sixteen}")


def label_to_tensor(label, name: str = "label") -> torch.Tensor:
    """Any accepted label -> ``int64 [H, W]`` on the CPU (a copy; the input is never modified).

    Raises ``ValueError`` naming ``name`` for a label without pixels (``H`` or ``W`` is 0)."""
    return check_not_empty(_label_to_tensor(label, name), name, "label")


def _label_to_tensor(label, name: str) -> torch.Tensor:
    if isinstance(label, Image.Image):
        if label.mode not in LABEL_MODES:
            colour = f"; {COLOR_HINT}" if label.mode in ("RGB", "RGBA") else ""
            raise ValueError(f"{name}: PIL mode {label.mode!r} is not a label; expected one of {LABEL_MODES}{colour}")
        return torch.from_numpy(np.array(label).astype(np.int64))
    if isinstance(label, np.ndarray):
        arr = label
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            hint = _label_hint(arr.shape, arr.dtype == bool, channels=arr.shape[2] if arr.ndim == 3 else 0)
            raise ValueError(f"{name}: numpy label must be an HxW integer array, got {arr.dtype} {arr.shape}{hint}")
        return torch.from_numpy(arr.astype(np.int64))
    if isinstance(label, torch.Tensor):
        t = label.detach().cpu().as_subclass(torch.Tensor)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
            hint = _label_hint(tuple(t.shape), t.dtype == torch.bool, channels=t.shape[0] if t.ndim == 3 else 0)
            raise ValueError(
                f"{name}: tensor label must be an HxW integer tensor, got {t.dtype} {tuple(label.shape)}{hint}"
            )
        return t.to(torch.int64, copy=True)
    raise TypeError(f"{name}: expected a PIL image, numpy array or torch tensor, got {type(label).__name__}")


def _label_hint(shape: tuple[int, ...], boolean: bool, channels: int) -> str:
    """What to do with a refused label of ``shape``: a colour label (3 channels; 4: RGBA; a batch of 3 or 4
    labels looks the same), an HxWx1 label, a batch or a boolean mask."""
    ndim, batch = len(shape), "complete_batch(images, list(labels))"
    if ndim == 3 and shape[2] == 1 and channels not in (3, 4):
        return f"; an HxWx1 label: pass label[..., 0] (a batch of labels: {batch})"
    if channels == 3:
        return f"; {COLOR_HINT} (a batch of labels: {batch})"
    if channels == 4:
        return f"; an RGBA colour label: drop its alpha (label[..., :3] / label[:3]), pass colors= (a batch: {batch})"
    if ndim == 3:
        return f"; for a batch of labels: {batch}"
    return "; a boolean mask is no label: its ids as integers, e.g. mask.astype(np.uint8)" if boolean else ""


F_UNIT_SLACK = 0.15  # a [0, 1] 'F' image may leave its range by this much (a resampling's over- and undershoot)
F_BYTE_FLOOR = 4.0  # an 'F' image whose largest value is at least this is a 0..255 one


def _float_range(values: np.ndarray) -> float | None:
    """1.0 or 255.0: the range of a PIL 'F' image's finite ``values`` (clipped to it later): [0, 1] within
    :data:`F_UNIT_SLACK` of it, else 0..255 when the largest value reaches :data:`F_BYTE_FLOOR` (and none
    is beyond once the range below it or twice above). None (refused) otherwise, between the two too: a
    [0, 1] image resampled far past its range and a dark 0..255 one cannot be told apart."""
    lo, hi = float(values.min()), float(values.max())
    if lo >= -F_UNIT_SLACK and hi <= 1.0 + F_UNIT_SLACK:
        return 1.0
    return 255.0 if F_BYTE_FLOOR <= hi <= 510.0 and lo >= -255.0 else None


WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one channel, more than 8 bits a pixel


def gray_to_uint8(image: Image.Image, name: str = "image") -> np.ndarray:
    """A one-channel PIL image of more than 8 bits (:data:`WIDE_GRAY_MODES`) -> ``uint8 [H, W]``.

    - ``I;16`` (16-bit, e.g. a 16-bit gray PNG): ``round(v / 257)``, the standard 16 -> 8 bit scaling
      (0 -> 0, 65535 -> 255, ``257 * k`` -> ``k``), the same for every image: never by the image's own
      range, so equal values read equally across a dataset.
    - ``I`` (32-bit int, no bit depth of its own): as is when every value is in 0..255; as 16-bit
      (``round(v / 257)``) when the values reach above 255 but stay in 0..65535; refused otherwise.
    - ``F`` (32-bit float): in [0, 1] (a float image, as torchvision reads 'F'): ``round(v * 255)``; else
      in 0..255 (as Pillow's ``convert("L")`` reads it): ``round(v)``; a resampling's over- and undershoot
      is clipped to the range; refused when a value is NaN / inf, far outside both, or between them, where
      the two cannot be told apart (:func:`_float_range`). As the 'I' mode, it is read by its values.

    ``convert("L")`` alone would clip every 16-bit value above 255 to white. Raises ``ValueError``
    naming ``name`` for values it cannot map.
    """
    if image.mode == "F":
        values = np.array(image, dtype=np.float32)
        _check_finite(torch.from_numpy(values).unsqueeze(0), name)
        top = _float_range(values) if values.size else 255.0
        if top is None:
            lo, hi = float(values.min()), float(values.max())
            raise ValueError(
                f"{name}: PIL mode 'F' image has values in [{lo:.9g}, {hi:.9g}]; expected 0..1 or 0..255 (a largest "
                f"value between {1 + F_UNIT_SLACK:g} and {F_BYTE_FLOOR:g} could be either: clip or scale it first)"
            )
        return np.round(np.clip(values, 0.0, top) * (255.0 / top)).astype(np.uint8)
    if image.mode not in WIDE_GRAY_MODES:
        raise ValueError(f"{name}: PIL mode {image.mode!r} is not a wide gray mode {WIDE_GRAY_MODES}")
    arr = np.asarray(image).astype(np.int64)
    if image.mode == "I" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"{name}: PIL mode 'I' image has values in [{lo}, {hi}]; expected 0..255 (8-bit) or 0..65535 (16-bit)"
            )
        if hi <= 255:
            return arr.astype(np.uint8)
    return ((arr + 128) // 257).astype(np.uint8)  # round(v / 257), exactly, in integers


def check_not_empty(t: torch.Tensor, name: str, what: str = "image") -> torch.Tensor:
    """``t`` (``[..., H, W]``) unchanged; ``ValueError`` naming ``name`` when it has no pixels."""
    if t.ndim < 2 or t.shape[-1] == 0 or t.shape[-2] == 0:
        hw = tuple(t.shape[-2:])
        raise ValueError(f"{name}: empty {what} of (H, W) = {hw}; it needs at least one pixel")
    return t


def _check_range(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` unless the float image ``t`` is finite and in [0, 1], within
    :data:`F_UNIT_SLACK` of it (a bicubic or Lanczos resize's over- and undershoot; clipped after)."""
    _check_finite(t, name)
    lo, hi = float(t.min()), float(t.max())
    if lo < -F_UNIT_SLACK or hi > 1.0 + F_UNIT_SLACK:  # 9 digits: 1.0000001 is not shown as 1
        raise ValueError(
            f"{name}: float images must be in [0, 1] (a resize's overshoot by up to {F_UNIT_SLACK:g} is clipped), "
            f"got values in [{lo:.9g}, {hi:.9g}]; pass uint8 for 0..255"
        )


def _check_finite(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name``, the count of NaN / inf pixels and the first one's position."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        per_pixel = bad.reshape(-1, *t.shape[-2:]).any(0)
        y, x = (int(v) for v in per_pixel.nonzero()[0])
        raise ValueError(
            f"{name}: {int(per_pixel.sum())} NaN / inf pixels (the first at (y, x) = ({y}, {x})); "
            "float images must be finite, in [0, 1]"
        )


def missing_to_tensor(missing, shape, name: str = "missing") -> torch.Tensor:
    """A boolean HxW map (numpy, tensor or PIL; numbers must be 0 or 1) -> ``bool [H, W]``, checked against
    ``shape``."""
    if isinstance(missing, Image.Image):
        missing = np.array(missing) > 0
    # np.array copies: a flipped (negative strides) or read-only map is taken as it is
    t = torch.as_tensor(np.array(missing) if not isinstance(missing, torch.Tensor) else missing.detach().cpu())
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)} differs from the label's {tuple(shape)}")
    t = t.as_subclass(torch.Tensor)
    if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):  # NaN, 0.3, 2, -1: not a mask
        bad = t[(t != 0) & (t != 1)].unique()[:5].tolist()
        raise ValueError(f"{name}: a missing map is boolean (or 0 / 1), got {t.dtype} values {bad}")
    return t.bool()


def label_like(values: torch.Tensor, like):
    """``int64 [H, W]`` -> the type, shape, dtype (and palette) of ``like``."""
    if isinstance(like, Image.Image):
        arr = values.numpy()
        if like.mode == "P":
            out = Image.fromarray(arr.astype(np.uint8), mode="P")
            if like.palette is not None:  # its own mode: an RGBA palette keeps its alpha
                mode = like.palette.mode
                out.putpalette(like.getpalette(mode), rawmode=mode)
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


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> ``float [B, 3, h, w]`` in [0, 1], bilinear with antialias."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` int -> ``[B, h, w]`` nearest."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label.unsqueeze(1).float(), size=size, mode="nearest-exact").squeeze(1).to(label.dtype)


def stack_images(images) -> torch.Tensor:
    """Same-size image tensors ``[3, H, W]`` -> ``[B, 3, H, W]``: uint8 when every one is, else float in [0, 1]."""
    dtype = torch.uint8 if all(t.dtype == torch.uint8 for t in images) else torch.float32
    return torch.stack([t if t.dtype == dtype else t.float() / 255.0 for t in images])


def batch_size_for(device: torch.device, batch_size: int | None) -> int:
    """``batch_size`` checked (an integer >= 1), or the labels per forward pass when the caller gives
    none: 64 on CUDA, 8 elsewhere."""
    if batch_size is None:
        return 64 if device.type == "cuda" else 8
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer >= 1, got {type(batch_size).__name__} {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, flush it to disk, then rename it over
    ``path``: a killed run or a power cut leaves the old file or the new one whole. The temp file is
    ``.<name>.<pid>.<random>.tmp``: the pid tells a dead run's leftovers from a live one's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file asked for, not the temp file that could not be made
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "r+b") as f:  # the bytes on disk before the name points at them (writable: Windows)
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LabelPalette(list):
    """A palette PNG's colours (``[r, g, b, ...]``, a list as ``Image.getpalette()`` gives) and its
    ``transparency`` (the tRNS chunk: one index, or alpha bytes per entry; None without), so that the
    labels written after it keep both."""

    def __init__(self, colours, transparency=None):
        super().__init__(colours)
        self.transparency = transparency


def save_label_png(values, path: str | Path, palette: list[int] | None = None) -> None:
    """Write class ids as a palette PNG atomically (``palette`` kept when given, and a
    :class:`LabelPalette`'s transparency); ids above 255 (those of a 16-bit label, without a palette) as a
    16-bit grayscale PNG."""
    arr = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
    if lo < 0 or hi > (255 if palette is not None else 65535):
        kind = "0..255 for a palette PNG" if palette is not None else "0..65535 for a PNG"
        raise ValueError(f"{path}: class ids must be in {kind}, got {lo}..{hi}")
    if hi > 255:
        im = Image.fromarray(arr.astype(np.uint16))  # mode I;16
        atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))
        return
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(full_palette(palette))
    transparency = getattr(palette, "transparency", None)
    extra = {} if transparency is None else {"transparency": transparency}
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG", **extra))


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
