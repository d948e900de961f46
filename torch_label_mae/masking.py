"""Which of the L = (H / p) * (W / p) patches are hidden (paper section III-B).

Every function returns ``hidden [B, L]`` bool, patches in row-major order. Training strategies hide
exactly ``round(ratio * L)`` patches per sample with ties broken at random; the inference mask hides
every patch that touches a missing pixel, so its count differs per sample.

"Object" pixels are labelled pixels that are not the background class; "background" pixels are those
of ``background_index``. With ``background_index=None`` (datasets without a background class, such as
CamVid) no pixel is background: Label-First hides the most completely labelled patches and
Background-First degenerates to Random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .io import resize_label

STRATEGIES = ("random", "label_first", "background_first")
PAPER_MIX = (1.0, 2.0, 2.0)  # Random : Label-First : Background-First


def patch_shares(label: torch.Tensor, patch_size: int, background_index: int | None, ignore_index: int = 255):
    """Per-patch share of object and of background pixels: two ``[B, L]`` float tensors in [0, 1]."""
    valid = label != ignore_index
    background = (label == background_index) & valid if background_index is not None else torch.zeros_like(valid)
    obj = valid & ~background
    pool = lambda m: F.avg_pool2d(m.unsqueeze(1).float(), patch_size).flatten(1)  # noqa: E731
    return pool(obj), pool(background)


def _ratios(ratio: float | torch.Tensor, batch: int, num_patches: int, device) -> torch.Tensor:
    """``ratio`` (float or ``[B]``) -> per-sample hidden counts ``[B]`` int64."""
    r = torch.as_tensor(ratio, dtype=torch.float64, device=device).expand(batch)
    if not ((r >= 0) & (r <= 1)).all():  # also rejects NaN
        raise ValueError(f"mask ratio must be in [0, 1], got {r.tolist()}")
    return torch.round(r * num_patches).long()


def _top_k(score: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Hide the ``k[b]`` highest-scoring patches per row; equal scores are ordered at random.

    ``score`` takes values on a grid of at least 1 / (p * p), so a random offset below half a step
    breaks ties without reordering distinct scores.
    """
    noise = torch.rand(score.shape, generator=generator, device=score.device)
    key = score.double() + noise.double() * 1e-6
    rank = torch.argsort(torch.argsort(key, dim=1, descending=True), dim=1)  # rank[b, l]: 0 = first hidden
    return rank < k.unsqueeze(1)


def random_masking(batch: int, num_patches: int, ratio, *, device=None, generator=None) -> torch.Tensor:
    """Random strategy: ``round(ratio * L)`` patches chosen uniformly per sample -> ``[B, L]`` bool."""
    k = _ratios(ratio, batch, num_patches, device)
    return _top_k(torch.zeros(batch, num_patches, device=device), k, generator)


def label_first_masking(label, patch_size, ratio, *, background_index=None, ignore_index=255, generator=None):
    """Label-First: patches with the highest share of object pixels are hidden first."""
    obj, _ = patch_shares(label, patch_size, background_index, ignore_index)
    return _top_k(obj, _ratios(ratio, obj.shape[0], obj.shape[1], obj.device), generator)


def background_first_masking(label, patch_size, ratio, *, background_index=None, ignore_index=255, generator=None):
    """Background-First: patches with the highest share of background pixels are hidden first."""
    _, bg = patch_shares(label, patch_size, background_index, ignore_index)
    return _top_k(bg, _ratios(ratio, bg.shape[0], bg.shape[1], bg.device), generator)


def mixed_masking(
    label: torch.Tensor,
    patch_size: int,
    ratio,
    *,
    background_index: int | None = None,
    ignore_index: int = 255,
    weights=PAPER_MIX,
    generator: torch.Generator | None = None,
    return_strategy: bool = False,
):
    """The paper's training mix: each sample draws Random / Label-First / Background-First with
    probabilities proportional to ``weights`` (1:2:2), then hides ``round(ratio * L)`` patches.

    ``ratio`` is a float or a per-sample ``[B]`` tensor. With ``return_strategy`` also returns the
    strategy index per sample (``[B]`` int64, indices into :data:`STRATEGIES`).
    """
    batch = label.shape[0]
    obj, bg = patch_shares(label, patch_size, background_index, ignore_index)  # [B, L] each
    w = torch.as_tensor(weights, dtype=torch.float, device=label.device)
    if w.numel() != 3 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be three non-negative numbers, got {weights}")
    strategy = torch.multinomial(w.expand(batch, 3), 1, generator=generator).squeeze(1)  # [B]
    score = torch.stack([torch.zeros_like(obj), obj, bg], dim=1)  # [B, 3, L]
    score = score[torch.arange(batch, device=label.device), strategy]  # [B, L]
    hidden = _top_k(score, _ratios(ratio, batch, obj.shape[1], obj.device), generator)
    return (hidden, strategy) if return_strategy else hidden


