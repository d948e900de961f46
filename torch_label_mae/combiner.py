"""The prior combiner: a learned, class-agnostic refinement of the random-walk prior.

The random walk decides each unknown pixel from colour steps between neighbours alone. Two other
pieces of evidence that any label carries, whatever its classes, are left unused: how each present
class *looks* in this image (the colours of its known pixels) and how *far* each class's known pixels
are, and, for a third, which classes the straight rays from a pixel meet first. The combiner weighs
them with the walk per pixel and per present class:

    logit_k(x) = log P_walk(k | x) + MLP(features_k(x))           softmax over x's top classes

with one small MLP shared by every class (so any class list, any order: permuting the classes permutes
the output), whose last layer starts at zero (so it starts as the walk). The softmax runs over the
``TOP_CLASSES`` classes most likely at ``x`` under the walk (:func:`top_classes`: ties at the walk's
floor go to the nearer class); the others get 0. Where the walk gives one class ``SURE`` or more, the
pixel keeps the walk's probabilities: the MLP is not run there (``docs/training.md``, "Speed: the sure
pixels"). The features of class ``k`` at an unknown pixel ``x`` (:func:`features`, ``NUM_FEATURES``):

0. ``log P_walk(k | x)`` and 1. minus its maximum over the classes;
2. ``log A(k | x)``, the class posterior of ``x``'s colour under per-class colour histograms of the
   known pixels (:func:`appearance`), and 3. minus its maximum;
4. ``log(1 + d_k(x))``, ``d_k`` the distance to the nearest known pixel of ``k`` (in pixels of a
   224 x 224 image: scaled by ``224 / sqrt(H W)``), and 5. minus its minimum;
6. the log share of ``k`` among the known pixels; 7. the walk's entropy at ``x``; 8. ``log(1 + d(x))``,
   the distance to the nearest known pixel; 9. the log number of classes present;
10. ``log(c_k(x) + 1e-3)``, ``c_k`` the L*a*b* distance from ``x``'s colour to the mean colour of ``k``'s
    known pixels *near* ``x`` (:func:`local_colour`), and 11. minus its minimum.
12. ``r_k(x)``, the share of the four straight rays from ``x`` (left, right, up, down) whose first known
    pixel is of class ``k`` (:func:`rays`), and 13. minus its maximum.
14. ``h_k(x)``, how deep ``x`` lies in the convex hull of ``k``'s known pixels (:func:`hulls`: ``sign(d)
    log(1 + |d|)``, ``d`` the signed distance to the hull, negative inside), and 15. minus its minimum.

A combiner reads the first ``num_features`` of them (``FEATURE_COUNTS``: 12 for those trained before the
rays, 14 for those trained before the hulls, 16 since).

None of them names a class. What it was trained on and measured is in ``docs/training.md`` ("The prior
combiner").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from scipy.spatial import ConvexHull, QhullError
from torch import nn

from .propagation import rgb_to_lab

NUM_FEATURES = 16
FEATURE_COUNTS = (12, 14, NUM_FEATURES)  # the feature sets a combiner may read: before the rays, the hulls, all
BINS = 16  # colour histogram bins per L*a*b* channel, over each image's own range
SIGMA = 1.0  # Gaussian smoothing of the histograms, in bins
REFERENCE_SIDE = 224  # distances are measured in pixels of an image of this many pixels' area side
MIN_PROB = 1e-6  # probabilities are clipped here before their logarithm
LOCAL_SIGMA = 16.0  # the Gaussian window of the local mean colours, in pixels of a REFERENCE_SIDE image
LOCAL_CELLS = 56  # the local means are computed on a grid of about this many cells' area side, then upsampled
CHUNK = 4096  # pixels per pass of the MLP: its activations [M, CHUNK, width] stay in cache (2x faster than 65536)
SURE = 0.9999  # a pixel where the walk gives a class at least this probability keeps the walk's (the MLP is not run)
TOP_CLASSES = 5  # the classes the MLP weighs at a pixel: the walk's most likely (the others get 0; see top_classes)
HULL_STEP = 4.0  # the hull depths are computed every this many pixels of a REFERENCE_SIDE image, then interpolated
HULL_FAR = math.log1p(2.0 * REFERENCE_SIDE)  # the hull feature of a class whose known pixels span no area
# each feature as the class part and the pixel part it reads (Evidence.parts; None: none), the latter with its sign
_FEATURE_PARTS = (
    (0, None, 0),  # 0. log P_walk(k | x)
    (0, 0, -1),  # 1. minus its maximum
    (1, None, 0),  # 2. log A(k | x)
    (1, 1, -1),  # 3. minus its maximum
    (2, None, 0),  # 4. log(1 + d_k(x))
    (2, 2, -1),  # 5. minus its minimum
    (3, None, 0),  # 6. the log share of k
    (None, 3, 1),  # 7. the walk's entropy at x
    (None, 2, 1),  # 8. log(1 + d(x))
    (None, 4, 1),  # 9. the log number of classes
    (4, None, 0),  # 10. log(c_k(x) + 1e-3)
    (4, 5, -1),  # 11. minus its minimum
    (5, None, 0),  # 12. r_k(x)
    (5, 6, -1),  # 13. minus its maximum
    (6, None, 0),  # 14. h_k(x)
    (6, 7, -1),  # 15. minus its minimum
)


class PriorCombiner(nn.Module):
    """``MLP: [.., num_features] -> [..]`` added to the walk's log-probability (feature 0): the logit of a
    class at a pixel. ``width``: the MLP's hidden width (two hidden layers); ``num_features``: how many of
    the features it reads (one of ``FEATURE_COUNTS``). In an :class:`LMAE` it is frozen (trained apart, by
    ``tools/train_combiner.py``)."""

    def __init__(self, width: int, num_features: int = NUM_FEATURES):
        super().__init__()
        if num_features not in FEATURE_COUNTS:
            raise ValueError(f"num_features must be one of {FEATURE_COUNTS}, got {num_features!r}")
        self.num_features = num_features
        self.mlp = nn.Sequential(
            nn.Linear(num_features, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1)
        )
        nn.init.zeros_(self.mlp[-1].weight)  # start as the walk
        nn.init.zeros_(self.mlp[-1].bias)

    @classmethod
    def frozen(cls, prior) -> PriorCombiner | None:
        """The combiner a config's ``prior`` section describes (its ``combiner`` width and
        ``combiner_features``), without gradients, as an :class:`LMAE` holds it; None when it has none."""
        width = getattr(prior, "combiner", 0)
        return cls(width, prior.combiner_features).requires_grad_(False) if width else None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats [..., F]`` (one row per pixel and class, ``F`` at least ``num_features``: the first are
        read) -> logits ``[...]`` float32 (a softmax over the classes gives the combined probabilities); the
        MLP runs in its weights' dtype, the walk's term stays in ``feats``' precision."""
        weight = self.mlp[0].weight
        x = feats[..., : self.num_features].to(weight.dtype)
        return feats[..., 0].float() + self.mlp(x).squeeze(-1).float()

    def logits(self, evidence: Evidence, rows: slice = slice(None), top: torch.Tensor | None = None) -> torch.Tensor:
        """The logits ``[K, r]`` of :meth:`forward` on ``evidence.features(rows, top)`` (``[M, r]`` with ``top``),
        on the device of the weights, without building the features: the MLP's first layer applied to
        the class parts and to the pixel parts apart (:meth:`Evidence.parts`; features are sums of them).
        The same up to float32 rounding; with weights in a lower precision, up to its rounding (the parts
        are rounded instead of their differences)."""
        weight, bias = self.mlp[0].weight, self.mlp[0].bias  # [width, F], [width]
        on_class, on_pixel = (  # [7, width], [8, width]: the first layer's weight on each part
            (m[:, : self.num_features].to(weight.device) @ weight.float().T).to(weight.dtype) for m in feature_maps()
        )
        per_class, per_pixel = evidence.parts(rows, top)  # [7, M, r], [8, r] float32
        walk = per_class[0].to(weight.device)  # [M, r]: the walk's log-probability, kept in float32
        per_class, per_pixel = per_class.to(weight), per_pixel.to(weight)
        _, m, r = per_class.shape
        h = torch.addmm(bias, per_pixel.T, on_pixel)  # [r, width]
        h = torch.mm(per_class.flatten(1).T, on_class).view(m, r, h.shape[1]).add_(h)  # [M, r, width]
        return walk + self.mlp[1:](h).squeeze(-1).float()  # [M, r]

    @torch.no_grad()
    def contexts(
        self, image: torch.Tensor, label: torch.Tensor, known: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> list[Context | None]:
        """The :class:`Context` of each sample, on the CPU (None where there is nothing to refine: fewer
        than two present classes, or no unknown pixel); arguments as :meth:`refine`. It does not need the
        walk, so it may be computed while the walk is solved."""
        out = []
        for i in range(label.shape[0]):
            k = int(valid[i].sum())
            if not bool(valid[i, :k].all()):
                raise ValueError(f"refine: sample {i}'s present classes must come first in valid, got {valid[i]}")
            if k < 2 or bool(known[i].all()):
                out.append(None)
                continue
            sample = (t[i].cpu() for t in (image, label, known))
            out.append(context(*sample, index[i, :k].cpu(), num_features=self.num_features))
        return out

    @torch.no_grad()
    def refine(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        known: torch.Tensor,
        prob: torch.Tensor,
        index: torch.Tensor,
        valid: torch.Tensor,
        contexts: list[Context | None] | None = None,
    ) -> torch.Tensor:
        """The walk's probabilities ``prob [B, K, H, W]`` of the classes ``index [B, K]`` (``valid [B, K]``:
        each sample's present classes first, as :func:`~torch_label_mae.propagation.present_classes` gives
        them) replaced on the unknown pixels by the combined ones: a new tensor; known pixels, unknown pixels
        where the walk gives a class ``SURE`` or more, and absent classes keep theirs. ``image [B, 3, H, W]``
        (uint8, or float in [0, 1]), ``label [B, H, W]``, ``known [B, H, W]`` bool. ``contexts``:
        :meth:`contexts` of the same arguments (computed here when not given). The MLP runs where its
        weights are, on ``CHUNK`` pixels at a time."""
        if contexts is None:
            contexts = self.contexts(image, label, known, index, valid)
        if len(contexts) != prob.shape[0]:
            raise ValueError(f"refine: {len(contexts)} contexts for a batch of {prob.shape[0]}")
        out = prob.clone(memory_format=torch.contiguous_format)
        for i, ctx in enumerate(contexts):
            if ctx is not None:
                k = ctx.log_share.shape[0]
                evidence = Evidence(walk_log_prob(prob[i, :k].cpu(), ctx.pixels), ctx)
                todo = (evidence.lw.amax(0) < math.log(SURE)).nonzero().squeeze(1)  # [m]: where the walk is unsure
                combined = self.combine(evidence.select(todo))  # [K, m]
                out[i, :k].view(k, -1).index_copy_(1, ctx.pixels[todo].to(out.device), combined.to(out))
        return out

    def combine(self, evidence: Evidence) -> torch.Tensor:
        """The combined probabilities ``[K, n]`` of the evidence's ``n`` pixels (one sample's unknown pixels,
        or a :meth:`Evidence.select` of them): the softmax of the logits
        over each pixel's :func:`top_classes`, 0 for the others. The MLP runs where its weights are, on
        ``CHUNK`` pixels at a time."""
        k, n = evidence.lw.shape
        out = torch.zeros(k, n, dtype=torch.float32)
        for s in range(0, n, CHUNK):
            rows = slice(s, s + CHUNK)
            top = top_classes(evidence, rows) if k > TOP_CLASSES else None  # [M, r]
            p = self.logits(evidence, rows, top).softmax(0).cpu()  # [M, r]
            if top is None:
                out[:, rows] = p
            else:  # a view of out: written in place
                out[:, rows].scatter_(0, top, p)
        return out


class Context(NamedTuple):
    """What one sample's label says about its ``n`` unknown pixels (``pixels [n]``, flat indices in raster
    order) and ``K`` present classes, apart from the walk: the colour's log-posterior ``lq [K, n]`` (see
    :func:`appearance`), the distance to each class's known pixels ``dist [K, n]`` (see :func:`distances`),
    the log share of each class among the known pixels ``log_share [K]``, the colour distance to each
    class's local mean colour ``local [K, n]`` (see :func:`local_colour`), each class's share of the straight
    rays ``ray [K, n]`` (see :func:`rays`), the depth in each class's convex hull ``hull [K, n]`` (see
    :func:`hulls`). Class-major, so that what compares the classes at a pixel runs
    along the pixels."""

    pixels: torch.Tensor
    lq: torch.Tensor
    dist: torch.Tensor
    log_share: torch.Tensor
    local: torch.Tensor
    ray: torch.Tensor
    hull: torch.Tensor


class Evidence(NamedTuple):
    """The walk's log-probability ``lw [K, n]`` (see :func:`walk_log_prob`) and the :class:`Context` of the
    same pixels and classes."""

    lw: torch.Tensor
    context: Context

    def select(self, which: torch.Tensor) -> Evidence:
        """The evidence of the pixels ``which [m]`` (positions among the ``n``) alone: what compares the classes
        at a pixel stays the same, so the combiner gives them what it gives them among all ``n``."""
        ctx = self.context
        picked = (t.index_select(1, which) for t in (ctx.lq, ctx.dist, ctx.local, ctx.ray, ctx.hull))
        lq, dist, local, ray, hull = picked
        return Evidence(
            self.lw.index_select(1, which), Context(ctx.pixels[which], lq, dist, ctx.log_share, local, ray, hull)
        )

    def parts(self, rows: slice = slice(None), top: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The parts the features of the pixels ``rows`` are sums of (with ``top [M, r]``, positions among the
        ``K`` classes per pixel, those of the ``M`` classes it names): the class parts ``[7, K or M, r]``
        (``log P_walk``, ``log A``, ``log(1 + d_k)``, the log share, ``log(c_k + 1e-3)``, ``r_k``, ``h_k``) and the
        pixel parts ``[8, r]``, over all ``K`` classes (the largest ``log P_walk`` and ``log A``, the smallest
        ``log(1 + d_k)``, the walk's entropy, ``log K``, the smallest ``log(c_k + 1e-3)``, the largest ``r_k``, the
        smallest ``h_k``);
        float32, on the evidence's device. :func:`feature_maps` says which feature reads which."""
        ctx = self.context
        lw, lq, dist, local, ray, hull = (
            t[:, rows] for t in (self.lw, ctx.lq, ctx.dist, ctx.local, ctx.ray, ctx.hull)
        )  # [K, r]
        k, n = lw.shape
        per_pixel = torch.stack(  # amax / amin, not max / min: 20x faster along the classes on the CPU
            [
                lw.amax(0),
                lq.amax(0),
                dist.amin(0).log1p(),
                -(lw.exp() * lw).sum(0),  # the walk's entropy
                lw.new_full((n,), math.log(k)),
                (local.amin(0) + 1e-3).log(),
                ray.amax(0),
                hull.amin(0),
            ]
        )  # [8, r]
        share = ctx.log_share.view(k, 1).expand(k, n)
        if top is not None:
            lw, lq, dist, local, share, ray, hull = (t.gather(0, top) for t in (lw, lq, dist, local, share, ray, hull))
        per_class = torch.stack([lw, lq, dist.log1p(), share, (local + 1e-3).log(), ray, hull])  # [7, K or M, r]
        return per_class, per_pixel

    def features(self, rows: slice = slice(None), top: torch.Tensor | None = None) -> torch.Tensor:
        """The combiner's features ``[K, r, NUM_FEATURES]`` (float32) of the pixels ``rows``; with ``top [M, r]``
        (positions among the ``K`` classes, per pixel) those of the ``M`` classes it names, ``[M, r, F]``.
        The features relative to the other classes compare with all ``K``."""
        per_class, per_pixel = self.parts(rows, top)
        zero = torch.zeros_like(per_class[0])
        cols = [
            (zero if c is None else per_class[c]) + (0 if p is None else sign * per_pixel[p])
            for c, p, sign in _FEATURE_PARTS
        ]
        return torch.stack(cols, -1)  # [K or M, r, F]


def feature_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """``[7, NUM_FEATURES]`` and ``[8, NUM_FEATURES]``: each feature as a linear map of the class parts and of
    the pixel parts of :meth:`Evidence.parts` (0, 1 or -1), so that a linear layer on the features is one
    on each part."""
    of_class = torch.zeros(7, NUM_FEATURES, dtype=torch.float32)
    of_pixel = torch.zeros(8, NUM_FEATURES, dtype=torch.float32)
    for f, (c, p, sign) in enumerate(_FEATURE_PARTS):
        if c is not None:
            of_class[c, f] = 1.0
        if p is not None:
            of_pixel[p, f] = float(sign)
    return of_class, of_pixel


def top_classes(evidence: Evidence, rows: slice = slice(None)) -> torch.Tensor:
    """``[M, r]``: the positions of the ``M = min(TOP_CLASSES, K)`` classes the MLP weighs at each of the
    pixels ``rows``: the most likely under the walk. The walk's probabilities tie at its floor
    (``MIN_PROB``) wherever fewer classes reach a pixel; the classes tied at a pixel's lowest probability
    go in order of distance (the nearer first), then of colour posterior (the better first), so that the
    choice depends on the classes' evidence, never on their order (where all three tie, on the order).
    One exact integer key: the order-preserving bit patterns of the float32 values."""
    ctx = evidence.context
    lw, dist, lq = evidence.lw[:, rows], ctx.dist[:, rows], ctx.lq[:, rows]  # [K, r], lw and lq <= 0, dist >= 0
    key = _bits(-lw)  # [K, r] int64: smaller is more likely
    lowest = lw == lw.amin(0, keepdim=True)  # [K, r]: the classes tied at the pixel's lowest (the floor)
    key = torch.where(lowest, (1 << 62) + (_bits(dist) << 31) + _bits(-lq), key)
    return key.topk(min(TOP_CLASSES, key.shape[0]), dim=0, largest=False).indices


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The bit patterns of float32 ``x >= 0`` as int64 (below 2^31), in the order of the values."""
    return (x.float().clamp(min=0) + 0.0).view(torch.int32).long()  # + 0.0: -0.0 becomes 0.0


def context(
    image: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor,
    classes: torch.Tensor,
    num_features: int = NUM_FEATURES,
) -> Context:
    """The :class:`Context` of one sample: ``image [3, H, W]`` (uint8, or float in [0, 1]), ``label [H, W]``,
    ``known [H, W]`` bool, its present ``classes [K]``, for a combiner that reads ``num_features`` (one of
    ``FEATURE_COUNTS``): zeros for the rays (12) and the hulls (12 and 14) it does not read."""
    free = ~known
    pixels = free.flatten().nonzero().squeeze(1)  # [n]: the unknown pixels, raster order
    own = known.unsqueeze(0) & (label.unsqueeze(0) == classes.view(-1, 1, 1))  # [K, H, W]
    rgb = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    lab = rgb_to_lab(rgb.unsqueeze(0))[0]  # [3, H, W]
    lq = appearance(lab, own, pixels).clamp(min=MIN_PROB).log()  # [K, n]
    share = own.flatten(1).sum(1).float() / own.sum().clamp(min=1)  # [K]
    local = local_colour(lab, own, pixels)  # [K, n]
    unread = lab.new_zeros(classes.shape[0], pixels.shape[0])  # [K, n]
    ray = rays(own, pixels) if num_features > FEATURE_COUNTS[0] else unread  # [K, n]
    hull = hulls(own, pixels) if num_features > FEATURE_COUNTS[1] else unread  # [K, n]
    return Context(pixels, lq, distances(own, free), share.clamp(min=1e-12).log(), local, ray, hull)


def walk_log_prob(prob: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: the log of the walk's ``prob [K, H, W]`` at the ``pixels [n]`` (flat indices), clipped at
    ``MIN_PROB`` and renormalised."""
    p = prob.flatten(1).index_select(1, pixels).float().clamp(min=MIN_PROB)
    return (p / p.sum(0, keepdim=True)).log()


def features(
    image: torch.Tensor, label: torch.Tensor, known: torch.Tensor, prob: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The combiner's features ``[n, K, NUM_FEATURES]`` (float32) of one sample's ``n`` unknown pixels
    (raster order) and its ``K`` present ``classes [K]`` (arguments as :func:`context`), the walk's
    ``prob [K, H, W]`` of them."""
    ctx = context(image, label, known, classes)
    return Evidence(walk_log_prob(prob, ctx.pixels), ctx).features().transpose(0, 1)


def appearance(lab: torch.Tensor, own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The class posterior ``[K, n]`` of the colours of the ``pixels [n]`` (flat indices into ``lab [3, H, W]``,
    the image in L*a*b* as :func:`~torch_label_mae.propagation.rgb_to_lab` gives it) under per-class colour
    histograms of the pixels ``own [K, H, W]`` (bool; class ``k``'s known pixels), classes equally likely a
    priori. Histograms: ``BINS`` per channel over the image's own range, smoothed by a Gaussian of ``SIGMA``
    bins."""
    lo = lab.flatten(1).min(1).values.view(3, 1, 1)
    hi = lab.flatten(1).max(1).values.view(3, 1, 1)
    q = ((lab - lo) / (hi - lo).clamp(min=1e-6) * BINS).long().clamp(0, BINS - 1)
    bin_of = ((q[0] * BINS + q[1]) * BINS + q[2]).flatten()  # [HW]
    k = own.shape[0]
    hist = torch.zeros(k, BINS**3, dtype=torch.float32)
    hist.scatter_add_(1, bin_of.expand(k, -1), own.flatten(1).float())
    hist = _smooth(hist.view(k, 1, BINS, BINS, BINS)).view(k, -1)
    like = (hist + 1e-3 / BINS**3) / (hist.sum(1, keepdim=True) + 1e-3)  # [K, bins]: a density over the bins
    post = like.index_select(1, bin_of.index_select(0, pixels))  # [K, n]
    return post / post.sum(0, keepdim=True)


def local_colour(lab: torch.Tensor, own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: the L*a*b* distance from the colour of each of the ``pixels [n]`` (flat indices into
    ``lab [3, H, W]``, as for :func:`appearance`) to the mean colour of class ``k``'s pixels ``own [K, H, W]``
    near it, weighted by a Gaussian window of ``LOCAL_SIGMA`` pixels of a ``REFERENCE_SIDE`` image
    (normalised convolution on a grid of about ``LOCAL_CELLS`` cells a side, upsampled bilinearly); where a
    class has few pixels in the window, its mean over the whole image takes over."""
    h, w = lab.shape[-2:]
    side = math.sqrt(h * w)
    cell = max(1, round(side / LOCAL_CELLS))
    grid, whole = _cell_means(lab, own, cell)  # [K, 4, gh, gw], [K, 3]
    k, c = own.shape[0], own.shape[0] * 4
    sigma = LOCAL_SIGMA * side / REFERENCE_SIDE / cell
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = (-(t**2) / (2 * sigma**2)).exp()
    g = g / g.sum()
    x = grid.reshape(1, c, *grid.shape[-2:])
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    x = x.view(k, 4, *grid.shape[-2:])
    colours = lab.flatten(1).index_select(1, pixels)  # [3, n]
    size = (grid.shape[-2] * cell, grid.shape[-1] * cell)
    eps = 1e-2  # the window's weight below which the whole image's mean takes over
    out = torch.empty(k, pixels.shape[0], dtype=torch.float32)  # [K, n]
    for i in range(k):  # a class at a time: one class's full-size maps [4, H, W] in memory, not all classes'
        xi = x[i : i + 1]
        if cell > 1:  # the grid covers ceil(h / cell) * cell rows: upsample to that, then crop, so cells stay in place
            xi = F.interpolate(xi, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
        xi = xi.flatten(2)[0].index_select(1, pixels)  # [4, n]
        d = colours - (xi[:3] + eps * whole[i].view(3, 1)) / (xi[3:] + eps)  # [3, n]: minus the local mean
        out[i] = (d[0] ** 2 + d[1] ** 2 + d[2] ** 2).sqrt()  # not .norm(dim=0): 4x slower on the CPU
    return out


def _cell_means(lab: torch.Tensor, own: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's colour sums and pixel counts per ``cell x cell`` cell, divided by the cell's area in
    the image, ``[K, 4, ceil(H / cell), ceil(W / cell)]``, and its mean colour over the whole image ``[K, 3]``:
    of ``lab [3, H, W]`` over the pixels ``own [K, H, W]``."""
    h, w = lab.shape[-2:]
    k, gh, gw = own.shape[0], -(-h // cell), -(-w // cell)
    slot, pixel = own.flatten(1).nonzero().unbind(1)  # [m] each: the class and the pixel of each known pixel
    at = slot * (gh * gw) + (pixel // w // cell) * gw + pixel % w // cell
    values = lab.flatten(1).index_select(1, pixel)  # [3, m]
    values = torch.cat([values, values.new_ones(1, pixel.shape[0])]).T  # [m, 4]
    sums = values.new_zeros(k * gh * gw, 4).index_add_(0, at, values).view(k, gh, gw, 4).permute(0, 3, 1, 2)
    rows = (h - torch.arange(gh) * cell).clamp(max=cell)
    cols = (w - torch.arange(gw) * cell).clamp(max=cell)
    area = (rows.view(-1, 1) * cols.view(1, -1)).float()  # [gh, gw]: the cells at the far edges are cut
    whole = sums[:, :3].flatten(2).sum(2) / sums[:, 3].flatten(1).sum(1).clamp(min=1).view(-1, 1)
    return sums / area, whole


def _smooth(hist: torch.Tensor) -> torch.Tensor:
    """``hist [K, 1, D, D, D]`` convolved along each axis with a Gaussian of ``SIGMA`` (replicated edges)."""
    r = int(2 * SIGMA + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = (-(t**2) / (2 * SIGMA**2)).exp()
    g = g / g.sum()
    for axis in range(3):
        shape, pad = [1, 1, 1, 1, 1], [0] * 6
        shape[2 + axis] = len(g)
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        hist = F.conv3d(F.pad(hist, pad, mode="replicate"), g.view(shape))
    return hist


def rays(own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: for each of the ``pixels [n]`` (flat indices, unknown pixels), the share of the four
    straight rays from it (left, right, up, down) whose first known pixel is of class ``k`` (``own [K, H, W]``:
    each class's known pixels, disjoint). A ray that leaves the image before meeting a known pixel counts for
    no class. The walk's steps follow the colours; the rays say which classes enclose a pixel."""
    k = own.shape[0]
    slot = torch.full(own.shape[1:], k)  # [H, W]: each known pixel's class, k where unknown
    for i in range(k):
        slot.masked_fill_(own[i], i)  # not argmax over the classes: 15x slower on the CPU
    count = torch.zeros(k + 1, pixels.shape[0], dtype=torch.float32)
    ones = torch.ones(1, pixels.shape[0], dtype=torch.float32)
    for transpose in (False, True):
        for flip in (False, True):
            s = slot.T if transpose else slot
            hit = _first_known(s.flip(1), k).flip(1) if flip else _first_known(s, k)  # rightward, else leftward
            hit = hit.T if transpose else hit  # [H, W]
            count.scatter_add_(0, hit.flatten().index_select(0, pixels).view(1, -1), ones)
    return count[:k] / 4


def _first_known(slot: torch.Tensor, k: int) -> torch.Tensor:
    """``[H, W]``: along each row of ``slot [H, W]`` (a class, or ``k`` where unknown), the class of the last
    known pixel at or left of each pixel; ``k`` where there is none."""
    w = slot.shape[1]
    at = torch.where(slot < k, torch.arange(w), -1).cummax(1).values  # [H, W]: its column, -1 for none
    return torch.where(at >= 0, slot.gather(1, at.clamp(min=0)), k)


def hulls(own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: how deep each of the ``pixels [n]`` (flat indices) lies in the convex hull of each class's
    pixels ``own [K, H, W]``: ``sign(d) log(1 + |d|)``, ``d`` the largest signed distance to the lines of the
    hull's edges (inside: minus the distance to the nearest edge; outside: up to the distance), in pixels of an image of
    ``REFERENCE_SIDE`` squared pixels; ``HULL_FAR`` for a class whose pixels span no area (one pixel, one
    line). ``d`` is the maximum of planes: it is computed on a grid of ``HULL_STEP`` pixels and interpolated
    (bilinear) between. The rays say which classes enclose a pixel along four lines; the hull says it over
    every direction, for parts that are convex (a wheel, a door, a cell)."""
    k, h, w = own.shape
    scale = REFERENCE_SIDE / math.sqrt(h * w)
    # the grid: every HULL_STEP reference pixels, ends included (interpolated exactly with align_corners)
    gh, gw = (max(2, math.ceil((n - 1) * scale / HULL_STEP) + 1) for n in (h, w))
    gx, gy = (torch.linspace(0, n - 1, g, dtype=torch.float32) for n, g in ((w, gw), (h, gh)))
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).view(-1, 2)  # [gh * gw, 2]: (x, y), float32
    # the corners of a class's hull are among each row's first and last pixel of the class
    first = own.view(torch.uint8).argmax(2)  # [K, H]: 0 in a row without the class
    rows = own.gather(2, first.unsqueeze(2)).squeeze(2)  # [K, H]: the rows with the class
    last = w - 1 - own.flip(2).view(torch.uint8).argmax(2)
    depth = torch.zeros(k, gh * gw, dtype=torch.float32)
    flat = torch.ones(k, 1, dtype=torch.bool)  # [K, 1]: the classes without a hull
    for i in range(k):
        y = rows[i].nonzero().squeeze(1)
        corners = torch.cat([torch.stack([first[i, y], y], 1), torch.stack([last[i, y], y], 1)]).double()
        try:
            eq = torch.from_numpy(ConvexHull(corners.numpy()).equations).float()  # [E, 3]: inside: n . x + c <= 0
        except (QhullError, ValueError):  # fewer than 3 corners, or all on one line
            continue
        depth[i] = torch.addmm(eq[:, 2], grid, eq[:, :2].T).amax(1)  # [gh * gw]
        flat[i] = False
    d = F.interpolate(depth.view(1, k, gh, gw), size=(h, w), mode="bilinear", align_corners=True)
    d = d.view(k, -1).index_select(1, pixels) * scale  # [K, n]
    return torch.where(flat, HULL_FAR, d.sign() * d.abs().log1p())  # float32


def distances(own: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: from each of the ``free [H, W]`` pixels to the nearest pixel of each ``own [K, H, W]``
    map (exact Euclidean), in pixels of an image of ``REFERENCE_SIDE`` squared pixels."""
    h, w = free.shape
    scale = REFERENCE_SIDE / math.sqrt(h * w)
    maps = own.cpu().numpy()
    f = free.cpu().numpy()
    out = np.empty((maps.shape[0], int(f.sum())), dtype=np.float32)
    for k, m in enumerate(maps):
        out[k] = distance_transform_edt(~m)[f] * scale if m.any() else 2.0 * REFERENCE_SIDE
    return torch.from_numpy(out)
