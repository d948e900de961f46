"""Faulty inputs (issue #21, "nothing silently wrong"): NaN / inf images, 16-bit gray images, empty
images and labels, impossible degradation settings, and labels that look like another dataset's. Each
is refused with a message naming the input, read correctly, or warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL

from torch_label_mae import CompleteLabels, LabelCompleter, LMAEConfig
from torch_label_mae import data as data_mod
from torch_label_mae.cli import main
from torch_label_mae.data import degrade, degrade_folder, read_image, read_label
from torch_label_mae.io import default_palette, image_to_tensor, label_to_tensor


def _tiny(num_classes: int, seed: int = 0) -> LabelCompleter:
    torch.manual_seed(seed)
    completer = LabelCompleter(LMAEConfig(**TINY_MODEL, num_classes=num_classes)).eval()
    completer.precision = "float32"
    return completer


@pytest.fixture(scope="module")
def small() -> LabelCompleter:
    """5 classes: never narrow enough to warn about other datasets' labels."""
    return _tiny(5)


@pytest.fixture(scope="module")
def wide() -> LabelCompleter:
    """59 classes, as the CCP model."""
    return _tiny(59, seed=1)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _broken(h: int, w: int, ids=(0, 1, 2)) -> np.ndarray:
    """A label with vertical stripes of ``ids`` and its left half missing (255)."""
    lab = np.asarray(ids, np.uint8)[np.arange(w) * len(ids) // w][None].repeat(h, 0)
    lab[:, : w // 2] = 255
    return lab


# ----------------------------------------------------------------------------------------------------
# (a) NaN / inf pixels
# ----------------------------------------------------------------------------------------------------
def test_a_float_image_with_nan_pixels_is_refused_naming_it(small):
    images = [_rgb(16, 16, s).astype(np.float32) / 255 for s in range(4)]
    images[3][[1, 5, 7, 9], [2, 2, 3, 15], 0] = np.nan  # 4 pixels, one channel each
    labels = [_broken(16, 16)] * 4
    with pytest.raises(ValueError, match=r"images\[3\]: 4 NaN / inf pixels \(the first at \(y, x\) = \(1, 2\)\)"):
        small.complete_batch(images, labels)


def test_a_nan_in_every_channel_of_a_pixel_counts_once():
    image = torch.rand(3, 6, 7)
    image[:, 4, 5] = float("inf")
    with pytest.raises(ValueError, match=r"img: 1 NaN / inf pixels"):
        image_to_tensor(image, "img")


@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    gray=st.booleans(),
    kind=st.sampled_from(["numpy", "torch"]),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    where=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999), st.integers(0, 2)),
)
def test_a_any_float_image_with_a_nan_or_inf_anywhere_is_refused(h, w, gray, kind, dtype, bad, where):
    y, x, c = int(where[0] * h), int(where[1] * w), 0 if gray else where[2]
    arr = np.random.default_rng(h * 10 + w).random((h, w) if gray else (h, w, 3)).astype(dtype)
    arr[(y, x) if gray else (y, x, c)] = bad
    image = arr if kind == "numpy" else torch.from_numpy(arr if gray else arr.transpose(2, 0, 1).copy())
    with pytest.raises(ValueError, match=rf"images\[7\]: 1 NaN / inf pixels \(the first at \(y, x\) = \({y}, {x}\)\)"):
        image_to_tensor(image, "images[7]")


