"""Losses (loss.py): class-balanced cross-entropy (eq. 10-12) and masked plain cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from torch_label_mae.loss import BalancedCrossEntropy, cross_entropy

IGNORE = 255


def target_from_counts(counts: list[int], n_ignore: int, seed: int) -> torch.Tensor:
    """A shuffled ``[1, 1, P]`` target holding ``counts[i]`` pixels of class ``i`` plus ``n_ignore`` voids."""
    values = np.concatenate([np.repeat(np.arange(len(counts)), counts), np.full(n_ignore, IGNORE)])
    np.random.default_rng(seed).shuffle(values)
    return torch.from_numpy(values.astype(np.int64)).view(1, 1, -1)


@given(
    counts=st.lists(st.integers(0, 60), min_size=2, max_size=30).filter(lambda c: sum(c) > 0),
    n_ignore=st.integers(0, 10),
    beta=st.floats(0.1, 10.0),
    gamma=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**31),
)
def test_class_weights_in_unit_interval_and_decrease_with_frequency(counts, n_ignore, beta, gamma, seed):
    n = len(counts)
    crit = BalancedCrossEntropy(n, beta=beta, gamma=gamma)
    w = crit.class_weights(target_from_counts(counts, n_ignore, seed)).detach()
    assert w.shape == (n,)
    # strictly positive: a zero weight drops a class (or the whole loss) even though eq. 10 is > 0.
    # Upper end: 1 - 1 / (1 + t) rounds to exactly 1.0 for very rare classes, so <= 1 is what floats allow.
    assert (w > 0).all() and (w <= 1).all(), w
    c = torch.tensor(counts)
    more_frequent = c.unsqueeze(1) > c.unsqueeze(0)  # [i, j]: class i more frequent than class j
    assert (w.unsqueeze(1) <= w.unsqueeze(0))[more_frequent].all(), (counts, w)


def test_class_weights_match_equation_10():
    target = target_from_counts([30, 10, 0, 60], 5, 0)
    crit = BalancedCrossEntropy(4, beta=2.0, gamma=0.5, xi=1e-3)
    x = torch.tensor([30, 10, 0, 60], dtype=torch.float64) / 100
    z = torch.exp(-(x - x.mean()) / (x.var(unbiased=False) + 1e-3))
    expected = 1 - 1 / (1 + 2.0 * z**0.5)
    torch.testing.assert_close(crit.class_weights(target).detach().double(), expected, rtol=1e-5, atol=1e-7)


def test_weighted_loss_matches_manual_weighted_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0] = IGNORE
    crit = BalancedCrossEntropy(4, beta=1.5, gamma=2.0)
    w = crit.class_weights(target).detach().double()
    valid = target != IGNORE
    nll = -F.log_softmax(logits.double(), 1).gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1)
    wt = w[target.clamp(max=3)] * valid
    expected = (nll * wt).sum() / wt.sum()
    torch.testing.assert_close(crit(logits, target).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 21, 150])
def test_single_class_target_is_plain_cross_entropy(num_classes):
    # all weights equal -> the weighted mean is the plain mean; the dominant class's weight is tiny
    # (~1e-9 for 21 classes, below float32 range for 150) but must not round to zero
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, num_classes, 4, 4, generator=g, requires_grad=True)
    target = torch.full((2, 4, 4), 1, dtype=torch.long)
    loss = BalancedCrossEntropy(num_classes)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_perfect_logits_give_near_zero_loss():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 8, 8), generator=g)
    target[:, :2] = IGNORE
    logits = 30.0 * F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float()
    assert BalancedCrossEntropy(5)(logits, target) < 1e-6
    assert cross_entropy(logits, target) < 1e-6
    assert BalancedCrossEntropy(5)(torch.zeros_like(logits), target) > 1.0  # and imperfect ones do not


@pytest.mark.parametrize("kind", ["balanced", "plain"])
def test_ignored_and_unmasked_pixels_do_not_affect_the_loss(kind):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, generator=g)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    void = torch.rand(2, 6, 7, generator=g) < 0.2
    target[void] = IGNORE
    mask = torch.rand(2, 6, 7, generator=g) < 0.6
    crit = BalancedCrossEntropy(4) if kind == "balanced" else cross_entropy
    counted = torch.where(mask, target, torch.full_like(target, IGNORE))  # how training leaves out the visible
    base = crit(logits, counted)
    outside = void | ~mask
    noisy_logits = torch.where(outside.unsqueeze(1), torch.randn(logits.shape, generator=g) * 10, logits)
    torch.testing.assert_close(crit(noisy_logits, counted), base)
    # the counted pixels do count: changing their logits changes the loss
    inside = mask & ~void
    moved = torch.where(inside.unsqueeze(1), torch.randn(logits.shape, generator=g) * 10, logits)
    assert (crit(moved, counted) - base).abs() > 1e-3


def test_beta_and_gamma_receive_gradients():
    g = torch.Generator().manual_seed(0)
    crit = BalancedCrossEntropy(4, beta=1.0, gamma=1.0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.from_numpy(np.random.default_rng(0).choice(4, size=(2, 8, 8), p=[0.6, 0.25, 0.1, 0.05]))
    crit(logits, target).backward()
    grad = crit.log_beta_gamma.grad
    assert grad is not None and (grad != 0).all(), grad
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    frozen = BalancedCrossEntropy(4, learnable=False)
    assert not frozen.log_beta_gamma.requires_grad


@pytest.mark.parametrize("kind", ["balanced", "plain"])
def test_nothing_counted_gives_zero_differentiable_loss(kind):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    all_void = torch.full((2, 4, 4), IGNORE)
    loss = cross_entropy(logits, all_void) if kind == "plain" else BalancedCrossEntropy(3)(logits, all_void)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_plain_cross_entropy_is_mean_over_counted_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    mask = torch.rand(2, 5, 5, generator=g) < 0.5
    nll = F.cross_entropy(logits, target, reduction="none")
    counted = torch.where(mask, target, torch.full_like(target, IGNORE))
    torch.testing.assert_close(cross_entropy(logits, counted), nll[mask].mean())


@pytest.mark.parametrize("balanced", [True, False])
def test_loss_on_hidden_rows_equals_loss_on_the_full_map(balanced):
    from torch_label_mae.masking import hidden_to_pixels
    from torch_label_mae.model import LMAE, LMAEConfig

    cfg = LMAEConfig.tiny(img_size=32, patch_size=8, num_classes=5, label_prior=True)
    torch.manual_seed(0)
    model = LMAE(cfg)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    image = torch.rand(3, 3, 32, 32)
    label = torch.randint(0, 5, (3, 32, 32))
    label[:, :4] = 255
    hidden = torch.rand(3, cfg.num_patches) < 0.5
    hidden[:, 0] = True
    pix = hidden_to_pixels(hidden, cfg.grid, cfg.patch_size)
    known = torch.where(pix, torch.full_like(label, 255), label)
    loss_fn = BalancedCrossEntropy(5) if balanced else cross_entropy
    full = loss_fn(model(image, known, hidden), torch.where(pix, label, torch.full_like(label, IGNORE)))
    rows = model(image, known, hidden, hidden_only=True).flatten(0, 1)
    target = model.patchify(label.unsqueeze(1))[hidden].flatten()
    torch.testing.assert_close(loss_fn(rows, target), full, rtol=1e-5, atol=1e-6)


def test_background_pixels_count_neither_in_the_loss_nor_in_the_shares():
    # section III-E: the indicator 1{y_n != y^_n} leaves the background class out of the loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, generator=g)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    crit = BalancedCrossEntropy(4, background_index=0)
    as_void = torch.where(target == 0, torch.full_like(target, IGNORE), target)
    base = crit(logits, target)
    torch.testing.assert_close(base, crit(logits, as_void))
    noisy = torch.where((target == 0).unsqueeze(1), torch.randn(logits.shape, generator=g) * 10, logits)
    torch.testing.assert_close(crit(noisy, target), base)
    # E(x), V(x) over the three counted classes: the weights equal those of a 3-class loss on classes 1..3
    w = crit.class_weights(target)[1:]
    w3 = BalancedCrossEntropy(3).class_weights(torch.where(as_void == IGNORE, as_void, as_void - 1))
    torch.testing.assert_close(w, w3)
