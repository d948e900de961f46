"""Datasets and label degradation.

- :class:`FolderDataset`: the layout of ``<root>/dataset.json``, ``<root>/<split>/images/<id>.jpg``,
  ``<root>/<split>/labels/<id>.png`` (palette PNGs of class ids, 255 = void).
- :func:`voc_dataset`, :func:`cityscapes_dataset`: torchvision's ``VOCSegmentation`` and
  ``Cityscapes`` (train ids, 255 ignore) returning the same ``(image, label)`` pairs.
- :func:`degrade`: the paper's broken labels, seeded per image id so every method sees the same holes.

Samples are ``(image uint8 [3, H, W], label int64 [H, W])`` tensors plus the id.
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import LABEL_MODES, LabelPalette, check_not_empty
from .label_sets import CITYSCAPES_CLASSES, VOC_CLASSES
from .masking import hidden_to_pixels, random_masking
from .outputs import check_outputs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DatasetInfo:
    """What ``dataset.json`` says: name, class names, ignore index, background class (or None)."""

    name: str
    classes: list[str]
    ignore_index: int = 255
    background_index: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def load(cls, root: str | Path) -> DatasetInfo:
        path = Path(root) / "dataset.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a dataset root holds dataset.json and <split>/images, <split>/labels; "
                'dataset.json names the classes, e.g. {"classes": ["road", "sky"], "ignore_index": 255}'
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            classes = list(d["classes"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected a JSON object with a 'classes' list ({e})") from None
        bg = d.get("background_index")
        if bg is None and classes and classes[0] in ("background", "null", "_background_"):
            bg = 0
        return cls(d.get("name", Path(root).name), classes, int(d.get("ignore_index", 255)), bg)


def read_image(path: str | Path) -> torch.Tensor:
    """Image file -> ``uint8 [3, H, W]`` (gray replicated to RGB; 16-bit gray scaled to 8 bits by
    ``round(v / 257)``, see :func:`~torch_label_mae.io.gray_to_uint8`).

    Raises ``ValueError`` naming the file if it is unreadable, empty (``H`` or ``W`` is 0) or holds
    values that cannot be mapped to 8 bits (NaN in a float image or values outside 0..255, negative 32-bit
    values)."""
    from .io import WIDE_GRAY_MODES, gray_to_uint8

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in WIDE_GRAY_MODES:
                wide, arr = im.copy(), None
            else:
                wide, arr = None, np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt files
        raise ValueError(f"{path}: cannot read image: {e}") from None
    if wide is not None:
        arr = np.repeat(gray_to_uint8(wide, str(path))[:, :, None], 3, axis=2)
    return check_not_empty(torch.from_numpy(arr.copy()).permute(2, 0, 1), str(path))


def read_label(path: str | Path) -> torch.Tensor:
    """Label PNG (palette or grayscale, pixel = class id) -> ``int64 [H, W]``; raises ``ValueError``
    naming the file if it is unreadable, not a label mode or empty (``H`` or ``W`` is 0)."""
    return read_label_and_palette(path)[0]


def read_label_and_palette(path: str | Path) -> tuple[torch.Tensor, list[int] | None]:
    """:func:`read_label` and the file's palette (a :class:`~torch_label_mae.io.LabelPalette`, its
    transparency kept; None unless a palette PNG), from one read."""
    try:
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                raise ValueError(f"mode {im.mode!r}; expected a palette or grayscale PNG of class ids")
            palette = LabelPalette(im.getpalette(), im.info.get("transparency")) if im.mode == "P" else None
            arr = np.asarray(im)
    except Exception as e:
        raise ValueError(f"{path}: cannot read label: {e}") from None
    return check_not_empty(torch.from_numpy(arr.astype(np.int64)), str(path), "label"), palette


@dataclass(frozen=True)
class Item:
    """One file of the dataset: its id, image and label paths (None when missing) and a reason when
    it cannot be completed before anything is read (unpaired, ambiguous)."""

    key: str
    image: Path | None
    label: Path | None
    problem: str | None = None

    @property
    def name(self) -> str:
        """The file name reported and written (the label's name; ``<id>.png`` without label)."""
        return self.label.name if self.label is not None else f"{self.key}.png"


# ----------------------------------------------------------------------------------------------------
# file lists, pairing, sharding
# ----------------------------------------------------------------------------------------------------
def _listing(folder: Path, exts) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        out.setdefault(p.stem, []).append(p)
    return out


def list_pairs(images_dir: str | Path, labels_dir: str | Path) -> list[Item]:
    """Every id of ``images_dir`` (image files) and ``labels_dir`` (``.png``), sorted; unpaired or
    ambiguous ids come back with ``problem`` set instead of raising."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: {'a file, not a folder' if d.exists() else 'no such folder'}")
    images, labels = _listing(images_dir, IMAGE_EXTS), _listing(labels_dir, (".png",))
    items = []
    for key in sorted(set(images) | set(labels)):
        ims, labs = sorted(images.get(key, [])), sorted(labels.get(key, []))
        im, lab = (ims[0] if ims else None), (labs[0] if labs else None)
        problem = None
        if len(ims) > 1:
            problem = f"ambiguous: several images share the id {key!r} ({', '.join(p.name for p in ims)})"
        elif len(labs) > 1:
            problem = f"ambiguous: several labels share the id {key!r} ({', '.join(p.name for p in labs)})"
        elif lab is None:
            problem = f"unpaired: image {im.name} has no label {key}.png in {labels_dir}"
        elif im is None:
            problem = f"unpaired: label {lab.name} has no image {key}.* in {images_dir}"
        items.append(Item(key, im, lab, problem))
    return items


def pair_files(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(id, image_path, label_path)]`` sorted by id (:func:`list_pairs`); raises if a folder is missing or
    a file unpaired or ambiguous."""
    items = list_pairs(images_dir, labels_dir)
    bad = [it for it in items if it.problem is not None]
    if bad:
        which = [f"{it.key} ({it.problem})" for it in bad[:5]]
        raise ValueError(f"{len(bad)} unpaired or ambiguous files in {images_dir} / {labels_dir}: {'; '.join(which)}")
    return [(it.key, it.image, it.label) for it in items]


class FolderDataset(torch.utils.data.Dataset):
    """``<root>/<split>/images`` + ``<root>/<split>/labels``; items ``(image, label, id)``.

    ``transform(image, label) -> (image, label)`` is applied when given.
    """

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset root not found")
        self.info = DatasetInfo.load(self.root)
        self.split = split
        self.items = pair_files(self.root / split / "images", self.root / split / "labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        key, ip, lp = self.items[i]
        image, label = read_image(ip), read_label(lp)
        if image.shape[-2:] != label.shape:
            raise ValueError(f"{ip} is {tuple(image.shape[-2:])} but {lp} is {tuple(label.shape)} (H, W)")
        n, ignore = self.info.num_classes, self.info.ignore_index
        bad = label[(label != ignore) & ((label < 0) | (label >= n))]
        if bad.numel():
            raise ValueError(
                f"{lp}: {bad.numel()} pixels have ids {bad.unique()[:5].tolist()} outside the {n} classes of "
                f"{self.root / 'dataset.json'} (ids 0..{n - 1}, {ignore} = ignore)"
            )
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label, key


def voc_dataset(root: str | Path, image_set: str = "train", year: str = "2012", download: bool = False):
    """Pascal VOC through torchvision's ``VOCSegmentation`` -> ``(image, label, id)`` tensors
    (21 classes, 0 = background, 255 = void boundary)."""
    from torchvision.datasets import VOCSegmentation

    ds = VOCSegmentation(str(root), year=year, image_set=image_set, download=download)
    return _TorchvisionPairs(ds, [Path(p).stem for p in ds.images], info=DatasetInfo("voc", list(VOC_CLASSES), 255, 0))


# Cityscapes id -> train id (19 classes), everything else 255
_CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def cityscapes_dataset(root: str | Path, split: str = "train"):
    """Cityscapes (fine) through torchvision's ``Cityscapes`` with labels mapped to the 19 train ids."""
    from torchvision.datasets import Cityscapes

    ds = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    lut = torch.full((256,), 255, dtype=torch.int64)
    for k, v in _CITYSCAPES_TRAIN_IDS.items():
        lut[k] = v
    info = DatasetInfo("cityscapes", list(CITYSCAPES_CLASSES), 255, None)
    return _TorchvisionPairs(ds, [Path(p).stem for p in ds.images], lut, info=info)


def open_dataset(root: str | Path, split: str = "train", kind: str = "folder"):
    """A dataset with ``.info`` (:class:`DatasetInfo`) by kind: ``folder`` (this package's layout),
    ``voc`` (``VOCSegmentation``; ``split`` is the image set) or ``cityscapes``."""
    if kind == "folder":
        return FolderDataset(root, split)
    if kind not in ("voc", "cityscapes"):
        raise ValueError(f"dataset kind must be 'folder', 'voc' or 'cityscapes', got {kind!r}")
    try:
        return voc_dataset(root, image_set=split) if kind == "voc" else cityscapes_dataset(root, split)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        if "not found" not in str(e).lower():
            raise
        raise FileNotFoundError(f"{root}: no {kind} dataset there (torchvision: {e})") from None


class _TorchvisionPairs(torch.utils.data.Dataset):
    def __init__(self, ds, ids, lut=None, info: DatasetInfo | None = None):
        self.ds, self.ids, self.lut, self.info = ds, ids, lut, info

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, lab = self.ds[i]
        image = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        label = torch.from_numpy(np.asarray(lab).astype(np.int64))
        if self.lut is not None:
            label = self.lut[label]
        return image, label, self.ids[i]


# -- degradation --------------------------------------------------------------------------------------
def seed_for(key: str, seed: int = 0) -> int:
    """A stable per-image seed (crc32 of ``"<seed>:<id>"``): every method sees the same holes."""
    return zlib.crc32(f"{seed}:{key}".encode())


def degrade(
    label: torch.Tensor,
    ratio: float = 0.5,
    patch_size: int = 16,
    *,
    seed: int | str = 0,
    mode: str = "patches",
    ignore_index: int = 255,
):
    """Break a label the paper's way: hide ``round(ratio * L)`` of its ``patch_size`` patches.

    ``label [H, W]`` int. ``mode="patches"`` needs ``H`` and ``W`` to be multiples of ``patch_size``
    (the paper protocol at 224 px); ``mode="blocks"`` works at any resolution, covering the image with
    a grid of ``patch_size`` blocks (partial blocks at the right / bottom edge) and hiding a ratio of
    them. ``seed`` may be an int or an image id (hashed with :func:`seed_for`).

    Returns ``(broken [H, W], missing [H, W] bool)``: ``broken`` is a copy with missing pixels set to
    ``ignore_index``; the input is never modified. Raises ``ValueError`` for ``ratio`` outside [0, 1]
    and ``patch_size`` below 1.
    """
    check_degrade_args(ratio, patch_size)
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W], got {tuple(label.shape)}")
    if mode not in ("patches", "blocks"):
        raise ValueError(f"mode must be 'patches' or 'blocks', got {mode!r}")
    h, w = label.shape
    if mode == "patches" and (h % patch_size or w % patch_size):
        raise ValueError(f"label {h}x{w} is not a multiple of patch_size {patch_size}; use mode='blocks'")
    gh, gw = -(-h // patch_size), -(-w // patch_size)
    g = torch.Generator().manual_seed(seed_for(seed) if isinstance(seed, str) else int(seed))
    hidden = random_masking(1, gh * gw, ratio, generator=g)
    missing = hidden_to_pixels(hidden, (gh, gw), patch_size)[0, :h, :w].to(label.device)
    broken = torch.where(missing, torch.full_like(label, ignore_index), label)
    return broken, missing


def check_degrade_args(ratio: float, patch_size: int, name: str = "patch_size") -> None:
    """``ValueError`` unless ``0 <= ratio <= 1`` and ``patch_size`` is an integer >= 1 (``name`` is
    what the caller calls it, e.g. ``block``)."""
    try:
        r = None if isinstance(ratio, (bool, str)) else float(ratio)
    except (TypeError, ValueError):
        r = None
    if r is None or not 0.0 <= r <= 1.0:  # also refuses NaN
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"{name} must be an integer >= 1 (pixels), got {patch_size!r}")


# -- degrading a folder of labels (to try the library on labels whose truth is known) --------------------
def degrade_folder(
    labels_dir, out_dir, *, ratio: float = 0.5, block: int = 32, seed: int = 0, missing_index: int = 255
) -> int:
    """Write a degraded copy of every label PNG in ``labels_dir`` to ``out_dir`` (palette kept, atomic
    writes, inputs untouched; hidden files skipped, as completion skips them). Holes are seeded per file
    id. Returns the number written.

    Raises ``ValueError`` before writing anything for ``ratio`` outside [0, 1], ``block`` below 1 or
    ``missing_index`` outside 0..255 (the palette PNGs hold 8-bit ids)."""
    from .io import save_label_png

    check_degrade_args(ratio, block, "block")
    if isinstance(missing_index, bool) or not isinstance(missing_index, (int, np.integer)):
        raise ValueError(f"missing_index must be an integer in 0..255, got {missing_index!r}")
    if not 0 <= missing_index <= 255:
        raise ValueError(f"missing_index must be in 0..255 (8-bit palette PNG ids), got {missing_index}")
    src, dst = Path(labels_dir).resolve(), Path(out_dir).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: {'a file, not a folder' if src.exists() else 'no such folder'}")
    check_outputs([("out_dir", dst)], [("labels folder", src)])
    files = sorted(p for same in _listing(src, (".png",)).values() for p in same)  # as complete and fit list them
    holding = 0  # labels that already hold the missing index: their own void, most likely
    for p in files:
        label, palette = read_label_and_palette(p)
        holding += bool((label == missing_index).any())
        broken, _ = degrade(label, ratio, block, seed=seed_for(p.stem, seed), mode="blocks", ignore_index=missing_index)
        save_label_png(broken, dst / p.name, palette)
    if holding:
        other = 254 if missing_index == 255 else 255
        warnings.warn(
            f"{holding} of {len(files)} labels in {src} already hold {missing_index} (their own void?): the holes "
            f"written as {missing_index} cannot be told from those pixels, which fit and complete will take for "
            f"holes too. Degrade with missing_index={other} (--missing-index {other}), then pass "
            f"--missing-index {other} --void-index {missing_index} to fit and complete",
            stacklevel=2,
        )
    return len(files)