def test_a_pil_float_image_with_nan_is_refused_and_complete_labels_names_it(small):
    arr = np.full((8, 8), 100.0, np.float32)
    arr[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"images\[0\]: 1 NaN / inf pixels"):
        small.complete(Image.fromarray(arr, mode="F"), _broken(8, 8))
    image = torch.rand(3, 8, 8)
    image[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images\[0\]: 1 NaN / inf pixels"):
        CompleteLabels(small)(image, torch.from_numpy(_broken(8, 8)))


@given(values=st.lists(st.floats(0, 1, width=32), min_size=6, max_size=6))
def test_a_pil_float_image_reads_as_the_same_float_tensor_and_its_file_as_their_uint8(tmp_path_factory, values):
    """'F' is a float image in [0, 1], as float tensors are (torchvision's reading): it was clipped to
    0..255 and so read black."""
    arr = np.asarray(values, np.float32).reshape(2, 3)
    t = image_to_tensor(Image.fromarray(arr, mode="F"))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(arr).expand(3, -1, -1))
    path = tmp_path_factory.mktemp("f") / "gray.tiff"
    Image.fromarray(arr, mode="F").save(path)
    assert torch.equal(read_image(path)[0], torch.from_numpy(np.round(arr * 255).astype(np.uint8)))


@pytest.mark.parametrize("bad", [-40.0, 600.0, 1e6])
def test_a_pil_float_image_outside_0_1_and_0_255_is_refused_showing_its_range(bad):
    arr = np.full((4, 5), 0.5, np.float32)
    arr[1, 2] = bad
    lo, hi = min(0.5, float(np.float32(bad))), max(0.5, float(np.float32(bad)))
    with pytest.raises(ValueError, match=rf"img: PIL mode 'F' image has values in \[{lo:.9g}, {hi:.9g}\]"):
        image_to_tensor(Image.fromarray(arr, mode="F"), "img")


def test_a_pil_float_image_of_0_255_reads_as_pillow_reads_it_and_an_overshoot_of_1_is_clipped(tmp_path):
    """Float TIFFs of 0..255 (Pillow's convert("L") reading) kept working when 'F' became [0, 1]."""
    arr = np.linspace(0, 250, 20, dtype=np.float32).reshape(4, 5)
    want = torch.from_numpy(np.round(arr).astype(np.uint8)).expand(3, -1, -1)
    assert torch.equal(image_to_tensor(Image.fromarray(arr, mode="F")), want)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    assert torch.equal(read_image(tmp_path / "f.tiff"), want)
    step = np.zeros((20, 20), np.float32)
    step[:, 10:] = 1.0
    resampled = Image.fromarray(step, mode="F").resize((50, 50), Image.LANCZOS)  # over- and undershoots 0..1
    assert np.array(resampled).min() < 0 and np.array(resampled).max() > 1.001
    t = image_to_tensor(resampled)
    values = np.array(resampled)
    assert t.dtype == torch.float32 and torch.equal(t[0], torch.from_numpy(np.clip(values, 0, 1)))
    resampled.save(tmp_path / "r.tiff")
    want = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)  # clipped, not wrapped around
    assert torch.equal(read_image(tmp_path / "r.tiff")[0], torch.from_numpy(want))
    for top in (1.6, 2.0, 3.9):  # a [0, 1] texture resampled far past it, or a dark 0..255 image: refused
        ambiguous = np.full((8, 8), 0.5, np.float32)
        ambiguous[0, 0] = top
        with pytest.raises(ValueError, match=r"a largest value between 1.15 and 4 could be either"):
            image_to_tensor(Image.fromarray(ambiguous, mode="F"))
    dark = np.array([[0, 0.5, 1, 1.5, 4]], np.float32)  # a 0..255 image, its largest value at the floor
    assert image_to_tensor(Image.fromarray(dark, mode="F"))[0].tolist() == [[0, 0, 1, 2, 4]]


def test_a_float_tensor_resized_bicubic_is_clipped_as_a_float_pil_image_is():
    from torchvision.transforms import v2

    step = torch.zeros(3, 20, 20)
    step[:, :, 10:] = 1.0
    resized = v2.Resize(47, interpolation=v2.InterpolationMode.BICUBIC)(step)  # over- and undershoots 0..1
    assert resized.min() < 0 and resized.max() > 1.001
    before = resized.clone()
    t = image_to_tensor(resized, "img")
    assert torch.equal(t, resized.clamp(0, 1)) and torch.equal(resized, before)  # clipped on a copy
    for bad in (-0.2, 1.3, 255.0):
        far = torch.full((3, 4, 5), 0.5)
        far[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"img: float images must be in \[0, 1\] \(a resize's overshoot"):
            image_to_tensor(far, "img")


