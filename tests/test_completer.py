"""``LabelCompleter.complete`` / ``complete_batch`` on randomly initialised tiny completers: the
input / output contract (types, sizes, dtypes, palettes), what changes and what never does, and the
errors for inputs it cannot take."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL
from torchvision import tv_tensors

import torch_label_mae
from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.completer import resolve_device, with_correction

N = 5  # classes
TINY = dict(TINY_MODEL, num_classes=N)
# the active profile's example count (tests/conftest.py: 25, or 300 with HYPOTHESIS_PROFILE=thorough)
FAST = settings(deadline=None)
FEWER = settings(deadline=None, max_examples=max(10, settings().max_examples // 2))  # several forwards each
NO_KNOWN_PIXEL = pytest.mark.filterwarnings(r"ignore:labels\[\d+\] has no known pixel")


def _saved_and_loaded(tmp_path_factory, name: str, seed: int, **overrides) -> LabelCompleter:
    torch.manual_seed(seed)
    folder = tmp_path_factory.mktemp(name)
    LabelCompleter(LMAEConfig.tiny(**{**TINY, **overrides})).save_pretrained(folder)
    return LabelCompleter.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> LabelCompleter:
    return _saved_and_loaded(tmp_path_factory, "plain", 0, background_index=0)


@pytest.fixture(scope="module")
def with_prior(tmp_path_factory) -> LabelCompleter:
    return _saved_and_loaded(tmp_path_factory, "prior", 1, background_index=0, label_prior=True)


@pytest.fixture(scope="module")
def no_background(tmp_path_factory) -> LabelCompleter:
    return _saved_and_loaded(tmp_path_factory, "nobg", 2)


@pytest.fixture(scope="module")
def random_walk_prior(tmp_path_factory) -> LabelCompleter:
    return _saved_and_loaded(
        tmp_path_factory, "rw", 3, background_index=0, label_prior=True, prior_kind="random_walk", prior_sweeps=5
    )


@pytest.fixture(scope="module", params=["plain", "with_prior", "random_walk_prior"])
def completer(request) -> LabelCompleter:
    return request.getfixturevalue(request.param)


# ----------------------------------------------------------------------------------------------------
# inputs in every accepted type
# ----------------------------------------------------------------------------------------------------
PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def _pil_p(a: np.ndarray) -> Image.Image:
    im = Image.fromarray(a.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    im.info["transparency"] = 255
    return im


LABEL_KINDS = {
    "pil_P": _pil_p,
    "pil_L": lambda a: Image.fromarray(a.astype(np.uint8), mode="L"),
    "pil_I": lambda a: Image.fromarray(a.astype(np.int32), mode="I"),
    "pil_I16": lambda a: Image.fromarray(a.astype(np.uint16)),
    "np_uint8": lambda a: a.astype(np.uint8),
    "np_int32": lambda a: a.astype(np.int32),
    "np_int64": lambda a: a.astype(np.int64),
    "np_1hw": lambda a: a.astype(np.int64)[None],
    "torch_uint8": lambda a: torch.from_numpy(a.astype(np.uint8)),
    "torch_int64": lambda a: torch.from_numpy(a.astype(np.int64)),
    "torch_1hw": lambda a: torch.from_numpy(a.astype(np.int64))[None],
    "mask": lambda a: tv_tensors.Mask(torch.from_numpy(a.astype(np.uint8))),
}

IMAGE_KINDS = {
    "pil_rgb": lambda a: Image.fromarray(a, mode="RGB"),
    "np": lambda a: a,
    "torch_uint8": lambda a: torch.from_numpy(a).permute(2, 0, 1),
    "torch_float": lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,
    "np_float64": lambda a: a.astype(np.float64) / 255,
    "tv_image": lambda a: tv_tensors.Image(torch.from_numpy(a).permute(2, 0, 1)),
}


def as_array(label) -> np.ndarray:
    """Any label -> ``int64 [H, W]`` numpy (for comparisons)."""
    if isinstance(label, torch.Tensor):
        label = label.as_subclass(torch.Tensor).numpy()
    a = np.asarray(label).astype(np.int64)
    return a[0] if a.ndim == 3 else a


def snapshot(x):
    """A deep copy to compare against after the call."""
    if isinstance(x, Image.Image):
        return np.array(x).copy(), x.mode, x.getpalette(), dict(x.info)
    if isinstance(x, torch.Tensor):
        return x.clone()
    return np.array(x, copy=True)


def assert_unchanged(x, snap) -> None:
    if isinstance(x, Image.Image):
        arr, mode, palette, info = snap
        assert x.mode == mode and x.getpalette() == palette and dict(x.info) == info
        np.testing.assert_array_equal(np.array(x), arr)
    elif isinstance(x, torch.Tensor):
        assert type(x) is type(snap) and x.dtype == snap.dtype and torch.equal(x, snap)
    else:
        assert x.dtype == snap.dtype
        np.testing.assert_array_equal(x, snap)


@st.composite
def samples(draw, min_side=1, max_side=70):
    """``(image uint8 HxWx3, label int64 HxW with 255 holes, missing bool HxW)`` of arbitrary size."""
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, N, (h, w))
    missing = rng.random((h, w)) < draw(st.sampled_from([0.0, 0.05, 0.3]))
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    missing[y0 : y0 + rng.integers(0, h + 1), x0 : x0 + rng.integers(0, w + 1)] = True  # a block hole
    if missing.all():
        missing[0, 0] = False
    label[missing] = 255
    return image, label, missing


def check_output(out, conf, label, missing) -> None:
    """Type, size, dtype (palette) of ``out`` follow ``label``; kept pixels unchanged; filled in [0, N)."""
    assert type(out) is type(label)
    if isinstance(label, Image.Image):
        assert out.mode == label.mode and out.size == label.size
        if label.mode == "P":
            assert out.getpalette() == label.getpalette()
            assert out.info.get("transparency") == label.info.get("transparency")
        assert isinstance(conf, np.ndarray) and conf.dtype == np.float32 and conf.shape == missing.shape
    elif isinstance(label, np.ndarray):
        assert out.dtype == label.dtype and out.shape == label.shape
        assert isinstance(conf, np.ndarray) and conf.dtype == np.float32 and conf.shape == missing.shape
    else:
        assert out.dtype == label.dtype and out.shape == label.shape and out.device == label.device
        assert type(conf) is torch.Tensor and conf.shape == label.shape and conf.dtype == torch.float32
        assert not out.is_inference()  # callers may edit it in place
        conf = conf.numpy()
    got, want = as_array(out), as_array(label)
    conf = conf.reshape(missing.shape)
    np.testing.assert_array_equal(got[~missing], want[~missing])
    assert ((got[missing] >= 0) & (got[missing] < N)).all()
    assert ((conf >= 0) & (conf <= 1)).all()
    assert (conf[~missing] == 1).all()
    assert (conf[missing] < 1).all()


# ----------------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------------
@FAST
@given(
    sample=samples(), label_kind=st.sampled_from(sorted(LABEL_KINDS)), image_kind=st.sampled_from(sorted(IMAGE_KINDS))
)
def test_types_in_are_types_out(completer, sample, label_kind, image_kind):
    image, label, missing = sample
    img, lab = IMAGE_KINDS[image_kind](image), LABEL_KINDS[label_kind](label)
    img_snap, lab_snap = snapshot(img), snapshot(lab)
    out, conf = completer.complete(img, lab, return_confidence=True)
    check_output(out, conf, lab, missing)
    assert_unchanged(img, img_snap)
    assert_unchanged(lab, lab_snap)
    plain_out = completer.complete(img, lab)
    np.testing.assert_array_equal(as_array(plain_out), as_array(out))  # deterministic, same with or without conf


@FAST
@given(sample=samples())
def test_uint8_and_float_images_agree(plain, sample):
    image, label, _ = sample
    a = plain.complete(image, label)
    b = plain.complete(torch.from_numpy(image).permute(2, 0, 1).double() / 255, label)
    assert (a == b).mean() > 0.99  # float input is the same picture; only rounding may differ


@FEWER
@given(batch=st.lists(samples(max_side=40), min_size=1, max_size=6), batch_size=st.integers(1, 3), repeat=st.booleans())
def test_batch_equals_one_by_one(completer, batch, batch_size, repeat):
    if repeat:  # several labels of one size: they share a forward pass
        batch = batch + [(im[:, ::-1].copy(), lab, m) for im, lab, m in batch]
    images = [b[0] for b in batch]
    labels = [torch.from_numpy(b[1]) for b in batch]
    outs, confs = completer.complete_batch(images, labels, batch_size=batch_size, return_confidence=True)
    assert len(outs) == len(confs) == len(batch)
    for (image, _, missing), lab, out, conf in zip(batch, labels, outs, confs, strict=True):
        one, one_conf = completer.complete(image, lab, return_confidence=True)
        check_output(out, conf, lab, missing)
        torch.testing.assert_close(conf, one_conf, atol=1e-5, rtol=0)
        assert torch.equal(out, one)


@NO_KNOWN_PIXEL
@FAST
@given(
    sample=samples(),
    extra=st.floats(0, 0.5),
    seed=st.integers(0, 1000),
    map_kind=st.sampled_from(["numpy", "torch", "pil", "uint8", "flipped", "read_only"]),
)
def test_explicit_missing_maps(completer, sample, extra, seed, map_kind):
    image, label, holes = sample
    flagged = np.random.default_rng(seed).random(holes.shape) < extra  # pixels with a label we distrust
    given_map = {
        "numpy": lambda m: m,
        "torch": torch.from_numpy,
        "uint8": lambda m: m.astype(np.uint8),
        "pil": lambda m: Image.fromarray(m.astype(np.uint8) * 255, mode="L"),
        "flipped": lambda m: m[::-1, ::-1].copy()[::-1, ::-1],  # the same map seen through negative strides
        "read_only": _read_only,
    }[map_kind](flagged)
    snap = snapshot(given_map)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable")  # a read-only map: taken without torch's warning
        out, conf = completer.complete(image, label, missing=given_map, return_confidence=True)
    check_output(out, conf, label, flagged)  # exactly the map: 255 pixels outside it stay 255 (#19)
    assert_unchanged(given_map, snap)
    # the same through complete_batch, as a list and as a stacked [B, H, W] array
    both = completer.complete_batch([image, image], [label, label], missing=np.stack([flagged, flagged]))
    np.testing.assert_array_equal(both[0], out)
    np.testing.assert_array_equal(both[1], out)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False  # as np.asarray(Image.open(mask)) gives
    return a


def test_an_rgba_palette_keeps_its_alpha(plain):
    label = np.zeros((10, 12), np.uint8)
    label[:, 6:] = 1
    label[2:5, 3:9] = 255
    im = Image.fromarray(label, mode="P")
    im.putpalette(bytes(v for i in range(256) for v in (i, 255 - i, i // 2, 128 + i // 2)), rawmode="RGBA")
    out = plain.complete(np.zeros((10, 12, 3), np.uint8), im)
    assert out.palette.mode == "RGBA" and out.getpalette("RGBA") == im.getpalette("RGBA")


def test_a_batch_size_that_is_no_integer_is_named(plain):
    image, label = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8)
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match=r"batch_size must be an integer >= 1, got"):
            plain.complete_batch([image], [label], batch_size=bad)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        plain.complete_batch([image], [label], batch_size=0)
    assert len(plain.complete_batch([image], [label], batch_size=np.int64(2))) == 1


def test_missing_map_shape_mismatch_names_it(plain):
    image, label = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8)
    with pytest.raises(ValueError, match=r"missing\[0\].*\(11, 12\).*\(10, 12\)"):
        plain.complete(image, label, missing=np.zeros((11, 12), bool))
    with pytest.raises(ValueError, match=r"missing\[1\]"):
        plain.complete_batch([image, image], [label, label], missing=[np.zeros((10, 12), bool), np.zeros((12, 10))])
    with pytest.raises(ValueError, match="1 missing maps for 2 labels"):
        plain.complete_batch([image, image], [label, label], missing=[np.zeros((10, 12), bool)])
    with pytest.raises(ValueError, match="missing must be None"):
        plain.complete(image, label, missing="everything")
    void = label.copy()
    void[:3] = 255  # with 255 also the missing index, a None map would have filled them
    with pytest.raises(ValueError, match=r"missing\[1\] is None: give every label a map"):
        plain.complete_batch([image, image], [void, void], missing=[np.zeros((10, 12), bool), None], void_index=255)
    for values in ([0.0, 0.3], [0.0, float("nan")], [0, 2]):  # not a mask: refused, not read as nonzero
        bad = np.resize(np.asarray(values), (10, 12))
        with pytest.raises(ValueError, match=r"missing\[0\]: a missing map is boolean \(or 0 / 1\)"):
            plain.complete(image, label, missing=bad)
    ones = np.zeros((10, 12), np.uint8)
    ones[:2] = 1  # 0 / 1 numbers are a mask
    assert np.array_equal(plain.complete(image, label, missing=ones), plain.complete(image, label, missing=ones > 0))


def test_flagged_invalid_ids_are_accepted(plain):
    image, label = np.zeros((10, 12, 3), np.uint8), np.ones((10, 12), np.int64)
    label[2:4, 3:6] = 9  # not a class, but flagged missing: filled, not an error
    flagged = label == 9
    out = plain.complete(image, label, missing=flagged)
    assert ((out >= 0) & (out < N)).all() and (out[~flagged] == 1).all()


def test_other_missing_index(plain):
    image, label = np.zeros((10, 12, 3), np.uint8), np.full((10, 12), 2, np.int64)
    label[:5] = 99
    out = plain.complete(image, label, missing_index=99)
    assert (out < N).all() and (out[5:] == 2).all()
    with pytest.raises(ValueError, match=r"ids \[99\]"):
        plain.complete(image, label)  # 99 is not the default missing index


@NO_KNOWN_PIXEL
def test_results_can_be_edited_in_place(plain):
    out, conf = plain.complete(torch.zeros(3, 9, 9, dtype=torch.uint8), torch.full((9, 9), 255), return_confidence=True)
    out[0, 0] = 1
    conf.mul_(0.5)
    mask = plain.complete(torch.zeros(3, 9, 9), tv_tensors.Mask(torch.full((9, 9), 255, dtype=torch.uint8)))
    mask[0, 0] = 1
    assert isinstance(mask, tv_tensors.Mask)


# ----------------------------------------------------------------------------------------------------
# inputs it refuses (or accepts with a warning)
# ----------------------------------------------------------------------------------------------------
def test_size_mismatch_names_the_pair(plain):
    images = [np.zeros((10, 12, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    labels = [np.zeros((10, 12), np.uint8), np.zeros((8, 9), np.uint8)]
    with pytest.raises(ValueError, match=r"images\[1\] is \(8, 8\) but labels\[1\] is \(8, 9\)"):
        plain.complete_batch(images, labels)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        plain.complete_batch(images, labels[:1])
    with pytest.raises(ValueError, match="batch_size"):
        plain.complete_batch(images[:1], labels[:1], batch_size=0)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (6, 5)),
        Image.new("LA", (6, 5)),
        np.zeros((5, 6, 4), np.uint8),
        torch.zeros(4, 5, 6, dtype=torch.uint8),
        tv_tensors.Image(torch.zeros(4, 5, 6)),
        torch.zeros(2, 5, 6),
        np.zeros((5, 6, 2), np.uint8),
    ],
    ids=["pil_rgba", "pil_la", "np_hw4", "torch_4hw", "tv_image_4", "torch_2hw", "np_hw2"],
)
def test_non_rgb_images_are_refused_with_a_hint(plain, image):
    with pytest.raises(ValueError, match="RGB") as e:
        plain.complete(image, np.zeros((5, 6), np.uint8))
    assert "images[0]" in str(e.value)


def test_a_batch_or_a_boolean_mask_given_as_one_label_says_what_to_do(plain):
    image = np.zeros((10, 12, 3), np.uint8)
    for batch in (np.zeros((5, 10, 12), np.int64), torch.zeros(5, 10, 12, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"labels\[0\].*\(5, 10, 12\); for a batch of labels: complete_batch"):
            plain.complete(image, batch)
    for column in (np.zeros((10, 12, 1), np.uint8), torch.zeros(10, 12, 1, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"\(10, 12, 1\); an HxWx1 label: pass label\[\.\.\., 0\]"):
            plain.complete(image, column)
    with pytest.raises(ValueError, match=r"\(10, 12, 4\); an RGBA colour label: drop its alpha"):
        plain.complete(image, np.zeros((10, 12, 4), np.uint8))  # RGBA: a colour label, not a batch
    for mask in (np.zeros((10, 12), bool), torch.zeros(10, 12, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"a boolean mask is no label: its ids as integers"):
            plain.complete(image, mask)


def test_weights_cast_by_hand_are_refused_with_what_to_do_instead(plain):
    image, label = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8)
    label[:4] = 255
    try:
        for cast in ("half", "bfloat16", "double"):
            getattr(plain, cast)()
            for method in (plain.complete, plain.audit):
                with pytest.raises(ValueError, match=r"weights are torch\.\w+, but completion needs float32.*\(\)"):
                    method(image, label)
            plain.float()
    finally:
        plain.float()
    assert plain.complete(image, label).shape == (10, 12)


def test_a_float64_default_dtype_changes_nothing():
    """The library computes in float32 whatever torch's default dtype: a completer loaded under float64
    has float32 weights, and completes and audits as under float32 (the combiner's maps, the audit's sums)."""
    samples = Path(torch_label_mae.__file__).parent / "samples"
    image = np.array(Image.open(samples / "images" / "0016E5_07969.jpg"))[::4, ::4].copy()
    label = np.array(Image.open(samples / "labels" / "0016E5_07969.png"))[::4, ::4].copy()
    broken = label.copy()
    broken[20:50, 30:80] = 255
    completer = LabelCompleter.from_pretrained("any-m0.5", device="cpu")
    want, want_audit = completer.complete(image, broken), completer.audit(image, label)
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        loaded = LabelCompleter.from_pretrained("any-m0.5", device="cpu")
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}
        got, got_audit = loaded.complete(image, broken), loaded.audit(image, label)
    finally:
        torch.set_default_dtype(before)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert np.array_equal(got_audit.score, want_audit.score)


def test_a_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda:1': no CUDA GPU is available to torch here; use device='cpu'"):
        resolve_device("cuda:1")
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_grayscale_images_are_replicated(plain):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    label = rng.integers(0, N, (13, 17))
    label[3:9, 4:12] = 255
    want = plain.complete(np.repeat(gray[:, :, None], 3, axis=2), label)
    for image in (
        gray,
        Image.fromarray(gray, mode="L"),
        torch.from_numpy(gray),
        torch.from_numpy(gray)[None],
        tv_tensors.Image(torch.from_numpy(gray)[None]),
    ):
        np.testing.assert_array_equal(plain.complete(image, label), want)


@pytest.mark.parametrize("bad", [7, -1, 5, 254])
def test_ids_outside_the_classes_are_refused(plain, bad):
    label = np.zeros((6, 7), np.int64)
    label[1, 1] = bad
    label[2, 2] = 255
    with pytest.raises(ValueError, match=rf"labels\[0\]: 1 pixels have ids \[{bad}\] outside \[0, 5\)"):
        plain.complete(np.zeros((6, 7, 3), np.uint8), label)


def test_bad_ids_lists_several(plain):
    label = np.zeros((6, 7), np.int64)
    label[0, :3] = [9, 7, 9]
    with pytest.raises(ValueError, match=r"labels\[1\]: 3 pixels have ids \[7, 9\] outside \[0, 5\)"):
        plain.complete_batch([np.zeros((6, 7, 3), np.uint8)] * 2, [np.zeros((6, 7), np.int64), label])


@pytest.mark.parametrize(
    "label, err",
    [
        (np.zeros((5, 6), np.float32), ValueError),
        (torch.zeros(5, 6), ValueError),
        (torch.zeros(5, 6, dtype=torch.bool), ValueError),
        (Image.new("RGB", (6, 5)), ValueError),
        (np.zeros((2, 5, 6), np.int64), ValueError),
        ([[0] * 6] * 5, TypeError),
    ],
)
def test_unusable_labels_are_refused(plain, label, err):
    with pytest.raises(err, match=r"labels\[0\]"):
        plain.complete(np.zeros((5, 6, 3), np.uint8), label)


def test_unusable_image_types_are_refused(plain):
    with pytest.raises(TypeError, match=r"images\[0\]"):
        plain.complete([[0] * 6] * 5, np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"images\[0\].*dtype"):
        plain.complete(torch.zeros(3, 5, 6, dtype=torch.int32), np.zeros((5, 6), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (40, 33)])
def test_all_missing_warns_and_fills(completer, shape):
    label = np.full(shape, 255, np.uint8)
    with pytest.warns(UserWarning, match=r"labels\[0\] has no known pixel"):
        out, conf = completer.complete(np.full((*shape, 3), 128, np.uint8), label, return_confidence=True)
    assert out.shape == shape and out.dtype == np.uint8 and (out < N).all()
    assert ((conf > 0) & (conf < 1)).all()


def test_nothing_missing_is_identity(completer):
    rng = np.random.default_rng(1)
    label = rng.integers(0, N, (21, 23)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, conf = completer.complete(rng.integers(0, 256, (21, 23, 3), dtype=np.uint8), label, return_confidence=True)
    np.testing.assert_array_equal(out, label)
    assert (conf == 1).all()


# ----------------------------------------------------------------------------------------------------
# missing="background-first"
# ----------------------------------------------------------------------------------------------------
def _patch_map(patches, scale: int) -> np.ndarray:
    """Pixel map ``[32 s, 32 s]`` of the given patches of the 4 x 4 grid of 8 s px patches."""
    m = np.zeros((4, 4), bool)
    for p in patches:
        m[p // 4, p % 4] = True
    return m.repeat(8 * scale, 0).repeat(8 * scale, 1)


@FEWER
@given(
    order=st.permutations(range(16)), scale=st.sampled_from([1, 2]), holes=st.integers(0, 3), seed=st.integers(0, 2**16)
)
def test_background_first_hides_the_background_patches(plain, order, scale, holes, seed):
    """The model's ratio (0.5: 8 of 16 patches) of background patches are hidden on top of the holes:
    the result equals an explicit missing map of those patches, and only they (and the holes) change."""
    rng = np.random.default_rng(seed)
    size = 32 * scale
    background, objects = order[:8], order[8:]
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    label = rng.integers(1, N, (size, size))  # objects: no background pixel
    bg = _patch_map(background, scale)
    label[bg] = 0
    hole = _patch_map(objects[:holes], scale) & (rng.random((size, size)) < 0.5)
    label[hole] = 255
    out, conf = plain.complete(image, label, missing="background-first", return_confidence=True)
    want, want_conf = plain.complete(image, label, missing=bg | hole, return_confidence=True)  # a map is exact
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(conf, want_conf, atol=1e-6)
    kept = ~(bg | hole)
    np.testing.assert_array_equal(out[kept], label[kept])
    assert (conf[kept] == 1).all() and (conf[bg] < 1).all()
    assert (out[bg] != 0).any()  # background pixels that were visible were re-predicted
    plain_out = plain.complete(image, label)
    np.testing.assert_array_equal(plain_out[bg], label[bg])  # without it, they are left alone


def test_background_first_in_a_batch(plain):
    rng = np.random.default_rng(3)
    labels = [rng.integers(0, N, (32, 32)), rng.integers(0, N, (20, 27))]
    images = [rng.integers(0, 256, (*lab.shape, 3), dtype=np.uint8) for lab in labels]
    outs = plain.complete_batch(images, labels, missing="background-first")
    for out, lab in zip(outs, labels, strict=True):
        assert out.shape == lab.shape and (out < N).all()
        assert (out != lab).any()  # visible pixels were hidden and re-predicted


def test_background_first_needs_a_background_class(no_background):
    with pytest.raises(ValueError, match="background_index"):
        no_background.complete(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), missing="background-first")


@given(seed=st.integers(0, 2**31), label_prior=st.booleans(), frac=st.floats(0.0, 1.0))
def test_hidden_rows_fast_path_equals_full_logits(seed, label_prior, frac):
    from torch_label_mae.inference import complete_tensors
    from torch_label_mae.masking import hidden_from_missing
    from torch_label_mae.model import LMAE

    cfg = LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 4, "label_prior": label_prior})
    torch.manual_seed(seed % 5)
    model = LMAE(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.2)
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.size
    image = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 4, (2, h, w), generator=g)
    missing = torch.rand(2, h, w, generator=g) < frac * 0.2
    completed, confidence = complete_tensors(model, image, label, missing)  # fast path at the model's size
    known = torch.where(missing, torch.full_like(label, 255), label)
    with torch.no_grad():
        logits = model(image.float() / 255, known, hidden_from_missing(missing, cfg.grid))
    prob, pred = logits.softmax(1).max(1)
    assert torch.equal(completed, torch.where(missing, pred, label))
    torch.testing.assert_close(confidence, torch.where(missing, prob, torch.ones_like(prob)), atol=1e-5, rtol=1e-5)


def test_cli_precision_choices_are_the_completers():
    import argparse

    from torch_label_mae.cli import _add_model
    from torch_label_mae.completer import PRECISIONS

    parser = argparse.ArgumentParser()
    _add_model(parser)
    (action,) = [a for a in parser._actions if a.dest == "precision"]
    assert tuple(action.choices) == PRECISIONS


# ----------------------------------------------------------------------------------------------------
# the learned correction, scaled


@FEWER
@given(scale=st.floats(0, 2), seed=st.integers(0, 1000))
@pytest.mark.parametrize("name", ["with_prior", "random_walk_prior"])
def test_with_correction_scales_the_correction_alone(request, name, scale, seed):
    base = request.getfixturevalue(name)
    head = base.model.head.weight.clone()
    cfg = base.config
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, *cfg.size, generator=g)
    label = torch.randint(0, N, (2, *cfg.size), generator=g)
    hidden = torch.rand(2, cfg.num_patches, generator=g) < 0.5
    with torch.no_grad():
        prior, full, scaled = (c.model(image, label, hidden) for c in (with_correction(base, 0.0), base,
                                                                       with_correction(base, scale)))  # fmt: skip
    torch.testing.assert_close(scaled, prior + scale * (full - prior), atol=1e-4, rtol=1e-4)  # linear in the scale
    assert torch.equal(base.model.head.weight, head)  # the model it was made from is unchanged
    with torch.no_grad():
        assert with_correction(base, 0.0).model.prior_alone()


def test_with_correction_needs_a_prior(plain):
    with pytest.raises(ValueError, match="label prior"):
        with_correction(plain, 0.0)


@given(
    st.integers(1, 40),
    st.integers(1, 8),
    st.integers(0, 40),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.integers(0, 99),
)
def test_class_and_probability_is_softmax_argmax_and_max_with_absent_slots(m, k, absent, dtype, seed):
    """The clamp before exp changes no bit: absent slots far below (-1e4), logits spread wide, in the
    dtypes autocast gives; and it is the softmax's largest probability."""
    from torch_label_mae.inference import class_and_probability
    from torch_label_mae.model import ABSENT_SLOT

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, k + absent, generator=g) * 30
    logits[:, k:] = ABSENT_SLOT
    logits = logits.to(dtype)
    pred, prob = class_and_probability(logits, dim=-1)
    top = logits.max(-1, keepdim=True).values
    assert torch.equal(pred, logits.argmax(-1))
    assert torch.equal(prob, torch.exp(logits - top).sum(-1).reciprocal())  # unclamped, bit for bit
    if dtype == torch.float32:
        torch.testing.assert_close(prob, torch.softmax(logits, dim=-1).amax(-1), rtol=1e-6, atol=0)
