"""Label propagation: nearest-label fill and the random walk, the two label priors' algorithms.

**Nearest fill.** Each unknown pixel takes the class of the nearest known pixel (Euclidean), the
classical baseline, from ``scipy.ndimage.distance_transform_edt`` (exact; C code that releases the GIL,
so the maps of a batch are spread over as many threads as torch uses; maps are moved to the CPU for it).

**Random walk.** Each unknown pixel takes the class whose known pixels a random walker starting there most likely
reaches first (Grady, "Random walks for image segmentation", 2006), on the 4-connected pixel graph
with scikit-image's edge weights ``exp(-beta * |I_i - I_j|^2 / (10 * std(I) * sqrt(3)))``. Where
nearest fill draws straight borders through a hole, the random
walker follows the image's edges.

Two options go beyond scikit-image. ``connectivity`` 8 adds the diagonal edges and 16 also the
knight's-move ones (offsets (1, 2) and (2, 1), the neighbourhoods of Boykov & Kolmogorov, "Computing
geodesics and minimal surfaces via graph cuts", 2003), each weighted by its inverse length (a
simplification of their angle-dependent weights), so that borders need not follow the pixel axes.
``color="lab"`` measures the colour step in CIE L*a*b* (divided by 100), where distances follow
perceived differences rather than raw RGB.

The Dirichlet problem (the combinatorial Laplace equation on the unknown pixels, known pixels fixed)
is solved in torch, batched, on CPU or GPU, for the classes each sample's known pixels contain only:
successive over-relaxation started from the nearest fill (red-black on the 4-connected grid; 4 and 9
colours on the 8- and 16-connected ones). A few dozen sweeps do not reach the exact solution far
inside large holes, where they stay near the nearest fill; near edges they settle first.

``solver="direct"`` solves the same system exactly instead: the system is symmetric positive definite,
so one sparse LDL^T factorisation per sample (QDLDL, with an approximate-minimum-degree ordering, on the
CPU) serves all its classes. What each option measured (graphs, colour spaces, sweeps against the exact
solve, the factorisations) is in ``docs/training.md``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from .threads import run_each

try:  # a dependency; a Python that runs the source tree without it (the GPU machine's image) gets SuperLU
    import qdldl
except ImportError:  # tests hide it to check SuperLU
    qdldl = None

DEFAULT_BETA = 2000.0  # chosen for scikit-image's random walker over 30..8000 (docs/training.md)
DEFAULT_SWEEPS = 40  # relaxation sweeps from the nearest fill (docs/training.md: sweeps against the exact solve)
SOLVERS = ("sor", "direct")  # red-black over-relaxation (truncated) | sparse LDL^T (exact)
CONNECTIVITIES = (4, 8, 16)
COLORS = ("rgb", "lab")
# the offsets (dy, dx) from a pixel to its neighbours along each kind of edge: horizontal, vertical, with
# connectivity 8 the two diagonals, with 16 the four knight's moves; the first connectivity / 2 kinds make
# the graph. The weights of each kind are a map [B, 1, H - dy, W - |dx|].
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (1, -2), (2, -1))


@torch.no_grad()
def nearest_source(known: torch.Tensor) -> torch.Tensor:
    """``known [B, H, W]`` bool -> flat index ``[B, H, W]`` int64 of the nearest known pixel
    (-1 where a sample has no known pixel)."""
    b, h, w = known.shape
    k = known.detach().cpu().numpy()
    out = np.full((b, h, w), -1, dtype=np.int64)

    def one(i: int) -> None:
        if k[i].any():
            idx = np.empty((2, h, w), dtype=np.int32)
            distance_transform_edt(~k[i], return_distances=False, return_indices=True, indices=idx)
            out[i] = idx[0].astype(np.int64) * w + idx[1]

    workers = min(b, torch.get_num_threads())
    if workers > 1:  # scipy's transform releases the GIL: one map per thread
        run_each("nearest", workers, one, range(b))
    else:
        for i in range(b):
            one(i)
    return torch.from_numpy(out).to(known.device)


@torch.no_grad()
def nearest_fill(label: torch.Tensor, known: torch.Tensor | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Fill every pixel with the class of the nearest known pixel.

    ``label [B, H, W]`` int; ``known`` defaults to ``label != ignore_index``. Samples without any
    known pixel come back as all ``ignore_index``. The input is not modified.
    """
    if known is None:
        known = label != ignore_index
    src = nearest_source(known)
    flat = label.flatten(1)
    out = flat.gather(1, src.clamp(min=0).flatten(1)).view_as(label)
    return torch.where(src >= 0, out, torch.full_like(out, ignore_index))


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` in [0, 1] -> CIE L*a*b* (D65 white) ``[B, 3, H, W]`` divided by 100 (L* in
    [0, 1]; a*, b* about [-1, 1]), as :func:`skimage.color.rgb2lab` then ``/ 100``."""
    lin = torch.where(image > 0.04045, ((image + 0.055) / 1.055).pow(2.4), image / 12.92)
    m = image.new_tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / image.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856).pow(1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([1.16 * fy - 0.16, 5.0 * (fx - fy), 2.0 * (fy - fz)], 1)


def _ends(dy: int, dx: int, h: int, w: int):
    """The slices of the pixels at the two ends of the edges of offset ``(dy, dx)``: ``(a, b)``, each
    ``(rows, cols)``, with pixel ``a + (dy, dx) = b``."""
    a = (slice(0, max(h - dy, 0)), slice(min(max(0, -dx), w), max(w - max(0, dx), 0)))
    b = (slice(min(dy, h), h), slice(min(max(0, dx), w), max(w - max(0, -dx), 0)))
    return a, b


def _pads(dy: int, dx: int, h: int, w: int):
    """``F.pad`` amounts that put a map over the ``a`` (resp. ``b``) ends of offset ``(dy, dx)`` back at
    full size ``h x w`` (also where the image is smaller than the offset and the map empty)."""
    return tuple((c.start, w - c.stop, r.start, h - r.stop) for r, c in _ends(dy, dx, h, w))


def _kinds(weights):
    """``((dy, dx), weights)`` of each kind of edge in ``weights`` (2 maps: 4-connected, 4: 8, 8: 16)."""
    if len(weights) not in (2, 4, 8):
        raise ValueError(f"edge weights: 2, 4 or 8 maps (connectivity 4, 8 or 16), got {len(weights)}")
    return zip(OFFSETS[: len(weights)], weights, strict=True)


def edge_weights(
    image: torch.Tensor, beta: float, connectivity: int = 4, color: str = "rgb"
) -> tuple[torch.Tensor, ...]:
    """``image [B, C, H, W]`` float -> the weights of each kind of edge (see ``OFFSETS``): horizontal
    ``[B, 1, H, W-1]`` and vertical ``[B, 1, H-1, W]``, plus with ``connectivity`` 8 the two diagonals
    ``[B, 1, H-1, W-1]`` and with 16 the knight's moves, each times its inverse length. Scaled per image
    by its standard deviation (as scikit-image does), after the conversion to L*a*b* with ``color="lab"``
    (``C`` must then be 3)."""
    if connectivity not in CONNECTIVITIES or not isinstance(connectivity, int):
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")  # else the walk comes back NaN
    if color == "lab":
        image = rgb_to_lab(image)
    b, c, h, w = image.shape
    std = image.flatten(1).std(1, correction=0).clamp(min=1e-6).view(b, 1, 1, 1)  # numpy's std, as scikit-image
    scale = -beta / (10 * std * math.sqrt(c))
    weights = []
    for dy, dx in OFFSETS[: connectivity // 2]:
        a, e = _ends(dy, dx, h, w)
        d = (image[..., a[0], a[1]] - image[..., e[0], e[1]]).pow(2).sum(1, keepdim=True)
        weights.append((d * scale).exp_().mul_(1 / math.hypot(dy, dx)).add_(1e-10))
    return tuple(weights)


def present_classes(label: torch.Tensor, known: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes among each sample's known pixels, padded to the longest list:
    ``(classes [B, K] int64, valid [B, K] bool)``, ascending within a sample."""
    b = label.shape[0]
    flat = torch.where(known, label, torch.full_like(label, num_classes)).flatten(1).long()  # [B, HW]
    seen = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=label.device)
    seen.scatter_(1, flat, True)
    seen = seen[:, :num_classes]
    k = max(int(seen.sum(1).max()), 1)
    order = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)[:, :k]  # present classes first
    return order, seen.gather(1, order)


def _degree(weights) -> torch.Tensor:
    """The weighted degree ``[B, 1, H, W]`` of each pixel of the graph of ``weights`` (see :func:`edge_weights`)."""
    h, w = weights[0].shape[-2], weights[0].shape[-1] + 1  # from the horizontal edges [B, 1, H, W - 1]
    deg = 0
    for (dy, dx), wt in _kinds(weights):
        pad_a, pad_b = _pads(dy, dx, h, w)
        deg = deg + F.pad(wt, pad_a) + F.pad(wt, pad_b)
    return deg


def _sor_steps(free: torch.Tensor, weights, omega: float):
    """The degree ``[B, 1, H, W]`` of each pixel and the SOR step sizes of each colour of the ordering
    (``omega / degree`` on the ``free`` pixels of that colour, 0 elsewhere). No two pixels of a colour are
    neighbours: red-black on the 4-connected grid, ``(y mod m, x mod m)`` otherwise (m = 2 on the
    8-connected grid, 3 on the 16-connected one, whose offsets reach 2 pixels)."""
    h, w = free.shape[-2:]
    deg = _degree(weights)
    ys = torch.arange(h, device=free.device).view(h, 1)
    xs = torch.arange(w, device=free.device).view(1, w)
    m = 3 if len(weights) > 4 else 2
    colour = (ys + xs) % 2 if len(weights) == 2 else (ys % m) * m + xs % m
    step = free * omega / deg.clamp(min=1e-30)  # an isolated pixel (1 x 1 map) has no edges
    return deg, tuple(step * (colour == k).to(free.dtype) for k in range(int(colour.max()) + 1))


def _relax(p: torch.Tensor, free: torch.Tensor, weights, sweeps: int, omega: float):
    """Over-relaxation sweeps (2, 4 or 9 colours, see :func:`_sor_steps`) on ``L p = 0`` over the ``free``
    pixels, in place. ``p [B, K, H, W]``."""
    h, w = p.shape[-2:]
    deg, steps = _sor_steps(free, weights, omega)
    neg_deg = -deg
    edges = [(_ends(dy, dx, h, w), wt) for (dy, dx), wt in _kinds(weights)]
    residual = torch.empty_like(p)
    for _ in range(sweeps):
        for s in steps:
            torch.mul(p, neg_deg, out=residual)  # residual = sum_j w_ij p_j - deg_i p_i
            for ((ar, ac), (br, bc)), wt in edges:
                residual[..., ar, ac].addcmul_(wt, p[..., br, bc])
                residual[..., br, bc].addcmul_(wt, p[..., ar, ac])
            p.addcmul_(residual, s)
    return p


def _system(free: np.ndarray, h: int, w: int, weights):
    """The walk's system on the ``n`` free pixels of one sample (``free [H*W]`` bool, raster order; ``weights``
    as :func:`edge_weights` gives them, batch 1), read off the pixel grid without an edge list: ``L_ff``'s
    upper triangle (CSC, the diagonal included, the rows of each column ascending) and the edges from a free
    pixel to a known one as ``(row [E], known pixel [E], weight [E])`` (float64, on the CPU)."""
    cols = np.flatnonzero(free)  # [n]: the free pixels, raster order; column j of L_ff is pixel cols[j]
    n = cols.size
    index = np.full(h * w, -1, dtype=np.int64)
    index[cols] = np.arange(n)
    degree = np.zeros(n)
    rows, values, out = [], [], []  # per kind: the upper triangle's entries [n]; the edges to known pixels
    # the other end of a column's edges lies at pixel - offset (above it in raster order) or pixel + offset;
    # kinds in decreasing offset, so that the rows above the diagonal come in ascending order
    for (dy, dx), weight in sorted(_kinds(weights), key=lambda kind: -(kind[0][0] * w + kind[0][1])):
        offset = dy * w + dx
        weight = weight[0, 0].detach().to("cpu", torch.float64)
        for pad, sign in zip(_pads(dy, dx, h, w), (1, -1), strict=True):  # the edge to pixel + sign * offset
            at = F.pad(weight, pad).flatten().numpy()[cols]  # [n]; 0 where the pixel has no such edge
            edge = F.pad(torch.ones_like(weight), pad).flatten().numpy()[cols] > 0  # [n]: whether it has one
            other = np.where(edge, cols + sign * offset, cols)
            degree += at
            to_known = edge & ~free[other]
            out.append((np.flatnonzero(to_known), other[to_known], at[to_known]))
            if sign == -1:
                above = edge & free[other]
                rows.append(np.where(above, index[other], -1))
                values.append(-at)
    rows.append(np.arange(n))
    values.append(degree)
    rows, values = np.stack(rows, 1), np.stack(values, 1)  # [n, kinds + 1]: row j holds column j
    keep = rows >= 0
    pointers = np.concatenate([[0], np.cumsum(keep.sum(1))])
    upper = scipy.sparse.csc_matrix((values[keep], rows[keep], pointers), (n, n))
    return upper, tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _solve_direct(p: torch.Tensor, free: torch.Tensor, weights, threads: int = 1) -> torch.Tensor:
    """The exact solution of ``L p = 0`` on the ``free`` pixels of one sample, known pixels fixed, in place:
    ``L_ff x = W_fk p_k`` (``W_fk``: the weights of the edges from free to known pixels). ``L_ff`` is
    symmetric and, on a connected graph with a known pixel, positive definite: one sparse LDL^T
    factorisation (float64, on the CPU, no pivoting needed) serves all ``K`` classes, solved on ``threads``
    threads (QDLDL's solves release the GIL). ``p [1, K, H, W]``, ``free [1, 1, H, W]`` (0 / 1)."""
    f = free[0, 0].flatten().bool()
    if not bool(f.any()):
        return p
    h, w = free.shape[-2:]
    upper, (row, pixel, weight) = _system(f.cpu().numpy(), h, w, weights)
    at_edges = p[0].detach().flatten(1)[:, torch.from_numpy(pixel).to(p.device)].cpu().double().numpy()  # [K, E]
    n = upper.shape[0]
    solve = _factorise(upper)
    flat = p[0].view(p.shape[1], -1)  # [K, H*W], a view of p
    index = f.nonzero().squeeze(1).to(p.device)  # [n]: the free pixels, raster order (the system's columns)
    inference = torch.is_inference_mode_enabled()  # thread-local: the workers take the caller's mode

    def one(k: int) -> None:  # class k: L_ff x = sum_{j known} w_ij p_j, written into p at once
        x = solve(np.bincount(row, weight * at_edges[k], n))  # [n] float64
        with torch.inference_mode(inference):
            flat[k].index_copy_(0, index, torch.from_numpy(x).to(p.dtype).to(p.device))

    if threads > 1 and p.shape[1] > 1:
        run_each("class-solves", min(threads, p.shape[1]), one, range(p.shape[1]))
    else:
        for k in range(p.shape[1]):
            one(k)
    return p


def _factorise(upper: scipy.sparse.csc_matrix):
    """The solver ``b [n] -> x [n]`` of ``A x = b``, ``A`` symmetric positive definite given by its upper
    triangle (CSC, the diagonal included): QDLDL's LDL^T. QDLDL releases the GIL, so a batch's samples
    factorise on parallel threads; on this system it is faster than SuperLU's LU, more so on two threads
    (docs/training.md, "The exact walk's solver"). Without ``qdldl`` installed: SuperLU's LU of the whole
    matrix, in a symmetric ordering without pivoting (the same solution, slower)."""
    if qdldl is not None:
        return qdldl.Solver(upper, upper=True).solve
    whole = (upper + scipy.sparse.triu(upper, k=1).T).tocsc()
    lu = scipy.sparse.linalg.splu(
        whole, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    )
    return lu.solve


def _solve_each(
    p, free, weights, counts: list[int], solver: str, sweeps: int, omega: float, threads: int | None = None
) -> None:
    """Solve each sample of ``p [B, K, H, W]`` in place on its own ``counts[i]`` classes. Exact solves
    run on ``threads`` threads (default: as many as torch uses), one sample each (QDLDL releases the GIL;
    the samples' slices of ``p`` are disjoint); the threads left over solve a sample's classes side by side."""

    inference = torch.is_inference_mode_enabled()  # thread-local: the workers take the caller's mode
    todo = [i for i, k in enumerate(counts) if k > 1]  # one class (or none): nothing to propagate
    threads = threads or torch.get_num_threads()
    workers = min(len(todo), threads) if solver == "direct" else 1

    def one(i: int) -> None:
        k = counts[i]
        args = p[i : i + 1, :k], free[i : i + 1], tuple(wt[i : i + 1] for wt in weights)
        with torch.inference_mode(inference), torch.no_grad():
            if solver == "direct":
                _solve_direct(*args, threads=max(1, threads // max(workers, 1)))
            else:
                _relax(*args, sweeps, omega)

    if workers > 1:  # each sample's class solves on another pool (work on a pool must not wait for it)
        run_each("walks", workers, one, todo)
    else:
        for i in todo:
            one(i)


def random_walk_probabilities(
    image: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor,
    num_classes: int,
    *,
    beta: float = DEFAULT_BETA,
    sweeps: int = DEFAULT_SWEEPS,
    omega: float = 1.9,
    solver: str = "sor",
    connectivity: int = 4,
    color: str = "rgb",
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-walker probabilities ``[B, K, H, W]`` of each sample's present classes (see
    :func:`present_classes`, returned with them), from ``sweeps`` over-relaxation sweeps started at the
    nearest fill. ``image [B, 3, H, W]`` (uint8 or float in [0, 1]), ``label [B, H, W]`` int,
    ``known [B, H, W]`` bool. The graph: :func:`edge_weights` ``(image, beta, connectivity, color)``.
    ``solver="direct"``: the exact solution (:func:`_solve_direct`, ``sweeps`` unused), on ``threads``
    threads (default: as many as torch uses). No gradients;
    float32 even inside an autocast region (bfloat16 colour conversion changed the walk's classes)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        img = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        cls, valid = present_classes(label, known, num_classes)  # [B, K]
        if solver == "direct":  # the solve sets every unknown pixel of a sample of several classes: no fill needed
            alone = torch.where(valid.sum(1) == 1, cls[:, 0], -1).view(-1, 1, 1)  # a sample's one class, or none
            fill = torch.where(known, label.long(), alone)  # [B, H, W]
        else:
            fill = nearest_fill(label, known)  # [B, H, W]: where the relaxation starts
        p = ((fill.unsqueeze(1) == cls[:, :, None, None]) & valid[:, :, None, None]).float()  # [B, K, H, W]
        if sweeps > 0 or solver == "direct":
            weights = edge_weights(img, beta, connectivity, color)
            free = (~known).unsqueeze(1).float()
            if solver == "sor" and p.device.type == "cuda":  # one batched solve: few, large kernels
                _relax(p, free, weights, sweeps, omega)
            else:  # one sample at a time, its own classes only (sor: the working set stays in cache, 2x faster)
                _solve_each(p, free, weights, valid.sum(1).tolist(), solver, sweeps, omega, threads)
            # over-relaxed iterates may overshoot [0, 1] before they settle: clip and renormalise (the order
            # of the classes at a pixel, and so its class, is unchanged)
            p = p.clamp(min=0)
            p = p / p.sum(1, keepdim=True).clamp(min=1e-12)
    return p, cls


@torch.no_grad()
def random_walk(
    image: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor | None = None,
    *,
    num_classes: int | None = None,
    ignore_index: int = 255,
    **kwargs,
) -> torch.Tensor:
    """Fill every unknown pixel with its random-walker class -> ``[B, H, W]`` int64; known pixels keep
    their class. ``known`` defaults to ``label != ignore_index``; samples without a known pixel come
    back as all ``ignore_index``. ``kwargs``: see :func:`random_walk_probabilities`. Inputs are not
    modified."""
    if known is None:
        known = label != ignore_index
    if num_classes is None:
        num_classes = int(label[known].max()) + 1 if bool(known.any()) else 1
    prob, cls = random_walk_probabilities(image, label, known, num_classes, **kwargs)
    return torch.where(known, label.long(), most_likely_class(prob, cls, known, ignore_index))


def most_likely_class(prob: torch.Tensor, classes: torch.Tensor, known: torch.Tensor, ignore_index: int = 255):
    """``prob [B, K, H, W]`` over ``classes [B, K]`` -> the most likely class per pixel ``[B, H, W]``
    (int64); samples without a known pixel (``known [B, H, W]``) get ``ignore_index`` everywhere."""
    # max's indices (the first maximum, as argmax's) reduce across the classes' maps far faster than argmax
    pred = classes.gather(1, prob.max(1).indices.flatten(1)).view(prob.shape[0], *prob.shape[2:])
    empty = ~known.flatten(1).any(1)
    return pred.masked_fill(empty[:, None, None], ignore_index)