def block_holes(
    batch: int,
    size: tuple[int, int],
    ratio,
    block_range: tuple[int, int] = (8, 48),
    *,
    device=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pixel holes that do not follow the patch grid -> ``missing [B, H, W]`` bool.

    Per sample: a block size (height and width each drawn from ``block_range``), a random offset of
    the block grid, and ``round(ratio * cells)`` of its cells hidden (``ratio`` a float or ``[B]``).
    This is what holes look like once a label of another resolution is resized to the model's grid
    (the ``native`` protocol, a user's own holes): patches come out partly known. Training on them
    with :func:`hidden_from_missing` teaches the model that case too.
    """
    lo, hi = block_range
    if not 1 <= lo <= hi:
        raise ValueError(f"block_range must be 1 <= lo <= hi, got {block_range}")
    h, w = size
    ratios = torch.as_tensor(ratio, dtype=torch.float64).cpu().expand(batch)
    if not ((ratios >= 0) & (ratios <= 1)).all():  # also rejects NaN
        raise ValueError(f"mask ratio must be in [0, 1], got {ratios.tolist()}")
    out = torch.zeros(batch, h, w, dtype=torch.bool)
    for i in range(batch):
        bh, bw, oy, ox = torch.randint(lo, hi + 1, (4,), generator=generator).tolist()
        oy, ox = oy % bh, ox % bw
        cy = (torch.arange(h) + oy) // bh  # [H] cell row of each pixel row
        cx = (torch.arange(w) + ox) // bw  # [W]
        ny, nx = int(cy[-1]) + 1, int(cx[-1]) + 1
        k = int(round(float(ratios[i]) * ny * nx))
        cells = torch.zeros(ny * nx, dtype=torch.bool)
        cells[torch.randperm(ny * nx, generator=generator)[:k]] = True
        out[i] = cells.view(ny, nx)[cy][:, cx]
    return out.to(device) if device is not None else out


def hidden_from_missing(missing: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inference mask: ``missing [B, H, W]`` bool at any size -> ``hidden [B, gh * gw]`` bool.

    The map is laid over the ``grid`` of patches (adaptive max pooling): a patch is hidden when any
    pixel of its source region is missing. When ``H`` and ``W`` are multiples of the grid this is
    exactly "every patch that touches a missing pixel".
    """
    if missing.ndim != 3:
        raise ValueError(f"missing must be [B, H, W], got {tuple(missing.shape)}")
    return F.adaptive_max_pool2d(missing.unsqueeze(1).float(), tuple(grid)).flatten(1) > 0


def hidden_to_pixels(hidden: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """``hidden [B, L]`` -> pixel map ``[B, gh * p, gw * p]`` bool."""
    gh, gw = grid
    h = hidden.view(-1, gh, gw)
    return h.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)


def background_first_inference(
    label: torch.Tensor,
    missing: torch.Tensor,
    size: tuple[int, int],
    patch_size: int,
    ratio: float,
    background_index: int,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's Background-First inference mode for ``label [B, H, W]`` (any size) with holes
    ``missing [B, H, W]``, completed by a model working at ``size`` with ``patch_size`` patches:
    missing pixels count as background (the paper encodes missing areas as background); at ``ratio`` the
    patches with the largest background share are hidden, plus every patch that touches a hole. Returns
    ``(hidden [B, L], missing)``, ``missing`` grown by the background pixels of the chosen patches (those
    are re-predicted; object pixels are kept)."""
    as_bg = torch.where(missing, torch.full_like(label, background_index), label)
    extra = background_first_masking(
        resize_label(as_bg, size), patch_size, ratio, background_index=background_index, ignore_index=ignore_index
    )
    grid = (size[0] // patch_size, size[1] // patch_size)
    hidden = extra | hidden_from_missing(missing, grid)
    chosen = resize_label(hidden_to_pixels(extra, grid, patch_size).to(torch.uint8), tuple(label.shape[-2:])).bool()
    return hidden, missing | (chosen & (label == background_index))
