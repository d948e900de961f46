"""One input of a completion, checked and prepared: the caller's image and label (PIL, numpy, tensor,
colour label) -> tensors the model reads, with what must come back unchanged; and the way back.

Refusals name the input (``labels[3]``) and what is wrong: ids outside the model's classes that are
neither missing nor void, missing / void indices that cannot occur or collide, colours off the table.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .colors import MISSING_ID, VOID_ID, color_label_like, color_label_to_array, flattened_hint, is_color_label
from .hub import AGNOSTIC_MODEL
from .io import image_to_tensor, label_like, label_to_tensor, missing_to_tensor
from .label_sets import LabelSet


def prepare(
    i: int,
    image,
    label,
    given,
    missing_index: int,
    void_index: int | None,
    table,
    config,
    *,
    label_set: LabelSet | None = None,
    model_name: str | None = None,
) -> Sample:
    """Input pair ``i`` -> a :class:`Sample` for a model of ``config``, checked: sizes, ids, 8-bit indices,
    colours. ``given``: its missing map, or None (pixels equal to ``missing_index`` are missing).
    ``label_set`` (class-agnostic models): its ids are the only class ids; ``model_name``: the registered
    name the model was loaded by, for messages."""
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
    miss = missing_to_tensor(given, lab_t.shape, f"missing[{i}]") if given is not None else lab_t == miss_value
    allowed = lab_t == void_value if void_value is not None else torch.zeros_like(miss)  # kept: void, ...
    if given is not None:
        allowed |= lab_t == miss_value  # ... and the missing value outside an explicit map
    context = ~miss & (lab_t < 0)  # unknown pixels kept as they are: void colours, ...
    if config.class_agnostic:  # ... void, missing outside a map, the model's own unknown marker ...
        context |= ~miss & (allowed | (lab_t == config.ignore_index))
    n = label_set.num_classes if label_set is not None else None if config.class_agnostic else config.num_classes
    if n is not None:  # ... and ids outside the classes
        context |= ~miss & (lab_t >= n)
    bad = context & ~allowed
    if bad.any():
        _refuse(name, lab_t, bad, what, void_value if rgb is None else None, table, config, label_set, model_name)
    known, holes = ~miss & ~context, bool(miss.any())
    if config.class_agnostic and holes:
        _warn_slots(name, lab_t[known], config.num_classes)
    elif not config.class_agnostic:
        _warn_narrow(name, lab_t, known, n)
    fills = True
    if holes and not bool(known.any()):
        fills = not config.class_agnostic  # it fills only with classes the visible pixels carry: none
        how = "it is filled from the image alone" if fills else (
            "a class-agnostic model fills holes only with classes the visible pixels carry, so its holes are "
            "left as they are"
        )  # fmt: skip
        warn_caller(f"{name} has no known pixel: {how}")
    lab_in = torch.where(miss | context, torch.full_like(lab_t, config.ignore_index), lab_t)
    return Sample(img_t, lab_in, miss, lab_t, context, rgb, fills)


def warn_caller(message: str) -> None:
    """``warnings.warn(message)`` at the first frame outside this package, torch and torchvision: the
    user's call of ``complete`` or ``complete_batch``, of a ``CompleteLabels`` transform (also inside a
    ``v2.Compose``), or of the torchvision dataset that applies it."""
    skip = (_PACKAGE, *(_folder(sys.modules[m]) for m in ("torch", "torchvision") if m in sys.modules))
    frame, level = sys._getframe(1), 2  # level 2: warn_caller's caller
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _folder(module) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _warn_slots(name: str, ids: torch.Tensor, num_slots: int) -> None:
    """Warn when a label's known ``ids`` hold more classes than a class-agnostic model has slots: the
    smallest classes cannot fill holes (:mod:`torch_label_mae.slots`)."""
    if ids.numel() <= num_slots:
        return
    small = int(ids.max()) < 1 << 16  # a bincount is several times faster than unique there
    count = int((torch.bincount(ids) > 0).sum()) if small else int(ids.unique().numel())
    if count > num_slots:
        warn_caller(
            f"{name} carries {count} classes, more than this class-agnostic model's {num_slots} slots: its holes "
            f"are filled with the {num_slots} largest only (the other classes' visible pixels are kept)"
        )


# a label whose known ids are at least NARROW_MIN_IDS distinct values, all below num_classes / 4 and
# filling at least half of 0..max, on a model of at least NARROW_MIN_CLASSES classes, draws a warning
NARROW_MIN_CLASSES = 20
NARROW_MIN_IDS = 4


def check_indices(missing_index: int | None, void_index: int | None, n: int, uses_missing_index: bool = True) -> None:
    """Refuse a ``missing_index`` / ``void_index`` that is not an integer, a ``void_index`` that is a
    class id in ``[0, n)``, and the two equal while ``missing_index`` marks the holes (the void pixels
    would be filled). None: not given (no void; a missing index still to be resolved)."""
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{what} must be an integer, got {v!r}")
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


def _refuse(name: str, label, bad, what: str, void_index, table, config, label_set, model_name) -> None:
    """``ValueError`` for the ``bad`` pixels of ``label``: ids that are not classes (of the model, or of
    its label set) and neither missing nor void."""
    if label_set is not None:
        n, hint = label_set.num_classes, _set_owner(label_set, model_name)
        _refuse_ids(name, label, bad, what, void_index, table, n, hint)
    if config.class_agnostic:
        raise ValueError(
            f"{name}: {int(bad.sum())} pixels have ids {sorted(label[bad].unique().tolist())[:5]} that are not class "
            f"ids of a class-agnostic model (any id >= 0 but {config.ignore_index}) nor {what}; mark them missing, "
            "void (void_index=) or remap them"
        )
    n, names = config.num_classes, config.class_names
    model = f"this model{f' ({model_name})' if model_name else ''} knows {n} classes"
    model += f" ({', '.join(names[:3])}, ...)" if names else ""
    hint = (
        f"{model}: for labels of another dataset use the class-agnostic model "
        f"(LabelCompleter.from_pretrained('{AGNOSTIC_MODEL}')); if they mark holes or void, say so (missing_index=, "
        "void_index=, as the model was fitted with), or remap them"
    )
    _refuse_ids(name, label, bad, what, void_index, table, n, hint)


def _set_owner(label_set: LabelSet, model_name: str | None) -> str:
    """What a refusal says of a label set: its name, size and the preset that carries it."""
    by = f"{model_name} carries the label set" if model_name else "the completer's label set is"
    return (
        f"{by} {label_set.name!r} of {label_set.num_classes} classes ({', '.join(label_set.class_names[:3])}, ...): "
        f"mark them missing or void, remap them, or use '{AGNOSTIC_MODEL}' (any ids) / completer.label_set = None"
    )


def _refuse_ids(name: str, label: torch.Tensor, bad: torch.Tensor, what: str, void_index, table, n: int, hint: str):
    """``ValueError``: known ids outside ``[0, n)`` that are neither missing nor void (with a hint when
    they look like a colour label flattened to grayscale), then ``hint``: whose classes these are and
    what to do."""
    values = label[bad].unique().tolist()
    void = f" or the void index {void_index}" if void_index is not None else ""
    raise ValueError(
        f"{name}: {int(bad.sum())} pixels have ids {sorted(values)[:5]} outside [0, {n}) that are not {what}{void}; "
        f"{hint}{flattened_hint(values, table)}"
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
        warn_caller(
            f"{name} uses only class ids {_id_ranges(ids)}, all in the lowest quarter of this model's {n} "
            f"classes: the model may be the wrong one for these labels (of a dataset of about {ids[-1] + 1} "
            "classes?)"
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
    fills: bool = True  # False: nothing to fill the holes from (a class-agnostic model, no known pixel)

    def output(self, completed: torch.Tensor, like, table):
        """The completed ids -> ``like``'s type; every pixel that was not filled is the input's own."""
        kept = self.context if self.fills else self.context | self.miss
        if self.rgb is None:
            return label_like(torch.where(kept, self.original, completed), like)
        rgb = self.rgb.copy()
        changed = ((completed != self.original) & ~kept).numpy()
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
