"""Nearest-label fill (prior.py), checked against scipy's exact Euclidean distance transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from torch_label_mae.propagation import nearest_fill, nearest_source

IGNORE = 255


@st.composite
def known_maps(draw, max_size: int = 12):
    """``(label [B, H, W] int64 with 255 on unknown pixels, known [B, H, W] bool)``; every sample has at
    least one known pixel. Sparse point sets (where nearest-seed shortcuts go wrong) and random densities."""
    b = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    known = np.zeros((b, h, w), dtype=bool)
    for i in range(b):
        if draw(st.booleans()):
            n = draw(st.integers(1, 5))
            known[i, rng.integers(0, h, n), rng.integers(0, w, n)] = True
        else:
            known[i] = rng.random((h, w)) < draw(st.sampled_from([0.02, 0.1, 0.3, 0.7]))
            known[i, rng.integers(0, h), rng.integers(0, w)] = True
    num_classes = draw(st.integers(1, 4))
    label = np.where(known, rng.integers(0, num_classes, (b, h, w)), IGNORE)
    return torch.from_numpy(label.astype(np.int64)), torch.from_numpy(known)


def distances_to(src: np.ndarray, w: int) -> np.ndarray:
    """Euclidean distance from each pixel to the pixel at flat index ``src``."""
    h = src.shape[0]
    yy, xx = np.mgrid[:h, :w]
    return np.sqrt((src // w - yy) ** 2 + (src % w - xx) ** 2)


def check_nearest_fill(label: torch.Tensor, known: torch.Tensor, out: torch.Tensor):
    lab, kn, res = label.numpy(), known.numpy(), out.numpy()
    _, h, w = lab.shape
    yy, xx = np.mgrid[:h, :w]
    for i in range(lab.shape[0]):
        assert (res[i][kn[i]] == lab[i][kn[i]]).all(), "a known pixel changed"
        edt = ndimage.distance_transform_edt(~kn[i])
        ky, kx = np.nonzero(kn[i])
        for y, x in zip(*np.nonzero(~kn[i]), strict=True):
            d = np.sqrt((ky - y) ** 2 + (kx - x) ** 2)
            nearest_classes = set(lab[i][ky, kx][np.abs(d - edt[y, x]) <= 1e-4].tolist())
            assert res[i, y, x] in nearest_classes, (
                f"sample {i} pixel {(y, x)}: got class {res[i, y, x]}, nearest known classes {nearest_classes} "
                f"at distance {edt[y, x]:.4f}"
            )


@given(known_maps())
def test_nearest_fill_matches_exact_edt(data):
    label, known = data
    out = nearest_fill(label)
    assert out.shape == label.shape and out.dtype == label.dtype
    check_nearest_fill(label, known, out)


@given(known_maps())
def test_nearest_source_is_at_edt_distance(data):
    _, known = data
    src = nearest_source(known)
    assert src.shape == known.shape and src.dtype == torch.int64
    for i in range(known.shape[0]):
        s = src[i].numpy()
        kn = known[i].numpy()
        assert kn.flat[s].all(), "a source is not a known pixel"
        edt = ndimage.distance_transform_edt(~kn)
        np.testing.assert_allclose(distances_to(s, kn.shape[1]), edt, atol=1e-4, rtol=0)


def test_two_seed_counterexample_to_jump_flooding():
    # jump flooding (log2 + 1 passes) sends pixel (0, 7) to (4, 1) (distance 7.21) instead of (1, 0) (7.07)
    label = torch.full((1, 5, 8), IGNORE, dtype=torch.long)
    label[0, 1, 0], label[0, 4, 1] = 1, 2
    out = nearest_fill(label)
    assert out[0, 0, 7] == 1
    check_nearest_fill(label, label != IGNORE, out)


def test_sparse_seeds_batch_sweep():
    """A batched sweep over sizes and sparse seed sets (the regime where approximate schemes fail)."""
    rng = np.random.default_rng(0)
    for h, w in [(5, 8), (9, 9), (12, 17), (24, 20), (40, 33)]:
        known = np.zeros((60, h, w), dtype=bool)
        for i in range(60):
            n = rng.integers(2, 6)
            known[i, rng.integers(0, h, n), rng.integers(0, w, n)] = True
        src = nearest_source(torch.from_numpy(known)).numpy()
        for i in range(60):
            edt = ndimage.distance_transform_edt(~known[i])
            assert known[i].flat[src[i]].all()
            np.testing.assert_allclose(distances_to(src[i], w), edt, atol=1e-4, rtol=0, err_msg=f"{h}x{w} #{i}")


def test_sample_without_known_pixels_is_all_ignore():
    label = torch.full((3, 6, 7), IGNORE, dtype=torch.long)
    label[0, 2, 3] = 4
    label[2] = torch.randint(0, 3, (6, 7))
    out = nearest_fill(label)
    assert (out[1] == IGNORE).all()
    assert (out[0] == 4).all()
    assert torch.equal(out[2], label[2])
    assert (nearest_source(label != IGNORE)[1] == -1).all()


def test_explicit_known_mask_ignores_unknown_values():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 9, 11), generator=g)
    known = torch.rand(2, 9, 11, generator=g) < 0.2
    known[:, 0, 0] = True
    scrambled = torch.where(known, label, torch.randint(0, 5, label.shape, generator=g))
    out = nearest_fill(label, known)
    assert torch.equal(out, nearest_fill(scrambled, known))
    assert torch.equal(out, nearest_fill(torch.where(known, label, torch.full_like(label, IGNORE))))
    check_nearest_fill(label, known, out)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batch_equals_per_sample_and_keeps_dtype(threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # 2, 3: maps spread over a thread pool
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (5, 10, 13), generator=g).to(torch.uint8)
    label[torch.rand(label.shape, generator=g) < 0.8] = IGNORE
    label[:, 5, 6] = 2
    label[3] = IGNORE  # a map without a known pixel
    out = nearest_fill(label)
    assert out.dtype == torch.uint8
    for i in range(5):
        assert torch.equal(out[i : i + 1], nearest_fill(label[i : i + 1]))