def test_a_16bit_rgb_array_says_how_to_scale_it():
    with pytest.raises(ValueError, match=r"img: image dtype torch.uint16 not supported.*image // 257 as uint8"):
        image_to_tensor(np.zeros((4, 5, 3), np.uint16), "img")


def test_a_finite_float_images_still_complete(small):
    out = small.complete(_rgb(16, 16).astype(np.float64) / 255, _broken(16, 16))
    assert out.shape == (16, 16) and (out < 5).all()


# ----------------------------------------------------------------------------------------------------
# (b) 16-bit gray images
# ----------------------------------------------------------------------------------------------------
def _scaled(v: np.ndarray) -> np.ndarray:
    """The documented 16 -> 8 bit mapping, round(v / 257), in floating point."""
    return np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)


RAMP16 = (np.arange(12 * 16, dtype=np.uint32).reshape(12, 16) * 343).astype(np.uint16)  # 0 .. 65513


def test_b_16bit_png_file_is_read_by_its_bit_depth_not_clipped_white(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I")  # a real 16-bit PNG
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 16)
    assert len(image.unique()) > 100  # not flat
    for c in range(3):
        np.testing.assert_array_equal(image[c].numpy(), _scaled(RAMP16))


def test_b_pil_16bit_in_memory_matches_the_file_reading(tmp_path):
    im = Image.fromarray(RAMP16)
    assert im.mode == "I;16"
    t = image_to_tensor(im, "images[0]")
    assert t.shape == (3, 12, 16) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t[0].numpy(), _scaled(RAMP16))
    Image.fromarray(RAMP16).save(tmp_path / "a.png")
    assert torch.equal(t, read_image(tmp_path / "a.png"))


def test_b_pil_mode_i_is_8bit_up_to_255_and_16bit_above():
    eight = np.arange(48, dtype=np.int32).reshape(6, 8) * 5  # 0..235: as is
    np.testing.assert_array_equal(image_to_tensor(Image.fromarray(eight, mode="I"))[0].numpy(), eight)
    sixteen = RAMP16.astype(np.int32)
    np.testing.assert_array_equal(image_to_tensor(Image.fromarray(sixteen, mode="I"))[0].numpy(), _scaled(RAMP16))
    with pytest.raises(ValueError, match=r"images\[2\]: PIL mode 'I' image has values in \[-5, 65513\]"):
        image_to_tensor(Image.fromarray(np.where(sixteen == 0, -5, sixteen).astype(np.int32), mode="I"), "images[2]")
    with pytest.raises(ValueError, match=r"\[0, 70000\]"):
        image_to_tensor(Image.fromarray(np.array([[0, 70000]], np.int32), mode="I"))


@given(values=st.lists(st.integers(0, 65535), min_size=1, max_size=40))
def test_b_any_16bit_image_maps_monotonically_and_exactly(values):
    arr = np.asarray(values, np.uint16)[None]
    out = image_to_tensor(Image.fromarray(arr), "img")[0, 0].numpy().astype(np.int64)
    np.testing.assert_array_equal(out, _scaled(arr[0]))
    order = np.argsort(arr[0], kind="stable")
    assert (np.diff(out[order]) >= 0).all()  # monotonic: a brighter 16-bit pixel is never darker
    eight = arr[0].astype(np.int64) // 257  # any 8-bit value k, stored as 257 k, reads back as k
    np.testing.assert_array_equal(image_to_tensor(Image.fromarray((eight * 257).astype(np.uint16)[None]))[0, 0], eight)


def test_b_16bit_image_completes(small):
    out = small.complete(Image.fromarray(RAMP16), _broken(12, 16))
    assert out.shape == (12, 16) and (out < 5).all()


