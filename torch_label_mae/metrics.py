"""Confusion-matrix metrics: mIoU, PA-mIoU (over hidden pixels only) and pixel accuracy.

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
) -> torch.Tensor:
    """``[N, N]`` int64 counts, rows = target class, columns = predicted class."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    if pixel_mask is not None:
        keep = keep & pixel_mask
    t, p = target[keep].long(), pred[keep].long()
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must be class ids in [0, {num_classes}), got {int(p.min())}..{int(p.max())}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``[N]`` IoU per class, NaN where the union is empty."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over classes with a non-empty union (NaN if there is none)."""
    iou = iou_per_class(cm)
    return float(iou.nanmean()) if (~iou.isnan()).any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diag().sum().double() / total) if total > 0 else float("nan")


class SegmentationMetrics:
    """Accumulates two confusion matrices: over all pixels (mIoU) and over hidden pixels (PA-mIoU)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.cm_hidden = torch.zeros_like(self.cm)

    def update(self, pred: torch.Tensor, target: torch.Tensor, hidden_pixels: torch.Tensor | None = None) -> None:
        """Add a batch: ``pred`` / ``target`` class ids of the same shape, ``hidden_pixels`` bool."""
        n, ig = self.num_classes, self.ignore_index
        self.cm += confusion_matrix(pred, target, n, ig).to(self.cm.device)
        if hidden_pixels is not None:
            self.cm_hidden += confusion_matrix(pred, target, n, ig, hidden_pixels).to(self.cm.device)

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
