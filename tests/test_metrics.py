"""Confusion-matrix metrics (metrics.py): mIoU, PA-mIoU, pixel accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_label_mae.metrics import (
    SegmentationMetrics,
    confusion_matrix,
    gain_bound,
    iou_parts,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

IGNORE = 255


@st.composite
def predictions(draw):
    """``(pred, target, hidden, N)``: ``target`` with voids, at least one labelled pixel."""
    n = draw(st.integers(1, 6))
    b, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    target = rng.integers(0, n, (b, h, w))
    target[rng.random((b, h, w)) < draw(st.sampled_from([0.0, 0.2, 0.6]))] = IGNORE
    target.flat[rng.integers(0, target.size)] = rng.integers(0, n)
    # predictions: mostly right, sometimes not (how often is drawn)
    wrong = rng.random((b, h, w)) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    pred = np.where(wrong | (target == IGNORE), rng.integers(0, n, (b, h, w)), target)
    hidden = rng.random((b, h, w)) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    return torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(hidden), n


def reference_cm(pred, target, n, mask=None) -> np.ndarray:
    """Brute-force confusion matrix."""
    cm = np.zeros((n, n), dtype=np.int64)
    keep = (target != IGNORE) if mask is None else (target != IGNORE) & mask
    for t, p in zip(target[keep].tolist(), pred[keep].tolist(), strict=True):
        cm[t, p] += 1
    return cm


def metrics_of(pred, target, hidden, n) -> dict:
    m = SegmentationMetrics(n)
    m.update(pred, target, hidden)
    return m.compute()


@given(predictions())
def test_confusion_matrix_matches_brute_force(data):
    pred, target, hidden, n = data
    assert np.array_equal(confusion_matrix(pred, target, n).numpy(), reference_cm(pred, target, n))
    assert np.array_equal(
        confusion_matrix(pred, target, n, pixel_mask=hidden).numpy(), reference_cm(pred, target, n, hidden)
    )


@given(predictions())
def test_metrics_in_unit_interval(data):
    pred, target, hidden, n = data
    r = metrics_of(pred, target, hidden, n)
    for key in ("miou", "pixel_acc"):
        assert 0.0 <= r[key] <= 1.0, (key, r[key])
    if ((target != IGNORE) & hidden).any():
        for key in ("pa_miou", "pa_pixel_acc"):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
    else:  # nothing hidden and labelled: undefined, reported as NaN rather than a made-up number
        assert math.isnan(r["pa_miou"]) and math.isnan(r["pa_pixel_acc"])


@given(predictions())
def test_perfect_prediction_scores_one(data):
    _, target, hidden, n = data
    pred = torch.where(target == IGNORE, torch.zeros_like(target), target)  # void pixels may hold anything
    r = metrics_of(pred, target, torch.ones_like(hidden), n)
    assert r["miou"] == 1.0 and r["pixel_acc"] == 1.0 and r["pa_miou"] == 1.0


@given(predictions(), st.data())
def test_invariant_to_consistent_class_relabelling(data, draw_data):
    pred, target, hidden, n = data
    perm = torch.tensor(draw_data.draw(st.permutations(range(n))))
    pred2 = perm[pred]
    target2 = torch.where(target == IGNORE, target, perm[target.clamp(max=n - 1)])
    r, r2 = metrics_of(pred, target, hidden, n), metrics_of(pred2, target2, hidden, n)
    for key in ("miou", "pa_miou", "pixel_acc", "pa_pixel_acc"):
        a, b = r[key], r2[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), key
    # per-class IoUs move with their class
    iou, iou2 = np.array(r["iou"]), np.array(r2["iou"])
    np.testing.assert_allclose(iou2[perm.numpy()], iou, equal_nan=True)


@given(predictions())
def test_pa_miou_equals_miou_when_every_pixel_is_hidden(data):
    pred, target, _, n = data
    r = metrics_of(pred, target, torch.ones(target.shape, dtype=torch.bool), n)
    assert r["pa_miou"] == r["miou"] and r["pa_pixel_acc"] == r["pixel_acc"]


@given(predictions(), st.integers(0, 2**31))
def test_void_target_pixels_are_ignored(data, seed):
    pred, target, hidden, n = data
    g = torch.Generator().manual_seed(seed)
    other = torch.where(target == IGNORE, torch.randint(0, n, pred.shape, generator=g), pred)
    m1, m2 = SegmentationMetrics(n), SegmentationMetrics(n)
    m1.update(pred, target, hidden)
    m2.update(other, target, hidden)
    assert torch.equal(m1.cm, m2.cm) and torch.equal(m1.cm_hidden, m2.cm_hidden)
    assert int(m1.cm.sum()) == int((target != IGNORE).sum())
    assert int(m1.cm_hidden.sum()) == int(((target != IGNORE) & hidden).sum())


def test_known_values():
    # target 0 0 1 1, pred 0 1 1 1: IoU_0 = 1/2, IoU_1 = 2/3, class 2 absent everywhere (not averaged)
    target = torch.tensor([[0, 0, 1, 1, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1, 2]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    iou = iou_per_class(cm)
    assert iou[:2].tolist() == pytest.approx([0.5, 2 / 3]) and math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3) / 2)
    assert pixel_accuracy(cm) == pytest.approx(0.75)
    # a class predicted but absent from the target counts with IoU 0
    cm2 = confusion_matrix(torch.tensor([[2, 0]]), torch.tensor([[0, 0]]), 3)
    assert mean_iou(cm2) == pytest.approx(0.25)
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.long)))
    assert math.isnan(pixel_accuracy(torch.zeros(3, 3, dtype=torch.long)))


def test_accumulates_over_batches():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (4, 6, 6), generator=g)
    target = torch.randint(0, 4, (4, 6, 6), generator=g)
    hidden = torch.rand(4, 6, 6, generator=g) < 0.5
    whole = metrics_of(pred, target, hidden, 4)
    m = SegmentationMetrics(4)
    for i in range(4):
        m.update(pred[i], target[i], hidden[i])
    assert m.compute() == whole


@pytest.mark.parametrize("bad", [4, -1, 300])
def test_out_of_range_prediction_raises(bad):
    target = torch.tensor([[0, 1, 2, 3]])
    pred = torch.tensor([[0, 1, bad, 3]])
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(pred, target, 4)
    with pytest.raises(ValueError, match="class ids"):
        SegmentationMetrics(4).update(pred, target)


@given(stray=st.sampled_from([4, 7, 254, -1, 300]), where=st.integers(0, 3))
def test_a_target_outside_the_classes_raises_unless_ignored_or_masked(stray, where):
    """A truth id no class has would drop out of the scores silently; it is refused, naming it."""
    target = torch.tensor([[0, 1, 2, 3]])
    target[0, where] = stray
    pred = torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(
        ValueError, match=rf"targets must be class ids in \[0, 4\) or ignore_index 255, got \[{stray}\]"
    ):
        confusion_matrix(pred, target, 4)
    outside = torch.ones_like(target, dtype=torch.bool)
    outside[0, where] = False  # not scored: allowed
    assert int(confusion_matrix(pred, target, 4, pixel_mask=outside).sum()) == 3
    assert int(confusion_matrix(pred, target, 4, ignore_index=stray).sum()) == 3


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), 3)


@given(data=st.data())
def test_unfilled_holes_count_as_wrong_for_their_class_and_no_other(data):
    n = data.draw(st.integers(2, 5))
    target = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=40)))
    pred = torch.tensor([data.draw(st.sampled_from([*range(n), 255])) for _ in range(len(target))])
    m = SegmentationMetrics(n, unfilled_index=255)
    m.update(pred, target, torch.ones_like(target, dtype=torch.bool))
    # the same as a prediction of a class that does not exist: a column of its own
    ext = torch.where(pred == 255, torch.full_like(pred, n), pred)
    ref = reference_cm(ext.numpy(), target.numpy(), n + 1)[:n]
    assert np.array_equal(m.cm_hidden.numpy(), ref)
    iou = iou_per_class(m.cm_hidden)
    tp = ref.diagonal()
    union = ref[:, :n].sum(0) + ref.sum(1) - tp
    expect = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    np.testing.assert_allclose(iou.numpy(), expect, equal_nan=True)
    for other in (254, n, -1):  # other out-of-range predictions stay an error
        with pytest.raises(ValueError, match="class ids"):
            SegmentationMetrics(n, unfilled_index=255).update(torch.full_like(target, other), target)
    with pytest.raises(ValueError, match="is a class id"):
        confusion_matrix(target, target, n, unfilled_index=n - 1)


def _parts(preds: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """``[L, 3, N]``: :func:`iou_parts` of each label's confusion matrix."""
    return torch.stack([iou_parts(confusion_matrix(p, t, n)) for p, t in zip(preds, target, strict=True)])