# ----------------------------------------------------------------------------------------------------
# (c) empty images and labels
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(0, 0), (0, 5), (5, 0)])
def test_c_empty_image_or_label_is_refused_naming_it_and_its_shape(small, hw):
    h, w = hw
    with pytest.raises(ValueError, match=rf"images\[0\]: empty image of \(H, W\) = \({h}, {w}\)"):
        small.complete(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8))
    with pytest.raises(ValueError, match=rf"images\[1\]: empty image of \(H, W\) = \({h}, {w}\)"):
        small.complete_batch([_rgb(8, 8), torch.zeros(3, h, w)], [_broken(8, 8), torch.zeros(h, w, dtype=torch.long)])
    with pytest.raises(ValueError, match=rf"labels\[0\]: empty label of \(H, W\) = \({h}, {w}\)"):
        small.complete(_rgb(4, 4), np.zeros((h, w), np.uint8))
    with pytest.raises(ValueError, match=rf"images\[0\]: empty image of \(H, W\) = \({h}, {w}\)"):
        CompleteLabels(small)(Image.new("RGB", (w, h)), Image.new("P", (w, h)))
    with pytest.raises(ValueError, match=rf"images\[0\]: empty image of \(H, W\) = \({h}, {w}\)"):
        small.complete(Image.fromarray(np.zeros((h, w), np.uint16)), np.zeros((h, w), np.uint8))


def test_c_empty_float_image_is_refused_before_its_range_is_read():
    with pytest.raises(ValueError, match=r"img: empty image of \(H, W\) = \(0, 3\)"):
        image_to_tensor(torch.zeros(3, 0, 3), "img")
    with pytest.raises(ValueError, match=r"lab: empty label of \(H, W\) = \(2, 0\)"):
        label_to_tensor(torch.zeros(1, 2, 0, dtype=torch.long), "lab")


@pytest.mark.parametrize("hw", [(0, 5), (5, 0)])
def test_c_files_that_decode_to_no_pixels_are_refused_naming_the_file(tmp_path, monkeypatch, hw):
    path = tmp_path / "empty.png"
    path.write_bytes(b"stand-in")
    h, w = hw
    monkeypatch.setattr(data_mod.Image, "open", lambda p: Image.new("P", (w, h)))
    with pytest.raises(ValueError, match=rf"empty.png: empty image of \(H, W\) = \({h}, {w}\)"):
        read_image(path)
    with pytest.raises(ValueError, match=rf"empty.png: empty label of \(H, W\) = \({h}, {w}\)"):
        read_label(path)


def test_c_a_zero_width_png_file_is_refused_naming_the_file(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)  # width 0, height 5, 8-bit gray
    path = tmp_path / "zero.png"
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    with pytest.raises(ValueError, match=r"zero.png: cannot read image"):
        read_image(path)
    with pytest.raises(ValueError, match=r"zero.png: cannot read label"):
        read_label(path)


# ----------------------------------------------------------------------------------------------------
# (d) impossible degradation settings
# ----------------------------------------------------------------------------------------------------
@given(block=st.integers(-5, 0))
def test_d_degrade_refuses_blocks_below_one(block):
    with pytest.raises(ValueError, match=rf"patch_size must be an integer >= 1 \(pixels\), got {block}"):
        degrade(torch.zeros(8, 8, dtype=torch.long), 0.5, block, mode="blocks")


@given(ratio=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), st.just(float("nan"))))
def test_d_degrade_refuses_ratios_outside_0_1(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\]"):
        degrade(torch.zeros(8, 8, dtype=torch.long), ratio, 4, mode="blocks")


def test_d_degrade_refuses_non_integer_blocks_and_keeps_the_edges():
    with pytest.raises(ValueError, match=r"patch_size must be an integer >= 1 \(pixels\), got 2.5"):
        degrade(torch.zeros(8, 8, dtype=torch.long), 0.5, 2.5, mode="blocks")
    label = torch.zeros(8, 8, dtype=torch.long)
    assert not degrade(label, 0.0, 1, mode="blocks")[1].any() and degrade(label, 1.0, 1, mode="blocks")[1].all()


