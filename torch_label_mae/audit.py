"""Find the wrong labels, not only the missing ones: leave-out audit and repair.

Every patch of a label is hidden in turn and predicted from the image and the rest of the label
(the masked-autoencoder idea used the other way round). Where the label disagrees with what its own
context predicts, it is suspect.

- **Leave-out masks** (:func:`leave_out_masks`): the model's patch grid is cut into ``block x block``
  blocks of patches, coloured like a checkerboard with ``num_masks`` colours (2: a checkerboard,
  4: two-by-two phases); each mask hides the patches of one colour. The masks are complementary:
  every patch is hidden in exactly one of them, and every hidden block keeps visible neighbours.
- **Grid shifts** (:func:`grid_shifts`): ``shifts`` 2 or 4 repeat the leave-out with the image and the
  label moved by half a patch (diagonally; 4: also down and across), so each pixel is predicted from
  that many different cuts of the image into patches, and the probabilities are averaged. A pixel is
  predicted with the same context in every pass otherwise: one cut puts a small object whole into a
  hidden patch and its prediction is confidently wrong; another cut leaves part of it visible. The
  image and label are rolled: the strip that a shift moves past the edge comes round at the other
  side, where its label is unknown to the predictor and its pixels are not predicted in that pass.
- **No leak.** For each mask the label is first set unknown on every pixel of its hidden patches
  (at the label's own resolution), then resized to the model grid; the label prior (nearest fill,
  random walk) is computed from that visible label only, at the model's size and again at full size.
  The given class of a hidden pixel never reaches the prediction of that pixel.
- **Score**: ``1 - p(given class)``, per pixel, from the leave-out probabilities (0 on pixels that
  are no class: void, out of range). ``predicted``: the most likely class.
- **Suspect regions**: 8-connected components of ``score > threshold`` of at least ``min_area`` (a
  fraction of the image's pixels), each with its area, bounding box, given class (the majority of
  the label there), predicted class (the majority of the prediction there) and mean score.
- **Image score**: the 99th percentile of the score over the labelled pixels: the score that the
  most suspect 1% of them reach (0: nothing suspect; close to 1: at least 1% surely wrong). It does
  not depend on the threshold, so it ranks labels even where the threshold flags nothing.
- **Repair**: the pixels of the suspect regions take the predicted class; nothing else changes.

A *predictor* is anything that gives leave-out probabilities:
``predict(image [B, 3, H, W], label [B, H, W], hidden [B, L], missing [B, H, W]) -> probs [B, N, H, W]``,
where ``label`` is unknown (``ignore_index``) on ``missing`` (the hidden patches' pixels) and the
probabilities are read on ``missing`` only. :func:`model_predictor` wraps an L-MAE (class-specific);
a class-agnostic model plugs in the same way, returning probabilities over the ids of the label
(e.g. ``[B, N, H, W]`` with zeros for ids it does not use), as does :func:`random_walk_predictor`
(the random walker, the baseline of ``benchmarks/audit_corruptions.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .inference import check_dtypes
from .io import batch_size_for, resize_image, resize_label, stack_images
from .slots import from_slots, to_slots

DEFAULT_THRESHOLD = 0.95  # for models without their own (LMAEConfig.audit_threshold); docs/audit.md
DEFAULT_MIN_AREA = 0.001  # suspect regions cover at least 0.1% of the image
IMAGE_SCORE_QUANTILE = 0.99  # the image score: this quantile of the labelled pixels' scores (docs/audit.md)
DEFAULT_MASKS = 4
DEFAULT_BLOCK = 1
DEFAULT_SHIFTS = 4  # chosen on CamVid and CCP train with seeded corruptions (docs/audit.md)

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "DEFAULT_THRESHOLD",
    "AuditResult",
    "audit_batch",
    "audited_classes",
    "default_threshold",
    "grid_shifts",
    "leave_out_masks",
    "leave_out_probs",
    "model_predictor",
    "random_walk_predictor",
    "repair_label",
    "score_from_probs",
    "suspect_regions",
]


# ----------------------------------------------------------------------------------------------------
# leave-out masks and probabilities
# ----------------------------------------------------------------------------------------------------
def leave_out_masks(grid: tuple[int, int], num_masks: int = DEFAULT_MASKS, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """``[num_masks, gh * gw]`` bool: complementary sets of patches (see the module docstring); every
    patch is hidden exactly once."""
    if num_masks not in (1, 2, 4):
        raise ValueError(f"num_masks must be 1, 2 or 4, got {num_masks!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1 (patches), got {block!r}")
    gh, gw = grid
    by = torch.arange(gh) // block  # [gh] block row of each patch row
    bx = torch.arange(gw) // block
    if num_masks == 1:
        phase = torch.zeros(gh, gw, dtype=torch.long)
    elif num_masks == 2:
        phase = (by[:, None] + bx[None, :]) % 2
    else:
        phase = (by[:, None] % 2) * 2 + bx[None, :] % 2
    return torch.stack([(phase == k).flatten() for k in range(num_masks)])


def grid_shifts(shifts: int, grid: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` pixel shifts of the leave-out passes at label size ``size``: ``(0, 0)``, then half a
    patch diagonally (``shifts`` 2), then half a patch down and across (4). Shifts that round to no move
    (patches under 2 px) are left out."""
    if shifts not in (1, 2, 4):
        raise ValueError(f"shifts must be 1, 2 or 4, got {shifts!r}")
    half = [size[i] / grid[i] / 2 for i in (0, 1)]
    sy, sx = (int(x + 0.5) if x >= 1 else 0 for x in half)  # half a patch, halves rounded up
    return list(dict.fromkeys([(0, 0), (sy, sx), (sy, 0), (0, sx)][:shifts]))  # a shift of 0 is a repeat