@given(predictions(), st.lists(st.integers(0, 3), min_size=2, max_size=2))
def test_the_iou_parts_of_labels_weighted_and_summed_give_the_miou_of_their_confusion_matrices(sample, weights):
    """What the bootstrap sums (each label as often as it is drawn) is what :func:`mean_iou` reads."""
    pred, target, _, n = sample
    cms = [confusion_matrix(p, t, n, IGNORE) for p, t in zip(pred, target, strict=True)]
    w = weights[: len(cms)]
    tp, predicted, truth = sum(c * iou_parts(cm).double() for c, cm in zip(w, cms, strict=True)).unbind(0)
    union = predicted + truth - tp
    got = float((tp / union)[union > 0].mean()) if bool((union > 0).any()) else float("nan")
    want = mean_iou(sum(c * cm for c, cm in zip(w, cms, strict=True)))
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-12)


@st.composite
def scored_labels(draw):
    """``(target, pred, N)``: ``L`` labels and predictions right on about half their pixels."""
    labels, n = draw(st.integers(2, 12)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    target = torch.from_numpy(rng.integers(0, n, (labels, 6, 6)))
    noise = torch.from_numpy(rng.integers(0, n, (labels, 6, 6)))
    pred = torch.where(torch.from_numpy(rng.random((labels, 6, 6)) < 0.5), target, noise)
    return target, pred, n


@given(scored_labels(), st.sampled_from([0.8, 0.95]))
def test_gain_bound_of_a_model_against_itself_is_zero_and_of_the_truth_above_zero(labels, confidence):
    """The same predictions gain nothing (the bound is 0, so a rule asking more than 0 keeps the start); the
    truth itself gains over imperfect predictions on every resample; the bound is seeded, and swapping the
    two methods mirrors it."""
    target, pred, n = labels
    ours, truth = _parts(pred, target, n), _parts(target, target, n)
    assert gain_bound(ours, ours, confidence) == 0.0
    if not torch.equal(pred, target):
        bound = gain_bound(truth, ours, confidence)
        assert bound > 0 and bound == gain_bound(truth, ours, confidence)
        assert gain_bound(ours, truth, 1 - confidence) == pytest.approx(-bound, abs=1e-12)


def test_gain_bound_of_models_each_better_on_one_label_is_not_above_zero():
    """Each of two models is right on one of two labels and wrong on the other: which is better depends on
    the labels drawn, so the bound at 95% is below 0 and the bound at 5% above it."""
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :, 2:] = 1
    a, b = target.clone(), target.clone()
    a[1] = 1 - a[1]  # a: right on label 0, wrong on label 1
    b[0] = 1 - b[0]  # b: wrong on label 0, right on label 1
    b[0, 0, 0] = target[0, 0, 0]  # and one pixel better than a's worst
    assert (
        gain_bound(_parts(b, target, 2), _parts(a, target, 2), 0.95)
        < 0
        < gain_bound(_parts(b, target, 2), _parts(a, target, 2), 0.05)
    )


def test_gain_bound_refuses_stacks_that_do_not_match_and_labels_with_nothing_to_score():
    with pytest.raises(ValueError, match="same labels"):
        gain_bound(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), 0.95)
    with pytest.raises(ValueError, match="confidence"):
        gain_bound(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), 1.0)
    with pytest.raises(ValueError, match="no class to score"):
        gain_bound(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), 0.95)
