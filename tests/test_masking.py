"""Patch masking strategies (masking.py): counts, orderings, tie-breaking, the 1:2:2 mix, inference mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_label_mae.masking import (
    STRATEGIES,
    background_first_masking,
    block_holes,
    hidden_from_missing,
    hidden_to_pixels,
    label_first_masking,
    mixed_masking,
    random_masking,
)

IGNORE = 255


def patch_counts(label: torch.Tensor, p: int, background_index: int | None):
    """Independent reference: per-patch object and background pixel counts, numpy ``[B, L]`` each."""
    lab = label.numpy()
    b, h, w = lab.shape
    gh, gw = h // p, w // p
    blocks = lab.reshape(b, gh, p, gw, p).transpose(0, 1, 3, 2, 4).reshape(b, gh * gw, p * p)
    valid = blocks != IGNORE
    bg = valid & (blocks == background_index) if background_index is not None else np.zeros_like(valid)
    return (valid & ~bg).sum(-1), bg.sum(-1)


def assert_top_ordering(hidden, score: np.ndarray):
    """Every hidden patch scores at least as high as every visible patch of the same sample."""
    h = np.asarray(hidden)
    hidden_min = np.where(h, score, np.inf).min(1)
    visible_max = np.where(~h, score, -np.inf).max(1)
    bad = np.nonzero(hidden_min < visible_max)[0]
    assert bad.size == 0, f"samples {bad.tolist()} hide a patch scoring below a visible one"


@st.composite
def labels(draw, max_batch: int = 3):
    """Random label maps with object classes, background (0) and void, in varied proportions."""
    b = draw(st.integers(1, max_batch))
    p = draw(st.sampled_from([1, 2, 3, 4]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(4, draw(st.sampled_from([0.2, 1.0, 5.0]))))  # void, bg, obj 1, obj 2
    lab = rng.choice(np.array([IGNORE, 0, 1, 2]), size=(b, gh * p, gw * p), p=probs)
    return torch.from_numpy(lab.astype(np.int64)), p


def ratio_for(draw, batch: int):
    """A float ratio or a per-sample ``[B]`` tensor of ratios."""
    if draw(st.booleans()):
        return draw(st.floats(0.0, 1.0))
    return torch.tensor(draw(st.lists(st.floats(0.0, 1.0), min_size=batch, max_size=batch)), dtype=torch.float64)


def expected_counts(ratio, batch: int, num_patches: int) -> list[int]:
    if isinstance(ratio, torch.Tensor):
        return [round(float(r) * num_patches) for r in ratio]
    return [round(ratio * num_patches)] * batch


def run_strategy(name, label, p, ratio, background_index, generator):
    if name == "random":
        return random_masking(label.shape[0], (label.shape[1] // p) * (label.shape[2] // p), ratio, generator=generator)
    fn = {"label_first": label_first_masking, "background_first": background_first_masking, "mixed": mixed_masking}
    return fn[name](label, p, ratio, background_index=background_index, generator=generator)


# -- counts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "label_first", "background_first", "mixed"])
@given(data=st.data(), lp=labels(), background_index=st.sampled_from([None, 0]), seed=st.integers(0, 2**31))
def test_hides_exactly_round_ratio_times_l(strategy, data, lp, background_index, seed):
    label, p = lp
    b = label.shape[0]
    num_patches = (label.shape[1] // p) * (label.shape[2] // p)
    ratio = ratio_for(data.draw, b)
    hidden = run_strategy(strategy, label, p, ratio, background_index, torch.Generator().manual_seed(seed))
    assert hidden.dtype == torch.bool and hidden.shape == (b, num_patches)
    assert hidden.sum(1).tolist() == expected_counts(ratio, b, num_patches)


def test_hidden_counts_round_half_to_even():
    count = lambda r, n: int(random_masking(1, n, r).sum())  # noqa: E731
    assert count(0.5, 196) == 98
    assert count(0.75, 10) == 8  # 7.5 rounds half to even, as Python's round
    assert count(0.0, 7) == 0 and count(1.0, 7) == 7


# -- orderings --------------------------------------------------------------------------------------


@given(lp=labels(), ratio=st.floats(0.0, 1.0), background_index=st.sampled_from([None, 0]), seed=st.integers(0, 2**31))
def test_label_first_hides_highest_object_share(lp, ratio, background_index, seed):
    label, p = lp
    hidden = label_first_masking(
        label, p, ratio, background_index=background_index, generator=torch.Generator().manual_seed(seed)
    )
    obj, _ = patch_counts(label, p, background_index)
    assert_top_ordering(hidden, obj)


@given(lp=labels(), ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_background_first_hides_highest_background_share(lp, ratio, seed):
    label, p = lp
    g = torch.Generator().manual_seed(seed)
    hidden = background_first_masking(label, p, ratio, background_index=0, generator=g)
    _, bg = patch_counts(label, p, 0)
    assert_top_ordering(hidden, bg)


def test_label_first_prefers_object_over_background_and_void():
    # 4 patches of 2x2: all object, half object, all background, all void
    label = torch.tensor([[[1, 1, 1, 0, 0, 0, 255, 255], [1, 1, 2, 0, 0, 0, 255, 255]]])
    assert label_first_masking(label, 2, 0.25, background_index=0)[0].tolist() == [True, False, False, False]
    assert label_first_masking(label, 2, 0.5, background_index=0)[0].tolist() == [True, True, False, False]
    assert background_first_masking(label, 2, 0.25, background_index=0)[0].tolist() == [False, False, True, False]
    # without a background class, background pixels count as object for Label-First
    assert label_first_masking(label, 2, 0.75, background_index=None)[0].tolist() == [True, True, True, False]


@given(lp=labels(), ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_background_first_without_background_class_is_random(lp, ratio, seed):
    label, p = lp
    b = label.shape[0]
    num_patches = (label.shape[1] // p) * (label.shape[2] // p)
    hidden = background_first_masking(
        label, p, ratio, background_index=None, generator=torch.Generator().manual_seed(seed)
    )
    assert hidden.sum(1).tolist() == expected_counts(ratio, b, num_patches)
    # the label content plays no part: another label, same generator state -> the same mask
    other = background_first_masking(
        torch.roll(label, 1, dims=2) // 2,
        p,
        ratio,
        background_index=None,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(hidden, other)


# -- tie-breaking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "label_first", "background_first", "mixed"])
def test_ties_are_broken_at_random(strategy):
    label = torch.full((1, 16, 16), IGNORE, dtype=torch.long)  # every patch scores 0 under every strategy
    masks = [run_strategy(strategy, label, 2, 0.5, 0, torch.Generator().manual_seed(s)) for s in range(6)]
    assert all(m.sum() == 32 for m in masks)
    assert len({tuple(m[0].tolist()) for m in masks}) > 1, "equal scores always give the same mask"
    again = run_strategy(strategy, label, 2, 0.5, 0, torch.Generator().manual_seed(3))
    assert torch.equal(again, masks[3]), "same generator seed must give the same mask"


def test_random_masking_is_uniform_over_patches():
    hidden = random_masking(4000, 16, 0.25, generator=torch.Generator().manual_seed(0))
    freq = hidden.float().mean(0)
    assert (freq - 0.25).abs().max() < 0.03, freq


def test_label_first_ties_among_equal_shares_are_uniform():
    # left half of the grid fully object, right half void: the 8 object patches tie
    label = torch.full((3000, 8, 8), IGNORE, dtype=torch.long)
    label[:, :, :4] = 1
    hidden = label_first_masking(label, 2, 0.25, generator=torch.Generator().manual_seed(0))  # hides 4 of 16
    freq = hidden.float().mean(0).view(4, 4)
    assert torch.equal(freq[:, 2:], torch.zeros(4, 2))
    assert (freq[:, :2] - 0.5).abs().max() < 0.05, freq


# -- the paper's 1:2:2 mix --------------------------------------------------------------------------


def test_mixed_masking_strategy_frequencies_and_orderings():
    rng = np.random.default_rng(0)
    b, p = 5000, 2
    lab = rng.choice(np.array([IGNORE, 0, 1, 2]), size=(b, 8, 8), p=[0.1, 0.4, 0.3, 0.2])
    label = torch.from_numpy(lab.astype(np.int64))
    hidden, strategy = mixed_masking(
        label, p, 0.5, background_index=0, return_strategy=True, generator=torch.Generator().manual_seed(0)
    )
    assert strategy.shape == (b,) and strategy.dtype == torch.int64
    freq = torch.bincount(strategy, minlength=3).double() / b
    expected = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 5
    assert (freq - expected).abs().max() < 0.03, freq
    assert (hidden.sum(1) == 8).all()
    obj, bg = patch_counts(label, p, 0)
    s, h = strategy.numpy(), hidden.numpy()
    lf, bf = STRATEGIES.index("label_first"), STRATEGIES.index("background_first")
    assert_top_ordering(h[s == lf], obj[s == lf])
    assert_top_ordering(h[s == bf], bg[s == bf])
    # the Random samples do not follow the object ordering wholesale (so the check above can tell them apart)
    rnd = h[s == 0]
    hmin = np.where(rnd, obj[s == 0], np.inf).min(1)
    vmax = np.where(~rnd, obj[s == 0], -np.inf).max(1)
    assert (hmin < vmax).mean() > 0.5


@pytest.mark.parametrize("weights, only", [((1, 0, 0), 0), ((0, 1, 0), 1), ((0, 0, 3), 2)])
def test_mixed_masking_weights_select_strategy(weights, only):
    label = torch.randint(0, 3, (200, 8, 8))
    _, strategy = mixed_masking(label, 2, 0.5, background_index=0, weights=weights, return_strategy=True)
    assert (strategy == only).all()


@pytest.mark.parametrize("weights", [(1, 1), (1, -1, 1), (0, 0, 0)])
def test_mixed_masking_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        mixed_masking(torch.zeros(1, 4, 4, dtype=torch.long), 2, 0.5, weights=weights)


# -- inference mask ---------------------------------------------------------------------------------


@given(
    b=st.integers(1, 3),
    gh=st.integers(1, 5),
    gw=st.integers(1, 5),
    p=st.sampled_from([1, 2, 3, 4]),
    density=st.sampled_from([0.0, 0.01, 0.05, 0.3, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hidden_from_missing_covers_exactly_the_missing_patches(b, gh, gw, p, density, seed):
    rng = np.random.default_rng(seed)
    missing = torch.from_numpy(rng.random((b, gh * p, gw * p)) < density)
    hidden = hidden_from_missing(missing, (gh, gw))
    assert hidden.shape == (b, gh * gw) and hidden.dtype == torch.bool
    pixels = hidden_to_pixels(hidden, (gh, gw), p)
    assert pixels.shape == missing.shape
    assert (pixels | ~missing).all(), "a missing pixel lies in a visible patch"
    per_patch = missing.numpy().reshape(b, gh, p, gw, p).any(axis=(2, 4)).reshape(b, -1)
    assert not (hidden.numpy() & ~per_patch).any(), "a patch without missing pixels is hidden"


@given(b=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4), p=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_hidden_to_pixels_round_trip(b, gh, gw, p, seed):
    hidden = torch.rand(b, gh * gw, generator=torch.Generator().manual_seed(seed)) < 0.5
    pixels = hidden_to_pixels(hidden, (gh, gw), p)
    assert torch.equal(hidden_from_missing(pixels, (gh, gw)), hidden)
    assert pixels.sum().item() == hidden.sum().item() * p * p


@given(
    h=st.integers(1, 40), w=st.integers(1, 40), gh=st.integers(1, 6), gw=st.integers(1, 6), seed=st.integers(0, 2**31)
)
def test_hidden_from_missing_any_size_covers_every_missing_pixel(h, w, gh, gw, seed):
    missing = torch.rand(1, h, w, generator=torch.Generator().manual_seed(seed)) < 0.05
    hidden = hidden_from_missing(missing, (gh, gw)).view(gh, gw)
    ys, xs = torch.nonzero(missing[0], as_tuple=True)
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):  # the patch whose source region holds the pixel
        assert hidden[(y * gh) // h, (x * gw) // w]
    # adaptive pooling: along an axis of n pixels and g cells, a pixel lies in at most ceil(g / n) + 1 source regions
    per_pixel = (-(-gh // h) + 1) * (-(-gw // w) + 1)
    assert hidden.sum() <= missing.sum() * per_pixel


@given(
    b=st.integers(1, 3),
    h=st.integers(16, 64),
    w=st.integers(16, 64),
    ratio=st.floats(0.0, 1.0),
    lo=st.integers(1, 12),
    extra=st.integers(0, 12),
    seed=st.integers(0, 2**31),
)
def test_block_holes_are_blocks_off_the_grid_at_the_ratio(b, h, w, ratio, lo, extra, seed):
    holes = block_holes(b, (h, w), ratio, (lo, lo + extra), generator=torch.Generator().manual_seed(seed))
    again = block_holes(b, (h, w), ratio, (lo, lo + extra), generator=torch.Generator().manual_seed(seed))
    assert holes.shape == (b, h, w) and holes.dtype == torch.bool and torch.equal(holes, again)
    if ratio == 0.0:
        assert not holes.any()
    if ratio == 1.0:
        assert holes.all()
    for m in holes:  # every hole is a union of axis-aligned blocks: rows (and columns) change in runs
        rows = torch.unique_consecutive(m, dim=0)
        cols = torch.unique_consecutive(m, dim=1)
        assert rows.shape[0] <= -(-h // lo) + 1 and cols.shape[1] <= -(-w // lo) + 1


def test_block_holes_hide_about_the_ratio_and_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    holes = block_holes(64, (224, 224), 0.5, (8, 48), generator=g)
    assert 0.4 < holes.float().mean() < 0.6
    ratios = torch.tensor([0.0, 1.0])
    per = block_holes(2, (32, 32), ratios, generator=g)
    assert not per[0].any() and per[1].all()
    with pytest.raises(ValueError, match="block_range"):
        block_holes(1, (32, 32), 0.5, (0, 4))
    with pytest.raises(ValueError, match="mask ratio"):
        block_holes(1, (32, 32), 1.5)
