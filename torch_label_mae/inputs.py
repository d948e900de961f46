"""One input of a completion, checked and prepared: the caller's image and label (PIL, numpy, tensor,
colour label) -> tensors the model reads, with what must come back unchanged; and the way back.

Refusals name the input (``labels[3]``) and what is wrong: ids outside the model's classes that are
neither missing nor void, missing / void indices that cannot occur or collide, colours off the table.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .colors import MISSING_ID, VOID_ID, color_label_like, color_label_to_array, flattened_hint, is_color_label
from .io import image_to_tensor, label_like, label_to_tensor, missing_to_tensor

AGNOSTIC_MODEL = "any-m0.5"  # the class-agnostic model errors point to (hub.DEFAULT_MODEL)


def prepare(i: int, image, label, given, missing_index: int, void_index: int | None, table, config) -> Sample:
    """Input pair ``i`` -> a :class:`Sample` for a model of ``config``, checked: sizes, ids, 8-bit indices,
    colours. ``given``: its missing map, or None (pixels equal to ``missing_index`` are missing)."""
    img_t, name = image_to_tensor(image, f"images[{i}]"), f"labels[{i}]"
    rgb = None
    if table is not None and is_color_label(label):
        rgb = color_label_to_array(label, name)
        lab_t = torch.from_numpy(table.decode(rgb, name))
        miss_value, void_value, what = MISSING_ID, VOID_ID, f"the missing colour {table.missing}"
    else:
        lab_t = label_to_tensor(label, name)
        check_8bit_indices(name, label, missing_index if given is None else None, void_index)
        miss_value, void_value, what = missing_index, void_index, f"the missing index {missing_index}"
    if tuple(img_t.shape[-2:]) != tuple(lab_t.shape):
        raise ValueError(
            f"images[{i}] is {tuple(img_t.shape[-2:])} but labels[{i}] is {tuple(lab_t.shape)} (H, W); they must match"
        )
    n = config.num_classes
    miss = missing_to_tensor(given, lab_t.shape, f"missing[{i}]") if given is not None else lab_t == miss_value
    if config.class_agnostic:  # any id is a class but the model's own unknown marker
        context = ~miss & ((lab_t < 0) | (lab_t == config.ignore_index))
    else:  # out-of-range values kept as they are: void, ...
        context = ~miss & ((lab_t < 0) | (lab_t >= n))
    allowed = lab_t == void_value if void_value is not None else torch.zeros_like(miss)
    if given is not None:
        allowed |= lab_t == miss_value  # ... and the missing value outside an explicit map
    bad = context & ~allowed
    if bad.any() and config.class_agnostic:
        raise ValueError(
            f"{name}: {int(bad.sum())} pixels have ids {sorted(lab_t[bad].unique().tolist())[:5]} that are not class "
            f"ids of a class-agnostic model (any id >= 0 but {config.ignore_index}) nor {what}; mark them missing, "
            "void (void_index=) or remap them"
        )
    if bad.any():
        _refuse_ids(name, lab_t, bad, n, what, void_value if rgb is None else None, table, config)
    if not config.class_agnostic:
        _warn_narrow(name, lab_t, ~miss & ~context, n)
    if bool((miss | context).all()):
        warnings.warn(f"{name} has no known pixel: it is filled from the image alone", stacklevel=3)
    lab_in = torch.where(miss | context, torch.full_like(lab_t, config.ignore_index), lab_t)
    return Sample(img_t, lab_in, miss, lab_t, context, rgb)


# a label whose known ids are at least NARROW_MIN_IDS distinct values, all below num_classes / 4 and
# filling at least half of 0..max, on a model of at least NARROW_MIN_CLASSES classes, draws a warning
NARROW_MIN_CLASSES = 20
NARROW_MIN_IDS = 4


def check_indices(missing_index: int, void_index: int | None, n: int, uses_missing_index: bool = True) -> None:
    """Refuse a ``missing_index`` / ``void_index`` that is not an integer, a ``void_index`` that is a
    class id in ``[0, n)``, and the two equal while ``missing_index`` marks the holes (the void pixels
    would be filled)."""
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{what} must be an integer, got {v!r}")
    if missing_index is None:
        raise ValueError("missing_index must be an integer, got None")
    if void_index is None:
        return
    if 0 <= void_index < n:
        raise ValueError(
            f"void_index {void_index} is a class id of this model (0..{n - 1}); the void label must be a value "
            "that is not a class, e.g. 255"
        )
    if uses_missing_index and void_index == missing_index:
        raise ValueError(
            f"void_index and missing_index are both {void_index}: void pixels would be filled. Mark the holes "
            f"with another value (e.g. missing_index={254 if void_index == 255 else 255}) or pass missing maps"
        )


def check_8bit_indices(name: str, label, missing_index: int | None, void_index: int | None) -> None:
    """For 8-bit labels (PIL 'P' / 'L', uint8 arrays and tensors): ``missing_index`` (when it marks the
    holes) and ``void_index`` must be in 0..255, or they could never match a pixel."""
    eight = isinstance(label, Image.Image) and label.mode in ("P", "L")
    eight = eight or (isinstance(label, (np.ndarray, torch.Tensor)) and label.dtype in (np.uint8, torch.uint8))
    if not eight:
        return
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and not 0 <= v <= 255:
            raise ValueError(f"{name}: {what} {v} cannot occur in an 8-bit label (values 0..255)")


def _refuse_ids(
    name: str, label: torch.Tensor, bad: torch.Tensor, n: int, what: str, void_index, table, config
) -> None:
    """``ValueError``: known ids outside ``[0, n)`` that are neither missing nor void (with a hint when
    they look like a colour label flattened to grayscale), naming the model's classes and pointing to the
    class-agnostic model for labels of another dataset."""
    values = label[bad].unique().tolist()
    void = f" or the void index {void_index}" if void_index is not None else ""
    names = config.class_names
    model = f"this model knows {n} classes" + (f" ({', '.join(names[:3])}, ...)" if names else "")
    raise ValueError(
        f"{name}: {int(bad.sum())} pixels have ids {sorted(values)[:5]} outside [0, {n}) that are not {what}{void}; "
        f"{model}: for labels of another dataset use the class-agnostic model "
        f"(LabelCompleter.from_pretrained('{AGNOSTIC_MODEL}')), or mark them missing or remap them"
        f"{flattened_hint(values, table)}"
    )


def _warn_narrow(name: str, label: torch.Tensor, known: torch.Tensor, n: int) -> None:
    """Warn when the known ids look like another dataset's.

    The warning (``"<name> ..."``, so that ``complete_dataset`` files it under the label) fires when a
    model of ``n >= NARROW_MIN_CLASSES`` classes gets a label whose known pixels use at least
    ``NARROW_MIN_IDS`` distinct ids, all below ``n / 4``, filling at least half of ``0..max id``: what
    labels of a small dataset look like (e.g. CamVid's 11 classes on a 59-class model). Labels of the
    model's own dataset rarely do: one image holds few classes (VOC), or spreads them over the id range
    (ADE20K, CCP). Costs one ``bincount`` of the label, only on such models."""
    if n < NARROW_MIN_CLASSES:
        return
    ids = torch.bincount(label[known].flatten(), minlength=n).nonzero().flatten().tolist()
    if len(ids) >= NARROW_MIN_IDS and ids[-1] < n / 4 and 2 * len(ids) >= ids[-1] + 1:
        warnings.warn(
            f"{name} uses only class ids {_id_ranges(ids)}, all in the lowest quarter of this model's {n} "
            f"classes: the model may be the wrong one for these labels (of a dataset of about {ids[-1] + 1} "
            "classes?)",
            stacklevel=4,
        )


class Sample(NamedTuple):
    """One prepared input: ``image [3, H, W]``, ``label`` as the model sees it (``ignore_index`` where
    missing or unknown), ``miss`` (to fill), ``original`` ids, ``context`` (unknown pixels kept as they
    are: void, ...) and, for a colour label, its ``rgb`` array."""

    image: torch.Tensor
    label: torch.Tensor
    miss: torch.Tensor
    original: torch.Tensor
    context: torch.Tensor
    rgb: np.ndarray | None

    def output(self, completed: torch.Tensor, like, table):
        """The completed ids -> ``like``'s type; every pixel that was not filled is the input's own."""
        if self.rgb is None:
            return label_like(torch.where(self.context, self.original, completed), like)
        rgb = self.rgb.copy()
        changed = ((completed != self.original) & ~self.context).numpy()
        rgb[changed] = table.encode(completed.numpy()[changed])
        return color_label_like(rgb, like)


def _id_ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None], strict=True):
        if b != a + 1:
            parts.append(f"{start}-{a}" if a > start else f"{start}")
            start = b
    return ", ".join(parts)