def _label_folder(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    im = Image.fromarray(np.zeros((8, 8), np.uint8), mode="P")
    im.putpalette(default_palette())
    im.save(folder / "a.png")
    return folder


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block=0), r"block must be an integer >= 1 \(pixels\), got 0"),
        (dict(ratio=1.5), r"ratio must be a number in \[0, 1\], got 1.5"),
        (dict(missing_index=256), r"missing_index must be in 0..255"),
    ],
)
def test_d_degrade_folder_refuses_before_writing(tmp_path, kwargs, message):
    labels = _label_folder(tmp_path)
    with pytest.raises(ValueError, match=message):
        degrade_folder(labels, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--block", "0", "argument --block: must be >= 1, got 0"),
        ("--block", "-3", "argument --block: must be >= 1, got -3"),
        ("--block", "2.5", "argument --block: expected an integer, got '2.5'"),
        ("--ratio", "1.5", r"argument --ratio: must be in [0, 1], got 1.5"),
        ("--ratio", "nan", r"argument --ratio: must be in [0, 1], got nan"),
        ("--ratio", "half", r"argument --ratio: expected a number in [0, 1], got 'half'"),
        ("--missing-index", "256", "argument --missing-index: must be in 0..255, got 256"),
    ],
)
def test_d_degrade_cli_refuses_like_argparse_exit_2_no_traceback(tmp_path, capsys, flag, value, message):
    labels = _label_folder(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["degrade", "--labels", str(labels), "--out", str(tmp_path / "out"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "label-mae degrade: error: " + message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_d_degrade_cli_still_writes_with_block_one(tmp_path, capsys):
    labels = _label_folder(tmp_path)
    assert main(["degrade", "--labels", str(labels), "--out", str(tmp_path / "out"), "--block", "1"]) == 0
    assert (read_label(tmp_path / "out" / "a.png") == 255).sum() == 32


# ----------------------------------------------------------------------------------------------------
# (e) labels of another (smaller) dataset
# ----------------------------------------------------------------------------------------------------
def _label_with_ids(ids, h: int = 16, w: int = 24) -> np.ndarray:
    """Vertical stripes of every one of ``ids``, the top two rows missing."""
    lab = np.asarray(ids, np.uint8)[np.arange(w) * len(ids) // w][None].repeat(h, 0)
    assert set(np.unique(lab)) == set(ids)
    lab[:2, :] = 255
    return lab


def test_e_labels_of_an_11_class_dataset_on_a_59_class_model_warn_per_label(wide):
    labels = [_label_with_ids([0, 19, 41, 3]), _label_with_ids(list(range(11)), w=44)]
    with pytest.warns(UserWarning) as caught:
        wide.complete_batch([_rgb(16, 24), _rgb(16, 44)], labels)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    msg = messages[0]
    assert msg.startswith("labels[1] uses only class ids ")  # complete_dataset files it under labels[1]
    assert "ids 0-10," in msg and "59 classes" in msg and "wrong one" in msg


@pytest.mark.parametrize(
    "ids",
    [
        [0, 19, 41],  # CCP-like: spread over the id range
        [0, 3],  # VOC-like: an image holds few classes
        [0, 1, 2],  # fewer than 4 distinct ids
        [0, 2, 5, 9, 14],  # spread: 5 of 0..14
        [0, 1, 2, 3, 15],  # 15 >= 59 / 4
    ],
)
def test_e_labels_that_fit_the_model_do_not_warn(wide, ids):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide.complete(_rgb(16, 24), _label_with_ids(ids))


def test_e_small_models_never_warn_about_the_class_range(small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small.complete(_rgb(16, 24), _label_with_ids([0, 1, 2, 3, 4]))


def test_e_missing_pixels_do_not_count_as_ids(wide):
    lab = _label_with_ids([0, 1, 2, 3])
    with pytest.warns(UserWarning, match=r"labels\[0\] uses only class ids 0-3,"):
        wide.complete(_rgb(16, 24), lab)
    with warnings.catch_warnings():  # the same ids, but one of them only under the missing map
        warnings.simplefilter("error")
        wide.complete(_rgb(16, 24), lab, missing=lab == 3)
