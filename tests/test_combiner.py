"""The prior combiner (combiner.py): its features, its invariants and its place in the random-walk prior."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from synth import TINY_MODEL

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.combiner import (
    FEATURE_COUNTS,
    HULL_FAR,
    HULL_STEP,
    NUM_FEATURES,
    REFERENCE_SIDE,
    TOP_CLASSES,
    Context,
    Evidence,
    PriorCombiner,
    appearance,
    distances,
    features,
    hulls,
    local_colour,
    rays,
    top_classes,
)
from torch_label_mae.config import RandomWalkPrior
from torch_label_mae.model import LMAE
from torch_label_mae.propagation import random_walk_probabilities, rgb_to_lab
from torch_label_mae.threads import torch_threads

WALK = dict(beta=8000.0, solver="direct", connectivity=16, color="lab")


@st.composite
def samples(draw):
    """``(image [3, H, W] float, label [H, W] int64 with 255 unknown, known [H, W])``: 2-8 classes (more than
    the combiner's ``TOP_CLASSES`` at a pixel at times), each with known pixels, on an image whose colours
    follow the classes (with noise)."""
    h, w = draw(st.integers(6, 20)), draw(st.integers(6, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(2, min(8, w)))
    truth = np.minimum((np.arange(w) * k) // w, k - 1)[None].repeat(h, 0)  # vertical bands
    ids = rng.permutation(250)[:k]
    colours = rng.random((k, 3))
    image = np.clip(colours[truth].transpose(2, 0, 1) + 0.05 * rng.standard_normal((3, h, w)), 0, 1)
    known = rng.random((h, w)) < draw(st.sampled_from([0.2, 0.5, 0.8]))
    for c in range(k):  # every class keeps a known pixel
        ys, xs = np.nonzero(truth == c)
        j = rng.integers(len(ys))
        known[ys[j], xs[j]] = True
    label = np.where(known, ids[truth], 255)
    return torch.from_numpy(image).float(), torch.from_numpy(label).long(), torch.from_numpy(known)


def walk(image, label, known):
    prob, index = random_walk_probabilities(image[None], label[None], known[None], 256, **WALK)
    return prob, index, prob.flatten(2).any(2)


def walk_and_features(image, label, known):
    """``(prob, index, valid, k, features [n, K, F])`` of one sample: :func:`walk`, then the combiner's features."""
    prob, index, valid = walk(image, label, known)
    k = int(valid[0].sum())
    return prob, index, valid, k, features(image, label, known, prob[0, :k], index[0, :k])


def trained_combiner(width: int = 8, seed: int = 0) -> PriorCombiner:
    """A combiner whose MLP is not zero (so it changes the walk)."""
    torch.manual_seed(seed)
    c = PriorCombiner(width)
    for p in c.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return c.eval()


@settings(max_examples=25, deadline=None)
@given(samples())
def test_features_shape_and_finite(sample):
    image, label, known = sample
    _, _, _, k, f = walk_and_features(image, label, known)
    assert f.shape == (int((~known).sum()), k, NUM_FEATURES) and f.dtype == torch.float32
    assert torch.isfinite(f).all()
    assert (f[..., 1] <= 0).all() and (f[..., 3] <= 0).all() and (f[..., 5] >= 0).all()  # relative features
    assert (f[..., 13] <= 0).all() and (f[..., 12] >= 0).all() and (f[..., 12].sum(1) <= 1 + 1e-6).all()
    torch.testing.assert_close(f[..., 9], torch.full_like(f[..., 9], math.log(k)))


@settings(max_examples=25, deadline=None)
@given(samples(), st.data())
def test_permuting_the_classes_permutes_the_combined_probabilities(sample, data):
    """Any class list, any order: relabelling the classes by a bijection relabels the output alike, also
    which classes a pixel weighs where the walk's least likely ones tie at its floor (the shipped
    combiner lifts such classes by up to 0.3 in probability: a tie broken by class order would show)."""
    image, label, known = sample
    ids = sorted(set(label[known].tolist()))
    new_ids = data.draw(st.permutations(list(range(250))))[: len(ids)]
    relabel = torch.full((256,), 255, dtype=torch.long)
    relabel[torch.tensor(ids)] = torch.tensor(new_ids)
    other = relabel[label]
    combiner = LabelCompleter.from_pretrained("any-m0.5").model.prior_combiner  # bundled; lifts floor classes
    out = []
    for lab in (label, other):
        prob, index, valid = walk(image, lab, known)
        refined = combiner.refine(image[None], lab[None], known[None], prob, index, valid)[0]
        k = int(valid[0].sum())
        out.append({int(c): refined[j] for j, c in enumerate(index[0, :k].tolist())})
    tied = _full_ties_at_the_cut(image, label, known)
    for c, p in out[0].items():
        torch.testing.assert_close(out[1][int(relabel[c])][~tied], p[~tied], atol=1e-3, rtol=1e-3)


def _full_ties_at_the_cut(image, label, known) -> torch.Tensor:
    """``[H, W]``: the unknown pixels whose ``TOP_CLASSES``-th and next class tie on every key of
    :func:`~torch_label_mae.combiner.top_classes` (the walk, the distance, the colour): there the choice
    is arbitrary (with real images it does not happen)."""
    import torch_label_mae.combiner as combiner_module

    prob, index, valid = walk(image, label, known)
    k = int(valid[0].sum())
    out = torch.zeros(label.numel(), dtype=torch.bool)
    if k > TOP_CLASSES:
        ctx = combiner_module.context(image, label, known, index[0, :k])
        lw = combiner_module.walk_log_prob(prob[0, :k], ctx.pixels)
        for j, pixel in enumerate(ctx.pixels.tolist()):
            keys = sorted((-float(lw[c, j]), float(ctx.dist[c, j]), -float(ctx.lq[c, j])) for c in range(k))
            out[pixel] = keys[TOP_CLASSES - 1] == keys[TOP_CLASSES]
    return out.view(label.shape)


@settings(max_examples=25, deadline=None)
@given(samples())
def test_refine_keeps_known_pixels_and_gives_distributions_over_present_classes(sample):
    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    # a padded, absent class slot in a batch of two: it must stay at zero
    prob2 = torch.cat([prob, torch.zeros_like(prob[:, :1])], 1)
    index2 = torch.cat([index, torch.zeros_like(index[:, :1])], 1)
    valid2 = torch.cat([valid, torch.zeros_like(valid[:, :1])], 1)
    refined = trained_combiner().refine(image[None], label[None], known[None], prob2, index2, valid2)
    assert torch.equal(refined[0][:, known], prob2[0][:, known])  # known pixels: untouched
    assert (refined[0, -1] == 0).all()  # the absent slot
    torch.testing.assert_close(refined[0].sum(0), torch.ones(label.shape))
    assert (refined >= 0).all()
    assert torch.equal(prob2, torch.cat([prob, torch.zeros_like(prob[:, :1])], 1))  # input not modified


@settings(max_examples=25, deadline=None)
@given(samples())
def test_a_new_combiner_is_the_walk(sample):
    """The MLP's last layer starts at zero: the combined classes are the walk's, with its probabilities
    renormalised over each pixel's ``TOP_CLASSES`` most likely classes (the others 0); where the walk gives
    a class ``SURE`` or more, its probabilities as they are (within this test's tolerance the two agree
    there: the test below checks the sure pixels bit for bit)."""
    import torch_label_mae.combiner as combiner_module

    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    refined = PriorCombiner(16).refine(image[None], label[None], known[None], prob, index, valid)
    p = prob[0][:, ~known].clamp(min=1e-6)  # [K, n]
    k = p.shape[0]
    ctx = combiner_module.context(image, label, known, index[0, :k])
    lw = (p / p.sum(0)).log()  # as the combiner reads the walk
    sure = lw.amax(0) >= math.log(combiner_module.SURE)  # [n]
    top = combiner_module.top_classes(combiner_module.Evidence(lw, ctx))
    p = torch.zeros_like(p).scatter_(0, top, p.gather(0, top))
    want = torch.where(sure, prob[0][:, ~known], p / p.sum(0))
    torch.testing.assert_close(refined[0][:, ~known], want, atol=1e-6, rtol=1e-5)
    assert torch.equal(refined[0][:, ~known].argmax(0), prob[0][:, ~known].argmax(0))


def test_distances_are_exact_and_scaled_to_the_reference_size():
    rng = np.random.default_rng(0)
    own = torch.from_numpy(rng.random((2, 30, 40)) < 0.05)
    free = torch.from_numpy(rng.random((30, 40)) < 0.5)
    d = distances(own, free)
    scale = 224 / math.sqrt(30 * 40)
    for k in range(2):
        np.testing.assert_allclose(
            d[k].numpy(), ndimage.distance_transform_edt(~own[k].numpy())[free.numpy()] * scale, rtol=1e-6
        )
    empty = distances(torch.zeros(1, 30, 40, dtype=torch.bool), free)
    assert (empty == 448).all()  # a class without pixels: far beyond any hole


def test_appearance_separates_classes_by_colour():
    image = torch.zeros(3, 8, 8)
    image[0, :, :4] = 1.0  # red left half, black right half
    own = torch.zeros(2, 8, 8, dtype=torch.bool)
    own[0, 0, 0] = own[1, 0, 7] = True
    post = appearance(rgb_to_lab(image[None])[0], own, torch.arange(64)).view(2, 8, 8)
    torch.testing.assert_close(post.sum(0), torch.ones(8, 8))
    assert (post[0, :, :4] > 0.9).all() and (post[1, :, 4:] > 0.9).all()


@pytest.mark.parametrize("size", [(40, 60), (224, 224), (300, 180)])
def test_local_colour_follows_the_nearby_pixels_of_a_class(size):
    """Class 0 is red at the top and blue at the bottom: near the top its local mean is red, near the
    bottom blue (a whole-image mean would be neither); class 1 has pixels far away only, so its whole-image
    mean colour serves everywhere."""
    h, w = size
    image = torch.zeros(3, h, w)
    image[0, : h // 2] = 1.0
    image[2, h // 2 :] = 1.0
    image[1, :, w - 2 :] = 1.0
    own = torch.zeros(2, h, w, dtype=torch.bool)
    own[0, :, :2] = True  # a strip at the left edge
    own[1, :, w - 2 :] = True  # class 1: the right edge, its own colour
    lab = rgb_to_lab(image[None])[0]
    d = local_colour(lab, own, torch.arange(h * w)).view(2, h, w)
    assert d.shape == (2, h, w) and torch.isfinite(d).all() and (d >= 0).all()
    assert d[0, 1, 4] < 0.05 and d[0, h - 2, 4] < 0.05  # red near red, blue near blue
    far = lab[:, 0, 4] - lab[:, h - 1, 4]
    assert d[0, 1, 4] < 0.1 * far.norm()
    mean1 = lab[:, :, w - 2 :].flatten(1).mean(1)
    torch.testing.assert_close(d[1, h // 4, 4], (lab[:, h // 4, 4] - mean1).norm(), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("side", [224, 229, 230, 232])
def test_local_colour_on_its_grid_matches_the_exact_window_at_any_size(side, monkeypatch):
    """The means are computed on a coarse grid and upsampled: away from the borders they agree with the
    window computed at every pixel, also where the side is not a multiple of the grid's cell."""
    import torch_label_mae.combiner as combiner_module

    ramp = torch.linspace(0, 1, side).view(side, 1).expand(side, side)
    image = torch.stack([ramp, torch.zeros_like(ramp), 1 - ramp])
    own = torch.zeros(1, side, side, dtype=torch.bool)
    own[0, :, ::3] = True
    lab = rgb_to_lab(image[None])[0]
    every = torch.arange(side * side)
    coarse = local_colour(lab, own, every).view(1, side, side)
    monkeypatch.setattr(combiner_module, "LOCAL_CELLS", 10_000)  # a cell of one pixel: the exact window
    exact = local_colour(lab, own, every).view(1, side, side)
    inner = (slice(None), slice(60, side - 60), slice(60, side - 60))  # beyond the window's reach of the edges
    assert (coarse[inner] - exact[inner]).abs().max() < 0.002


def test_config_validates_and_round_trips_the_combiner():
    for bad in (-1, 1025, 1.5, True):
        with pytest.raises(ValueError, match="combiner"):
            RandomWalkPrior(combiner=bad)
    for bad in (0, 13, 15, 14.0, True, None):
        with pytest.raises(ValueError, match="combiner_features"):
            RandomWalkPrior(combiner=8, combiner_features=bad)
    for count in FEATURE_COUNTS:
        prior = RandomWalkPrior(solver="direct", combiner=8, combiner_features=count)
        cfg = LMAEConfig(**TINY_MODEL, num_classes=4, prior=prior)
        assert LMAEConfig.from_dict(cfg.to_dict()) == cfg
        model = LMAE(cfg)
        assert cfg.num_elements() == sum(t.numel() for t in [*model.parameters(), *model.buffers()])
        assert LMAE.state_shapes(cfg)["prior_combiner.mlp.0.weight"] == (8, count)
    # a config written before the rays has no combiner_features: its combiner reads the first 12
    legacy = {k: v for k, v in cfg.to_dict()["prior"].items() if k != "combiner_features"}
    assert RandomWalkPrior(**{k: v for k, v in legacy.items() if k != "kind"}).combiner_features == 12
    assert "combiner_features" not in dataclasses.replace(cfg.prior, combiner_features=12).to_dict()
    off = dataclasses.replace(cfg.prior, combiner=0)  # switched off (as the benchmarks do): neither key
    assert not {"combiner", "combiner_features"} & set(off.to_dict())
    plain = dataclasses.replace(cfg, prior=RandomWalkPrior(solver="direct"))
    assert not any(k.startswith("prior_combiner") for k in LMAE.state_shapes(plain))


@settings(max_examples=25, deadline=None)
@given(samples())
def test_a_combiner_of_twelve_features_reads_only_the_first_twelve(sample):
    image, label, known = sample
    prob, index, valid, k, f = walk_and_features(image, label, known)
    old = PriorCombiner(8, num_features=12)
    for p in old.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(0))
    other = f.clone()
    other[..., 12:] = torch.randn_like(other[..., 12:])
    torch.testing.assert_close(old(f), old(other))
    torch.testing.assert_close(old(f), old(f[..., :12]))
    # its contexts skip the rays: the same probabilities as with them
    import torch_label_mae.combiner as combiner_module

    args = image[None], label[None], known[None], prob, index, valid
    ctx = [combiner_module.context(image, label, known, index[0, :k])]  # every feature
    torch.testing.assert_close(old.refine(*args), old.refine(*args, contexts=ctx), rtol=0, atol=0)
    skipped = old.contexts(image[None], label[None], known[None], index, valid)[0]
    assert not skipped.ray.any() and not skipped.hull.any()
    # one of fourteen (before the hulls) reads the rays and skips the hulls
    for_14 = PriorCombiner(8, num_features=14).contexts(image[None], label[None], known[None], index, valid)[0]
    torch.testing.assert_close(for_14.ray, ctx[0].ray, rtol=0, atol=0)
    assert not for_14.hull.any()


@settings(max_examples=20, deadline=None)
@given(samples(), st.sampled_from(FEATURE_COUNTS), st.booleans())
def test_the_logits_from_the_parts_are_the_mlp_on_the_features(sample, num_features, with_top):
    """``PriorCombiner.logits`` applies the first layer to the features' class and pixel parts apart; the
    same logits as the MLP on the features, which are those parts mapped by ``feature_maps``."""
    import torch_label_mae.combiner as combiner_module

    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    k = int(valid.sum())
    ctx = combiner_module.context(image, label, known, index[0, :k])
    evidence = Evidence(combiner_module.walk_log_prob(prob[0, :k], ctx.pixels), ctx)
    top = top_classes(evidence) if with_top else None
    per_class, per_pixel = evidence.parts(top=top)  # [6, M, r], [7, r]
    of_class, of_pixel = combiner_module.feature_maps()
    mapped = per_class.permute(1, 2, 0) @ of_class + per_pixel.T @ of_pixel  # [M, r, F]
    torch.testing.assert_close(evidence.features(top=top), mapped)
    combiner = PriorCombiner(8, num_features)
    for p in combiner.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(combiner.logits(evidence, top=top), combiner(evidence.features(top=top)))
    rows = slice(ctx.pixels.shape[0] // 2, None)  # from a pixel other than the first (one at least)
    torch.testing.assert_close(combiner.logits(evidence, rows), combiner(evidence.features(rows)))


def ray_march(own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """:func:`rays` by walking each ray pixel by pixel."""
    k, h, w = own.shape
    out = torch.zeros(k, len(pixels))
    for j, p in enumerate(pixels.tolist()):
        for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            y, x = p // w + dy, p % w + dx
            while 0 <= y < h and 0 <= x < w:
                if own[:, y, x].any():
                    out[int(own[:, y, x].nonzero()[0, 0]), j] += 0.25
                    break
                y, x = y + dy, x + dx
    return out


def random_own(h: int, w: int, k: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(own [K, H, W], pixels [n])``: ``k`` classes at random, ``share`` of the pixels known (each class's
    known pixels in ``own``), the unknown ones' flat indices."""
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(rng.integers(0, k, (h, w)))
    known = torch.from_numpy(rng.random((h, w)) < share)
    own = known & (label == torch.arange(k).view(-1, 1, 1))  # [K, H, W]
    return own, (~known).flatten().nonzero().squeeze(1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_rays_find_the_first_known_pixel_in_each_direction(h, w, k, share, seed):
    own, pixels = random_own(h, w, k, share, seed)
    got = rays(own, pixels)
    assert got.shape == (k, len(pixels))
    torch.testing.assert_close(got, ray_march(own, pixels), rtol=0, atol=0)


def exact_hull_distance(own: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``[K, n]``: the signed distance (in pixels, negative inside) from each pixel to the convex hull of
    each class's pixels, by the hull of *every* pixel of the class and every pixel; NaN without a hull."""
    from scipy.spatial import ConvexHull, QhullError

    k, h, w = own.shape
    pts = torch.stack([pixels % w, pixels // w], 1).double().numpy()
    out = torch.full((k, len(pixels)), float("nan"), dtype=torch.float64)
    for i in range(k):
        try:
            eq = ConvexHull(own[i].nonzero().flip(1).double().numpy()).equations
        except (QhullError, ValueError):
            continue
        out[i] = torch.from_numpy((pts @ eq[:, :2].T + eq[:, 2]).max(1))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 60), st.integers(3, 60), st.integers(1, 6), st.floats(0.05, 0.9), st.integers(0, 2**32 - 1))
def test_hulls_are_the_signed_distance_to_each_class_hull_within_the_grid_step(h, w, k, share, seed):
    """Against the hull of every pixel, measured at every pixel: the grid's interpolation errs by at most
    the step times 2 sqrt 2 (a maximum of planes of unit slope: its slope changes by 2 at most, in a cell
    of that diagonal); a class without a hull (one pixel, one line, absent) is ``HULL_FAR``; and the hull
    of a class is that of its pixels, whatever the others."""
    own, pixels = random_own(h, w, k, share, seed)
    got = hulls(own, pixels)
    assert got.shape == (k, len(pixels)) and got.dtype == torch.float32
    want = exact_hull_distance(own, pixels)  # [K, n], in pixels
    none = want.isnan().all(1)
    assert (got[none] == HULL_FAR).all()
    scale = REFERENCE_SIDE / math.sqrt(h * w)
    distance = got[~none].double().sign() * got[~none].double().abs().expm1() / scale  # back to pixels
    error = (distance - want[~none]).abs()
    assert error.numel() == 0 or error.max() <= 2 * math.sqrt(2) * HULL_STEP / scale + 1e-3
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(k))
    torch.testing.assert_close(hulls(own[perm], pixels), got[perm], rtol=0, atol=0)


def test_hulls_of_a_rectangle_with_a_hole():
    """A 40 x 40 block of one class with a 10 x 10 hole in its middle, and a single pixel of another: the
    hole lies inside the block's hull, as deep as its distance to the nearest side; outside it, as far as
    the farthest side's line."""
    own = torch.zeros(2, 100, 100, dtype=torch.bool)
    own[0, 30:70, 30:70] = True
    own[0, 45:55, 45:55] = False
    own[1, 5, 5] = True
    pixels = torch.tensor([50 * 100 + 50, 46 * 100 + 50, 50 * 100 + 80, 10 * 100 + 90])  # (y, x): as below
    got = hulls(own, pixels)
    scale = REFERENCE_SIDE / 100
    want = [-20, -16, 11, 21]  # the centre, near the hole's top, right of the block, off a corner (21 and 20 px
    # from the two sides' lines: the largest, not the Euclidean distance to the corner)
    for g, d in zip(got[0].tolist(), want, strict=True):
        assert abs(math.copysign(math.expm1(abs(g)), g) / scale - d) <= 2 * math.sqrt(2) * HULL_STEP / scale, got
    assert (got[1] == HULL_FAR).all()  # one pixel: no hull


def model_with_combiner(num_classes: int, std: float, seed: int) -> LMAE:
    """A tiny model whose combiner's weights are random (not zero: it changes the walk)."""
    cfg = LMAEConfig(**TINY_MODEL, num_classes=num_classes, prior=RandomWalkPrior(**WALK, combiner=8))
    model = LMAE(cfg).eval()
    with torch.no_grad():
        for p in model.prior_combiner.parameters():
            torch.nn.init.normal_(p, std=std, generator=torch.Generator().manual_seed(seed))
    return model


def random_batch(b: int, size: int, classes: int, known_share: float, seed: int):
    """``(image [b, 3, size, size], label, known, broken)``: random classes, ``known_share`` of them known."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.random((b, 3, size, size))).float()
    label = torch.from_numpy(rng.integers(0, classes, (b, size, size)))
    known = torch.from_numpy(rng.random((b, size, size)) < known_share)
    return image, label, known, torch.where(known, label, 255)


def test_the_model_uses_its_combiner_and_config_can_switch_it_off():
    model = model_with_combiner(4, std=2.0, seed=1)
    cfg = model.config
    image, label, known, broken = random_batch(1, cfg.img_size, 4, 0.3, seed=3)
    prob, index, valid = walk(image[0], broken[0], known[0])
    with torch_threads(2):  # the combiner's context on its thread beside the walk's, one thread each
        with torch.inference_mode():
            combined = model.prior(broken, image=image)
        assert torch.get_num_threads() == 2  # the caller's threads back
        refined = model.prior_combiner.refine(image, broken, known, prob, index, valid)  # at as many threads
    model.config.prior = dataclasses.replace(cfg.prior, combiner=0)
    alone = model.prior(broken, image=image)
    torch.testing.assert_close(alone.prob, prob)
    assert torch.equal(combined.prob, refined)
    assert not torch.allclose(combined.prob, alone.prob)
    assert torch.equal(combined.prob[..., known[0]], alone.prob[..., known[0]])


@settings(max_examples=10, deadline=None)
@given(samples())
def test_the_mlp_in_chunks_gives_the_same_probabilities(sample):
    import torch_label_mae.combiner as combiner_module

    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    combiner = trained_combiner()
    whole = combiner.refine(image[None], label[None], known[None], prob, index, valid)
    chunk, combiner_module.CHUNK = combiner_module.CHUNK, 7
    try:
        parts = combiner.refine(image[None], label[None], known[None], prob, index, valid)
    finally:
        combiner_module.CHUNK = chunk
    torch.testing.assert_close(parts, whole)


@settings(max_examples=10, deadline=None)
@given(samples(), samples())
def test_a_batch_equals_its_samples_one_by_one(one, two):
    """Samples of different sizes of class list in one batch (the shorter padded), and a uint8 image."""
    combiner = trained_combiner()
    h, w = min(one[0].shape[1], two[0].shape[1]), min(one[0].shape[2], two[0].shape[2])
    crop = [tuple(t[..., :h, :w] for t in s) for s in (one, two)]
    image = torch.stack([c[0] for c in crop])
    label, known = torch.stack([c[1] for c in crop]), torch.stack([c[2] for c in crop])
    known = known & (label != 255)
    prob, index = random_walk_probabilities(image, label, known, 256, **WALK)
    valid = prob.flatten(2).any(2)
    batch = combiner.refine(image, label, known, prob, index, valid)
    for i in range(2):
        alone = combiner.refine(image[i : i + 1], label[i : i + 1], known[i : i + 1], prob[i : i + 1],
                                index[i : i + 1], valid[i : i + 1])  # fmt: skip
        torch.testing.assert_close(batch[i : i + 1], alone)
    as_uint8 = (image * 255).round().to(torch.uint8)
    from_uint8 = combiner.refine(as_uint8, label, known, prob, index, valid)
    from_float = combiner.refine(as_uint8.float() / 255, label, known, prob, index, valid)
    torch.testing.assert_close(from_uint8, from_float)


def test_refine_takes_probabilities_in_any_memory_layout():
    image, label, known = (t[:, :12, :12] if t.dim() == 3 else t[:12, :12] for t in _bands(6))
    prob, index, valid = walk(image, label, known)
    strided = prob.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, H and W strides swapped
    combiner = trained_combiner()
    want = combiner.refine(image[None], label[None], known[None], prob, index, valid)
    assert torch.equal(combiner.refine(image[None], label[None], known[None], strided, index, valid), want)


def _bands(k: int):
    """``(image [3, 16, 16], label [16, 16], known [16, 16])``: ``k`` vertical bands, a third of them known."""
    rng = np.random.default_rng(k)
    truth = np.minimum((np.arange(16) * k) // 16, k - 1)[None].repeat(16, 0)
    image = torch.from_numpy(rng.random((k, 3))[truth].transpose(2, 0, 1).copy()).float()
    known = torch.from_numpy(rng.random((16, 16)) < 0.35)
    known[0] = True  # every band keeps a known pixel
    return image, torch.where(known, torch.from_numpy(truth), 255), known


def test_one_class_or_nothing_unknown_leaves_the_walk_as_it_is():
    combiner = trained_combiner()
    image = torch.rand(1, 3, 8, 8)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    for known in (torch.rand(1, 8, 8) < 0.5, torch.ones(1, 8, 8, dtype=torch.bool)):
        lab = torch.where(known, label, 255)
        if known.all():
            lab[0, :, 4:] = 3  # two classes, every pixel known
        prob, index = random_walk_probabilities(image, lab, known, 256, **WALK)
        valid = prob.flatten(2).any(2)
        assert torch.equal(combiner.refine(image, lab, known, prob, index, valid), prob)
    with pytest.raises(ValueError, match="present classes must come first"):
        combiner.refine(image, lab, known, prob, index, torch.tensor([[False, True]]))


@settings(max_examples=15, deadline=None)
@given(samples())
def test_the_mlp_weighs_each_pixels_top_classes_only(sample):
    """Beyond ``TOP_CLASSES`` present classes, the combined probabilities of a pixel the walk is not sure
    of are the softmax of the MLP's logits over its walk's most likely classes, computed from the features
    of all its classes, and 0 for the others."""
    import torch_label_mae.combiner as combiner_module

    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    k = int(valid.sum())
    combiner = trained_combiner()
    refined = combiner.refine(image[None], label[None], known[None], prob, index, valid)[0][:, ~known]  # [K, n]
    ctx = combiner_module.context(image, label, known, index[0, :k])
    evidence = combiner_module.Evidence(combiner_module.walk_log_prob(prob[0, :k], ctx.pixels), ctx)
    logits = combiner(evidence.features())  # [K, n]: every class
    m = min(TOP_CLASSES, k)
    top = combiner_module.top_classes(evidence)  # [M, n]: the walk's most likely (ties: the nearer class)
    chosen = evidence.lw.gather(0, top).sort(0, descending=True).values
    assert (chosen == evidence.lw.topk(m, dim=0).values).all()
    every = evidence.features().gather(0, top[..., None].expand(-1, -1, NUM_FEATURES))
    torch.testing.assert_close(evidence.features(top=top), every)
    want = torch.zeros_like(logits).scatter_(0, top, logits.gather(0, top).softmax(0))
    sure = evidence.lw.amax(0) >= math.log(combiner_module.SURE)  # [n]: these keep the walk's
    torch.testing.assert_close(refined, torch.where(sure, prob[0, :k][:, ~known], want))
    assert ((refined[:, ~sure] > 0).sum(0) <= m).all()


@settings(max_examples=15, deadline=None)
@given(samples(), st.sampled_from([1e-9, 0.5, 0.9, 0.9999]))
def test_the_sure_pixels_keep_the_walk_and_the_others_are_combined_as_among_all(sample, sure):
    """Where the walk gives a class ``SURE`` or more, the refined probabilities are the walk's, bit for bit;
    elsewhere what the combiner gives with every pixel refined (the features compare classes, not pixels).
    At 1e-9 every pixel is sure (the walk's floor is 1e-6): the walk comes back as it is."""
    import torch_label_mae.combiner as combiner_module

    image, label, known = sample
    prob, index, valid = walk(image, label, known)
    combiner = trained_combiner()
    args = image[None], label[None], known[None], prob, index, valid
    before = combiner_module.SURE
    try:
        combiner_module.SURE = 2.0  # no pixel is sure: every one is refined
        every = combiner.refine(*args)[0][:, ~known]  # [K, n]
        combiner_module.SURE = sure
        refined = combiner.refine(*args)[0][:, ~known]
    finally:
        combiner_module.SURE = before
    k = int(valid.sum())
    p = prob[0, :k][:, ~known].clamp(min=1e-6)
    is_sure = (p / p.sum(0)).log().amax(0) >= math.log(sure)  # [n]
    assert torch.equal(refined[:, is_sure], prob[0][:, ~known][:, is_sure])
    torch.testing.assert_close(refined[:, ~is_sure], every[:, ~is_sure], atol=1e-6, rtol=1e-5)
    if sure == 1e-9:
        assert bool(is_sure.all())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_prior_of_a_batch_equals_its_samples_alone(threads):
    """On the CPU a batch's samples are walked and combined one per thread: the same probabilities as
    each sample alone, up to float32 rounding (a sample alone is refined on the caller's threads, one of a
    batch on one), and the same classes."""
    model = model_with_combiner(8, std=1.0, seed=2)
    image, label, known, broken = random_batch(3, model.config.img_size, 8, 0.4, seed=4)
    broken[1] = torch.where(known[1], 5, 255)  # one class only
    broken = torch.cat([broken, torch.full_like(broken[:1], 255), label[:1]])  # nothing known; all known
    image = torch.cat([image, image[:2]])
    with torch_threads(threads), torch.inference_mode():
        batch = model.prior(broken, image=image)
        assert torch.get_num_threads() == threads  # the caller's threads back
        alone = [model.prior(broken[i : i + 1], image=image[i : i + 1]) for i in range(5)]
    for i, one in enumerate(alone):
        k = one.prob.shape[1]
        if threads == 1:  # one thread: the batch is refined as a label alone is
            assert torch.equal(batch.prob[i, :k], one.prob[0])
        torch.testing.assert_close(batch.prob[i, :k], one.prob[0], atol=1e-6, rtol=0)
        assert not batch.prob[i, k:].any()
        assert torch.equal(batch.classes[i], one.classes[0])


@settings(max_examples=60, deadline=None)
@given(st.integers(6, 9), st.data())
def test_top_classes_break_ties_by_distance_then_colour_never_by_order(k, data):
    """Classes tied at the walk's floor, some at the same distance, with colour posteriors a little apart
    (below what one float64 key resolves at the floor): the classes kept are the same whatever the order."""
    n = 3
    lw = torch.full((k, n), math.log(1e-6))
    lw[0] = 0.0  # one class reaches the pixels; the others tie at the floor
    dist = torch.tensor(data.draw(st.lists(st.sampled_from([2.0, 9.0, 14.9666]), min_size=k, max_size=k)))
    lq = torch.tensor(data.draw(st.lists(st.sampled_from([-13.0, -12.5, -12.0]), min_size=k, max_size=k)))
    dist, lq = dist.view(k, 1).expand(k, n), lq.view(k, 1).expand(k, n)
    perm = torch.tensor(data.draw(st.permutations(range(k))))

    def kept(order):
        zeros = torch.zeros(k, n)
        ctx = Context(torch.arange(n), lq[order], dist[order], torch.zeros(k), zeros, zeros, zeros)
        top = top_classes(Evidence(lw[order], ctx))  # [M, n]: positions in this order
        return {tuple(sorted(order[top[:, j]].tolist())) for j in range(n)}

    # the kept classes: the first five by (walk, then nearer, then better colour), in either order; where all
    # three tie at the cut, any of the tied classes may be kept, so their keys are compared
    key = [(-float(lw[c, 0]), float(dist[c, 0]), -float(lq[c, 0])) for c in range(k)]
    want = sorted(key)[:TOP_CLASSES]
    for order in (torch.arange(k), perm):
        (got,) = kept(order)  # the same at every pixel
        assert sorted(key[c] for c in got) == want


def test_a_combiner_of_the_other_feature_count_is_refused_with_a_hint(tmp_path):
    from torch_label_mae import hub

    model = model_with_combiner(4, std=0.5, seed=0)  # 12 features (the default of a prior section)
    hub.save_hub_files(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["prior"]["combiner_features"] = 14
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hub.CorruptWeightsError, match=r"\[8, 12\], the config needs \[8, 14\].*combiner_features"):
        LabelCompleter.from_folder(tmp_path)


@pytest.mark.parametrize("threads", [2, 3])
def test_the_walk_and_contexts_run_on_one_thread_each_and_a_label_alone_is_refined_on_the_callers(monkeypatch, threads):
    """Side by side, the walk's and the contexts' torch operators each take one thread (with the caller's
    each, they oversubscribed the cores); the refinement of a label alone takes the caller's after them, a
    batch's samples are refined each on the thread that walked it (one)."""
    import threading

    import torch_label_mae.prior as prior_module

    model = model_with_combiner(8, std=1.0, seed=2)
    image, _, _, broken = random_batch(4, model.config.img_size, 8, 0.4, seed=4)
    seen, solves = [], []

    def record(name, f, at):
        def call(*args, **kwargs):
            seen.append((name, torch.get_num_threads(), args[at].shape[0]))
            if name == "walk":
                solves.append(kwargs.get("threads"))
            return f(*args, **kwargs)

        return call

    walk = prior_module.random_walk_probabilities
    monkeypatch.setattr(prior_module, "random_walk_probabilities", record("walk", walk, 1))
    monkeypatch.setattr(PriorCombiner, "contexts", record("contexts", PriorCombiner.contexts, 2))
    monkeypatch.setattr(PriorCombiner, "refine", record("refine", PriorCombiner.refine, 2))
    with torch_threads(threads), torch.inference_mode():
        model.prior(broken[:1], image=image[:1])
        assert sorted(seen) == [("contexts", 1, 1), ("refine", threads, 1), ("walk", 1, 1)]
        assert solves == [threads]  # the class solves (outside torch) on the caller's threads
        seen.clear()
        model.prior(broken, image=image)
        assert sorted(seen) == [("contexts", 1, 1)] * 4 + [("refine", 1, 1)] * 4 + [("walk", 1, 1)] * 4
        assert torch.get_num_threads() == threads
        later = []  # and the default for threads that start now: the caller's, whichever worker ended last
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [threads]


def test_after_the_prior_threads_that_start_take_the_callers_number(monkeypatch):
    """The contexts' worker may take the walk's one thread as its own before it begins and set it again
    as it ends, after the walk has set the caller's back: the caller's number is set last."""
    import threading
    import time

    import torch_label_mae.prior as prior_module

    real = prior_module.torch_threads

    def late(n):  # the worker enters while the walk holds its one thread (0.1 s), and leaves after it (0.4 s)
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.1)
        return real(n)

    def slow(f, seconds):
        def call(*args, **kwargs):
            time.sleep(seconds)
            return f(*args, **kwargs)

        return call

    monkeypatch.setattr(prior_module, "torch_threads", late)
    monkeypatch.setattr(prior_module, "random_walk_probabilities", slow(prior_module.random_walk_probabilities, 0.2))
    monkeypatch.setattr(PriorCombiner, "contexts", slow(PriorCombiner.contexts, 0.3))
    model = model_with_combiner(8, std=1.0, seed=2)
    image, _, _, broken = random_batch(1, model.config.img_size, 8, 0.4, seed=4)
    seen = []
    with torch_threads(3), torch.inference_mode():
        model.prior(broken, image=image)
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
    assert seen == [3]


def test_a_walk_that_fails_leaves_no_contexts_running(monkeypatch):
    """The walk raises while the contexts are computed beside it: they have ended when the error comes
    out, so nothing of this call runs on behind the caller's back (or holds the pool's one thread)."""
    import time

    import torch_label_mae.prior as prior_module

    ended = []

    def failing_walk(*args, **kwargs):
        raise ValueError("the walk failed")

    def slow_contexts(self, *args):
        time.sleep(0.2)
        ended.append(True)
        return []

    monkeypatch.setattr(prior_module, "random_walk_probabilities", failing_walk)
    monkeypatch.setattr(PriorCombiner, "contexts", slow_contexts)
    model = model_with_combiner(8, std=1.0, seed=2)
    image, _, _, broken = random_batch(1, model.config.img_size, 8, 0.4, seed=4)
    with torch_threads(2), torch.inference_mode(), pytest.raises(ValueError, match="the walk failed"):
        model.prior(broken, image=image)
    assert ended == [True]


def test_the_combined_prior_and_the_audits_walk_compute_in_float32_under_a_float64_default():
    """Their tensors are float32 whatever torch's default dtype (one label, a batch, a combiner without
    the rays, the audit's random-walk predictor): the same probabilities as under float32."""
    from torch_label_mae.audit import random_walk_predictor

    model = model_with_combiner(8, std=1.0, seed=2)
    image, _, _, broken = random_batch(3, model.config.img_size, 8, 0.4, seed=4)
    predict = random_walk_predictor(8)

    def run():
        with torch_threads(2), torch.inference_mode():
            one, batch = model.prior(broken[:1], image=image[:1]), model.prior(broken, image=image)
            return one.prob, batch.prob, predict(image, broken, None, None)

    want = run()
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = run()
    finally:
        torch.set_default_dtype(before)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and torch.equal(g, w)
