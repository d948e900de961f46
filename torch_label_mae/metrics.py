"""Confusion-matrix metrics: mIoU, PA-mIoU (over hidden pixels only) and pixel accuracy; and how surely
one method's mIoU beats another's on the same labels (:func:`gain_bound`, a bootstrap over the labels).

The accumulator lives on any device. Pixels whose target is ``ignore_index`` never count; the mean
IoU runs over classes with a non-empty union (present in the target or predicted).
"""

from __future__ import annotations

import torch


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    pixel_mask: torch.Tensor | None = None,
    unfilled_index: int | None = None,
) -> torch.Tensor:
    """``[N, N]`` int64 counts, rows = target class, columns = predicted class. With ``unfilled_index``
    (the value of holes a completer left unfilled): ``[N, N + 1]``, predictions of that value counted in
    the last column (wrong for their class, no class's false positive). Other predictions outside
    ``[0, N)`` are refused, and so are targets outside it but ``ignore_index`` (they would not count)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    if pixel_mask is not None:
        keep = keep & pixel_mask
    stray = keep & ((target < 0) | (target >= num_classes))
    if stray.any():
        ids = torch.unique(target[stray])[:5].tolist()
        raise ValueError(f"targets must be class ids in [0, {num_classes}) or ignore_index {ignore_index}, got {ids}")
    if unfilled_index is not None and 0 <= unfilled_index < num_classes:
        raise ValueError(f"unfilled_index {unfilled_index} is a class id in [0, {num_classes})")
    t, p = target[keep].long(), pred[keep].long()
    cols = num_classes + (unfilled_index is not None)
    bad = (p < 0) | (p >= num_classes)
    if unfilled_index is not None:
        bad &= p != unfilled_index
        p = torch.where(p == unfilled_index, torch.full_like(p, num_classes), p)
    if bad.any():
        raise ValueError(f"predictions must be class ids in [0, {num_classes}), got {int(p[bad][0])}")
    return torch.bincount(t * cols + p, minlength=num_classes * cols).view(num_classes, cols)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``[N]`` IoU per class, NaN where the union is empty (``cm`` ``[N, N]``, or ``[N, N + 1]`` with an
    unfilled column: see :func:`confusion_matrix`)."""
    return _iou(*iou_parts(cm.double()))


def _iou(tp: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU from the true positives, predicted and target pixels of each class (any shape, float), NaN where
    the union is empty."""
    union = predicted + target - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over classes with a non-empty union (NaN if there is none)."""
    iou = iou_per_class(cm)
    return float(iou.nanmean()) if (~iou.isnan()).any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else float("nan")


class SegmentationMetrics:
    """Accumulates two confusion matrices: over all pixels (mIoU) and over hidden pixels (PA-mIoU)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None, unfilled_index: int | None = None):
        """``unfilled_index``: the value of holes a completer may leave unfilled (a label without a visible
        pixel), counted as wrong (:func:`confusion_matrix`); None: such a prediction is an error."""
        self.num_classes, self.ignore_index, self.unfilled_index = num_classes, ignore_index, unfilled_index
        cols = num_classes + (unfilled_index is not None)
        self.cm = torch.zeros(num_classes, cols, dtype=torch.int64, device=device)
        self.cm_hidden = torch.zeros_like(self.cm)

    def update(self, pred: torch.Tensor, target: torch.Tensor, hidden_pixels: torch.Tensor | None = None) -> None:
        """Add a batch: ``pred`` / ``target`` class ids of the same shape, ``hidden_pixels`` bool."""
        n, ig, un = self.num_classes, self.ignore_index, self.unfilled_index
        self.cm += confusion_matrix(pred, target, n, ig, unfilled_index=un).to(self.cm.device)
        if hidden_pixels is not None:
            self.cm_hidden += confusion_matrix(pred, target, n, ig, hidden_pixels, unfilled_index=un).to(self.cm.device)

    def compute(self) -> dict:
        """``{"miou", "pa_miou", "pixel_acc", "pa_pixel_acc", "iou", "pa_iou"}`` (fractions in [0, 1])."""
        return {
            "miou": mean_iou(self.cm),
            "pa_miou": mean_iou(self.cm_hidden),
            "pixel_acc": pixel_accuracy(self.cm),
            "pa_pixel_acc": pixel_accuracy(self.cm_hidden),
            "iou": iou_per_class(self.cm).tolist(),
            "pa_iou": iou_per_class(self.cm_hidden).tolist(),
        }


def iou_parts(cm: torch.Tensor) -> torch.Tensor:
    """``[3, N]``: per class, the true positives, the predicted pixels and the target pixels of ``cm``
    (``[N, N]``, or ``[N, N + 1]`` with an unfilled column): what the IoUs of several labels together are
    sums of (``union = predicted + target - tp``)."""
    n = cm.shape[0]
    return torch.stack([cm.diagonal(), cm.sum(0)[:n], cm.sum(1)])


def gain_bound(better: torch.Tensor, base: torch.Tensor, confidence: float, resamples: int = 1000, seed: int = 0):
    """How much higher the mIoU of ``better`` is than that of ``base`` at least, with ``confidence``: the
    ``1 - confidence`` quantile of the difference over ``resamples`` bootstrap resamples of the labels (the
    same labels for both; seeded). ``better``, ``base``: ``[L, 3, N]``, :func:`iou_parts` of each label's
    confusion matrix. A bound above 0 says the gain is not the luck of which labels were scored; with one
    label every resample is the same, and the bound is the gain."""
    if better.shape != base.shape or better.dim() != 3 or better.shape[1] != 3 or not len(better):
        raise ValueError(f"gain_bound: two [L, 3, N] stacks of the same labels, got {better.shape} and {base.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"gain_bound: confidence must be in (0, 1), got {confidence!r}")
    labels = better.shape[0]
    draws = torch.randint(0, labels, (resamples, labels), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(resamples, labels, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(draws.shape, dtype=torch.float64)
    )
    gains = _resampled_miou(counts, better) - _resampled_miou(counts, base)  # [R]
    if bool(gains.isnan().any()):
        raise ValueError("gain_bound: a resample of the labels has no class to score (no target, no prediction)")
    return float(torch.quantile(gains, 1 - confidence))


def _resampled_miou(counts: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """``[R]``: the mIoU of each resample (``counts [R, L]``: how often each label is drawn) of ``parts [L, 3, N]``."""
    summed = (counts @ parts.double().flatten(1)).view(counts.shape[0], 3, -1)  # [R, 3, N]
    return _iou(*summed.unbind(1)).nanmean(1)
