"""Losses (paper section III-E): the class-balanced cross-entropy of eq. 10-12, or plain CE.

Both count the pixels whose target is not ``ignore_index``: training marks the visible pixels so,
and computes them over the hidden pixels only, which is what the model is asked to reconstruct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BalancedCrossEntropy(nn.Module):
    """Class-balanced cross-entropy, eq. (10)-(12) of section III-E, as read here:

    - ``x_i`` is the share of class ``i`` among the counted target pixels of the batch (the text: "so that
      each class can calculate the loss more balanced according to the proportion"); ``E(x)`` and ``V(x)``
      are the mean and (population) variance of those shares over the classes;
    - class ``i`` gets the weight

        w_i = 1 - 1 / (1 + beta * exp(-(x_i - E(x)) / (V(x) + xi)) ** gamma)      (10)

      so frequent classes weigh less; the loss is the ``w``-weighted mean of the per-pixel NLL (11)-(12);
    - ``beta`` and ``gamma`` are learnable ("the learnable bias"; kept positive through their logarithms);
    - the indicator ``1{y_n != y^_n}`` of eq. 11-12 drops the pixels of ``y^``, which the text calls both
      the ignore index and "the background class, which not take account in the loss calculation": with
      ``background_index`` set, background pixels count neither in the loss nor in the shares ``x``, and
      the background class is left out of ``E(x)`` and ``V(x)``. Void (``ignore_index``) pixels never count.

    Measured (docs/training.md): with shares as ``x_i``, ``V(x)`` is about 0.01, so the weight of every
    frequent class is ~1e-9 and the model stops predicting them; training collapses below the label prior.
    Plain cross-entropy (:func:`cross_entropy`) is the default.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        beta: float = 1.0,
        gamma: float = 1.0,
        xi: float = 1e-3,
        learnable: bool = True,
        background_index: int | None = None,
    ):
        super().__init__()
        self.num_classes, self.ignore_index, self.xi = num_classes, ignore_index, xi
        self.background_index = background_index
        init = torch.log(torch.tensor([beta, gamma], dtype=torch.float))
        self.log_beta_gamma = nn.Parameter(init, requires_grad=learnable)

    def class_weights(self, target: torch.Tensor) -> torch.Tensor:
        """Eq. (10) -> ``[N]`` float64 weights from the class frequencies of ``target``.

        ``1 - 1 / (1 + t)`` with ``t = beta * z ** gamma`` is evaluated as ``sigmoid(log t)`` in float64:
        in float32 ``1 + t`` rounds to 1 for a dominant class (``t`` ~ 1e-9 already with 21 classes),
        which zeroed its weight, and the whole loss when the target holds a single class.
        """
        target = self._without_background(target)
        valid = target[(target != self.ignore_index) & (target >= 0) & (target < self.num_classes)]
        counts = torch.bincount(valid.long(), minlength=self.num_classes).double()
        x = counts / counts.sum().clamp(min=1)
        keep = torch.ones(self.num_classes, dtype=torch.bool, device=x.device)
        if self.background_index is not None:
            keep[self.background_index] = False  # E(x), V(x) over the classes the loss counts
        mean, var = x[keep].mean(), x[keep].var(unbiased=False)
        log_beta, log_gamma = self.log_beta_gamma.double()
        log_z = -(x - mean) / (var + self.xi)
        return torch.sigmoid(log_beta + log_gamma.exp() * log_z)

    def _without_background(self, target: torch.Tensor) -> torch.Tensor:
        if self.background_index is None:
            return target
        return torch.where(target == self.background_index, torch.full_like(target, self.ignore_index), target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor):
        """``logits [B, N, H, W]`` with ``target [B, H, W]``, or ``logits [M, N]`` rows with ``target [M]``."""
        target = self._without_background(target)
        w = self.class_weights(target)  # float64: a dominant class's weight can be below float32's range
        nll = F.cross_entropy(logits, target.long(), ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        wt = w[target.clamp(0, self.num_classes - 1).long()] * valid  # w_{y_n} 1{y_n != ignore}
        return ((nll.double() * wt).sum() / wt.sum().clamp(min=1e-300)).to(nll.dtype)


def cross_entropy(logits, target, *, ignore_index: int = 255):
    """Plain cross-entropy over the pixels whose target is not ``ignore_index``.
    ``logits [B, N, ...]`` with ``target [B, ...]``, or ``[M, N]`` rows with ``target [M]``."""
    keep = target != ignore_index
    if not keep.any():
        return logits.sum() * 0.0
    # only the counted pixels go through log-softmax: [M, N] instead of [B, N, H, W]
    return F.cross_entropy(logits.movedim(1, -1)[keep], target[keep].long())