def patch_pixels(hidden: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``hidden [B, gh * gw]`` -> ``[B, H, W]`` bool: the pixels of the hidden patches at any size (each
    pixel belongs to the patch ``floor(y * gh / H), floor(x * gw / W)``)."""
    gh, gw = grid
    h, w = size
    ys = torch.arange(h, device=hidden.device) * gh // h
    xs = torch.arange(w, device=hidden.device) * gw // w
    return hidden.view(-1, gh, gw)[:, ys][:, :, xs]


def leave_out_probs(
    predict: Predictor,
    image: torch.Tensor,
    label: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    *,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = DEFAULT_SHIFTS,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel predicted while its patch is hidden: ``(probs [B, N, H, W], count [B, H, W])``,
    ``probs`` averaged over the ``count`` passes that hid each pixel (once per grid shift, see
    :func:`grid_shifts`). ``label [B, H, W]``: ids outside ``[0, N)`` are unknown to the predictor."""
    b, h, w = label.shape
    masks = leave_out_masks(grid, num_masks, block).to(label.device)
    probs = torch.zeros(b, num_classes, h, w, device=label.device, dtype=torch.float32)
    count = torch.zeros(b, h, w, device=label.device, dtype=torch.float32)
    for dy, dx in grid_shifts(shifts, grid, (h, w)):
        img, lab = image.roll((dy, dx), (-2, -1)), label.roll((dy, dx), (-2, -1))  # [B, 3, H, W], [B, H, W]
        edge = torch.zeros(h, w, dtype=torch.bool, device=label.device)
        edge[:dy], edge[:, :dx] = True, True  # the strip moved past the edge: unknown, not predicted
        known = (lab >= 0) & (lab < num_classes) & ~edge
        for m in masks:
            hidden = m.expand(b, -1)
            missing = patch_pixels(hidden, grid, (h, w))
            visible = torch.where(missing | ~known, torch.full_like(lab, ignore_index), lab)
            p = predict(img, visible, hidden, missing).float()
            use = (missing & ~edge).roll((-dy, -dx), (-2, -1))  # back in the label's frame
            probs += torch.where(use.unsqueeze(1), p.roll((-dy, -dx), (-2, -1)), torch.zeros_like(p))
            count += use.float()
    return probs / count.clamp(min=1).unsqueeze(1), count


def model_predictor(completer) -> Predictor:
    """Leave-out probabilities of a :class:`~torch_label_mae.LabelCompleter`'s model (its precision and
    device). At another size than the model's, the model's correction is resized and the label prior
    is taken again at full size from the visible label, as :func:`~torch_label_mae.inference.complete_tensors`
    does."""
    model = completer.model
    cfg = model.config

    @torch.inference_mode()
    def predict(image, label, hidden, missing):
        size = cfg.size
        x = resize_image(image, size)
        lab = resize_label(label, size)
        lab = torch.where(patch_pixels(hidden, cfg.grid, size), torch.full_like(lab, cfg.ignore_index), lab)
        amp = completer.autocast_dtype()
        dev = image.device.type
        with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
            prior = model.prior(lab, image=x) if model.prior is not None else None
            logits = model(x, lab, hidden, prior).float()
            if tuple(label.shape[-2:]) != tuple(size):
                logits = model.resize_logits(logits, prior, image, label)
        return logits.float().softmax(1)

    return predict


def random_walk_predictor(num_classes: int, *, beta: float = 130.0, connectivity: int = 4, color: str = "rgb"):
    """The random walker (exact solve, scikit-image's edge weights ``exp(-beta * |dI|^2 / var)``) as a
    predictor: its class probabilities from the visible label only (the audit's baseline)."""
    from .propagation import random_walk_probabilities

    def predict(image, label, hidden, missing):
        known = (label >= 0) & (label < num_classes)
        prob, cls = random_walk_probabilities(
            image, label, known, num_classes, beta=beta, solver="direct", connectivity=connectivity, color=color
        )
        out = torch.zeros(label.shape[0], num_classes + 1, *label.shape[-2:], device=label.device, dtype=prob.dtype)
        idx = torch.where(cls >= 0, cls, torch.full_like(cls, num_classes))  # padding -> a spare row
        idx = idx.clamp(max=num_classes)[:, :, None, None].expand_as(prob)
        out.scatter_add_(1, idx, prob)
        out = out[:, :num_classes]
        none = out.sum(1, keepdim=True) == 0  # no known pixel: uniform
        return torch.where(none, torch.full_like(out, 1.0 / num_classes), out)

    return predict


# ----------------------------------------------------------------------------------------------------
# scores, regions, repair
# ----------------------------------------------------------------------------------------------------
def score_from_probs(probs: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score [B, H, W] in [0, 1], predicted [B, H, W])``: ``1 - p(given class)`` (0 where the label
    is no class of ``probs``) and the most likely class."""
    n = probs.shape[1]
    known = (label >= 0) & (label < n)
    given = probs.gather(1, torch.where(known, label, torch.zeros_like(label)).long().unsqueeze(1))[:, 0]
    score = torch.where(known, (1.0 - given).clamp(0, 1), torch.zeros_like(given))
    return score, probs.max(1).indices  # the first maximum, as argmax, faster across maps


def _majority(values: np.ndarray) -> int:
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.argmax(counts)])


def suspect_regions(
    score: np.ndarray,
    label: np.ndarray,
    predicted: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict], np.ndarray]:
    """``(regions, flagged [H, W] bool)``: 8-connected components of ``score > threshold`` covering at
    least ``min_area`` of the image, largest total score first; ``flagged`` is their union."""
    hot = np.asarray(score) > threshold
    comp, n = ndimage.label(hot, structure=np.ones((3, 3), dtype=bool))
    flagged = np.zeros(hot.shape, dtype=bool)
    if n == 0:
        return [], flagged
    areas = np.bincount(comp.ravel(), minlength=n + 1)
    least = max(1, int(np.ceil(min_area * hot.size)))
    regions = []
    boxes = ndimage.find_objects(comp)
    for i in range(1, n + 1):
        if areas[i] < least:
            continue
        sl = boxes[i - 1]
        inside = comp[sl] == i
        flagged[sl] |= inside
        given, pred = _majority(label[sl][inside]), _majority(predicted[sl][inside])
        mean = float(score[sl][inside].mean())
        r = {
            "area": int(areas[i]),
            "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)],  # x0, y0, x1, y1
            "given_class": given,
            "predicted_class": pred,
            "score": round(mean, 4),
        }
        if class_names is not None:
            r["given_name"] = class_names[given] if 0 <= given < len(class_names) else str(given)
            r["predicted_name"] = class_names[pred] if 0 <= pred < len(class_names) else str(pred)
        regions.append(r)
    regions.sort(key=lambda r: -r["area"] * r["score"])
    return regions, flagged


def repair_label(label: np.ndarray, predicted: np.ndarray, flagged: np.ndarray, num_classes: int) -> np.ndarray:
    """A copy of ``label`` whose ``flagged`` pixels that are a class take the predicted class."""
    lab = np.asarray(label)
    known = (lab >= 0) & (lab < num_classes)
    return np.where(flagged & known, np.asarray(predicted).astype(lab.dtype), lab)


@dataclass
class AuditResult:
    """The audit of one label. ``score`` ``[H, W]`` float in [0, 1] (1 - p(given class)), ``predicted``
    ``[H, W]`` the leave-out class, ``regions`` (see :func:`suspect_regions`), ``flagged`` their union,
    ``repaired`` the label with the flagged pixels replaced, ``image_score`` and ``changed`` (pixels
    that differ between ``repaired`` and the label)."""

    score: np.ndarray
    predicted: np.ndarray
    regions: list[dict]
    flagged: np.ndarray
    repaired: np.ndarray
    image_score: float
    labelled: int
    changed: int
    threshold: float

    def score_png(self) -> np.ndarray:
        """The score as 8-bit grayscale: 0 = agrees with its context, 255 = surely wrong."""
        return np.round(np.clip(self.score, 0, 1) * 255).astype(np.uint8)

    def summary(self, max_regions: int = 20) -> dict:
        return {
            "image_score": round(self.image_score, 6),
            "labelled_pixels": self.labelled,
            "suspect_pixels": int(self.flagged.sum()),
            "changed_pixels": self.changed,
            "regions": self.regions[:max_regions],
            "num_regions": len(self.regions),
        }


def finish(
    score: np.ndarray,
    predicted: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    class_names: Sequence[str] | None = None,
) -> AuditResult:
    """Regions, repair and image score of one label from its score and prediction."""
    regions, flagged = suspect_regions(score, label, predicted, threshold, min_area, class_names)
    repaired = repair_label(label, predicted, flagged, num_classes)
    known = (label >= 0) & (label < num_classes)
    labelled = int(known.sum())
    image_score = float(np.quantile(score[known], IMAGE_SCORE_QUANTILE)) if labelled else 0.0
    changed = int((repaired != label).sum())
    return AuditResult(score, predicted, regions, flagged, repaired, image_score, labelled, changed, threshold)


def default_threshold(completer) -> float:
    """The audit's threshold for ``completer``: its config's ``audit_threshold`` (chosen on the weights'
    training data with seeded corruptions, ``docs/audit.md``), else :data:`DEFAULT_THRESHOLD`."""
    own = completer.config.audit_threshold
    return DEFAULT_THRESHOLD if own is None else own


def audited_classes(completer) -> int:
    """How many ids are classes to the audit of ``completer`` (``[0, k)``; the rest are void, never
    scored or repaired): a class-specific model's classes; a class-agnostic model's label set's, else
    every id below its unknown marker (255)."""
    ids = completer.num_ids  # LabelConventions: the label set's classes, else the model's; None: any id
    return ids if ids is not None else completer.config.ignore_index


def _check_threshold(threshold, min_area, name: str = "threshold") -> None:
    for what, v in ((name, threshold), ("min_area", min_area)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{what} must be a number in [0, 1), got {v!r}")


def _warn_unscored(label: torch.Tensor, classes: int, completer, name: str) -> None:
    """Warn when a class-agnostic model's audit takes ids of ``label`` as void that nothing marks so: above
    its classes (``classes``: the label set's, else 255, its unknown marker) and not the label set's void or
    missing index (a 16-bit void, or classes the audit skips: they would look clean)."""
    if not completer.config.class_agnostic:
        return  # a class-specific model's ids beyond its classes are its void by design
    ls = completer.label_set
    marks = (ls.void_index, ls.missing_index) if ls is not None else (completer.config.ignore_index,)
    marked = [v for v in marks if v is not None]
    stray = (label >= classes) & ~torch.isin(label, torch.tensor(marked, dtype=label.dtype))
    if bool(stray.any()):
        warnings.warn(
            f"{name}: {int(stray.sum())} pixels have ids {sorted(label[stray].unique().tolist())[:5]} of no class: "
            f"the audit scores ids 0..{classes - 1} and takes the rest as void, never scored or repaired; if they "
            "are classes, remap them (e.g. to 0..N-1)",
            stacklevel=3,
        )


def audit_batch(
    completer,
    images: Sequence,
    labels: Sequence,
    *,
    threshold: float | None = None,
    min_area: float = DEFAULT_MIN_AREA,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = DEFAULT_SHIFTS,
    batch_size: int | None = None,
    predictor: Predictor | None = None,
    files: Sequence[str] | None = None,
) -> list[AuditResult]:
    """Audit a list of labels with ``completer`` (see :meth:`LabelCompleter.audit`). Same-size labels
    are batched, ``batch_size`` at a time (default: 8 on the CPU, 64 on CUDA); ids that are no class
    (:func:`audited_classes`: void) are unknown to the model, never scored and never repaired. ``threshold``: the
    score above which pixels are suspect (and repaired); None: :func:`default_threshold`. ``files``: what
    messages call the labels (their file names; default ``labels[i]``)."""
    from .colors import is_color_label
    from .io import image_to_tensor, label_to_tensor

    threshold = default_threshold(completer) if threshold is None else threshold
    _check_threshold(threshold, min_area)
    check_dtypes(completer.model)
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    if files is not None and (isinstance(files, str) or len(files) != len(labels)):
        raise ValueError(f"files must name each of the {len(labels)} labels, got {files!r}"[:200])
    dev = completer.device
    batch_size = batch_size_for(dev, batch_size)
    n, cfg, names = completer.num_classes, completer.config, completer.class_names
    classes = audited_classes(completer)  # ids that are classes: [0, classes); the rest void
    predict = predictor or model_predictor(completer)
    pairs = []
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        if is_color_label(lab):
            raise ValueError(
                f"labels[{i}]: a colour (RGB) label; the audit reads class ids: decode it first with its colour "
                "table, e.g. torch_label_mae.colors.load_colors('camvid').decode(rgb)"
            )
        img_t, lab_t = image_to_tensor(im, f"images[{i}]"), label_to_tensor(lab, f"labels[{i}]")
        _warn_unscored(lab_t, classes, completer, files[i] if files is not None else f"labels[{i}]")
        if tuple(img_t.shape[-2:]) != tuple(lab_t.shape):
            raise ValueError(f"images[{i}] is {tuple(img_t.shape[-2:])} but labels[{i}] is {tuple(lab_t.shape)}")
        pairs.append((img_t, lab_t.long()))
    groups: dict = {}
    for i, (_, lab) in enumerate(pairs):
        groups.setdefault(tuple(lab.shape), []).append(i)
    results: list = [None] * len(pairs)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            img = stack_images([pairs[i][0] for i in chunk]).to(dev)
            lab = torch.stack([pairs[i][1] for i in chunk]).to(dev)
            seen, table = lab, None
            if cfg.class_agnostic:  # the model reads slots (torch_label_mae.slots); ids come back
                seen, table = to_slots(lab, (lab >= 0) & (lab < classes), n, cfg.ignore_index)
            probs, _ = leave_out_probs(predict, img, seen, cfg.grid, n, num_masks=num_masks, block=block, shifts=shifts)
            score, pred = score_from_probs(probs, seen)
            if table is not None:
                pred = from_slots(pred, table)
            score, pred, lab_np = score.cpu().numpy(), pred.cpu().numpy(), lab.cpu().numpy()
            for j, i in enumerate(chunk):
                results[i] = finish(score[j], pred[j], lab_np[j], classes, threshold, min_area, names)
    return results
