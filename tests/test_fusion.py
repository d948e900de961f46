"""Stack Fuse (fusion.py): one-hot label channels stacked on the normalised image."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_label_mae.fusion import IMAGENET_MEAN, IMAGENET_STD, fuse_map, normalize_image, one_hot_label


@st.composite
def label_image(draw, max_classes: int = 6):
    """``(label [B, H, W] int64 with 255 voids, image [B, 3, H, W] float in [0, 1], N)``."""
    b = draw(st.integers(1, 3))
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7))
    n = draw(st.integers(1, max_classes))
    values = st.one_of(st.integers(0, n - 1), st.just(255))
    flat = draw(st.lists(values, min_size=b * h * w, max_size=b * h * w))
    label = torch.tensor(flat, dtype=torch.int64).view(b, h, w)
    seed = draw(st.integers(0, 2**31 - 1))
    image = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return label, image, n


@given(label_image())
def test_fuse_map_shape_and_one_hot(data):
    label, image, n = data
    b, h, w = label.shape
    fused = fuse_map(image, label, n)
    assert fused.shape == (b, n + 3, h, w)
    assert fused.dtype == torch.float32
    onehot = fused[:, :n]
    labelled = label != 255
    # exactly one channel on labelled pixels, none on void
    assert torch.equal(onehot.sum(1), labelled.float())
    assert set(onehot.unique().tolist()) <= {0.0, 1.0}
    # ... and it is the right one
    assert torch.equal(onehot.argmax(1)[labelled], label[labelled])


@given(label_image())
def test_fuse_map_image_channels_are_normalized_image(data):
    label, image, n = data
    fused = fuse_map(image, label, n)
    assert torch.equal(fused[:, n:], normalize_image(image))


def test_normalize_image_matches_imagenet_constants():
    image = torch.rand(2, 3, 4, 5)
    out = normalize_image(image)
    for c in range(3):
        expected = (image[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[:, c], expected)


def test_uint8_and_float_images_give_the_same_fuse_map():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 6, 5), generator=g, dtype=torch.uint8)
    u8[0, 0, 0, 0], u8[1, 2, 5, 4] = 0, 255  # both ends of the range
    label = torch.randint(0, 4, (2, 6, 5), generator=g)
    label[0, 1, 1] = 255
    as_float = u8.float() / 255.0
    torch.testing.assert_close(fuse_map(u8, label, 4), fuse_map(as_float, label, 4), atol=1e-6, rtol=0)
    assert normalize_image(u8).dtype == torch.float32


def test_one_hot_void_and_out_of_range_are_all_zero():
    label = torch.tensor([[[0, 2, 255, 3, -1]]])
    onehot = one_hot_label(label, 3)
    assert onehot.shape == (1, 3, 1, 5)
    assert onehot[0, :, 0].T.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "image_shape, label_shape",
    [
        ((2, 3, 8, 8), (1, 8, 8)),  # batch
        ((1, 3, 8, 8), (1, 7, 8)),  # height
        ((1, 3, 8, 8), (1, 8, 9)),  # width
    ],
)
def test_mismatched_sizes_raise(image_shape, label_shape):
    with pytest.raises(ValueError, match="differ"):
        fuse_map(torch.rand(image_shape), torch.zeros(label_shape, dtype=torch.long), 3)
