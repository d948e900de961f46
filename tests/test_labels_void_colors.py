"""Missing is not void (issue #19, 1) and colour-coded labels in, colour-coded labels out (#19, 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL, voc_label
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from torch_label_mae import CompleteLabels, LabelCompleter, LMAEConfig
from torch_label_mae.colors import BUILTIN, MISSING_ID, VOID_ID, ColorTable, load_colors
from torch_label_mae.io import default_palette

N = 5  # classes of the tiny model
FAST = settings(deadline=None, max_examples=20)
CAMVID = BUILTIN["camvid"]
WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def completer() -> LabelCompleter:
    torch.manual_seed(0)
    return LabelCompleter(LMAEConfig.tiny(**TINY_MODEL, num_classes=N, background_index=0)).eval()


@pytest.fixture(scope="module")
def camvid_completer() -> LabelCompleter:
    torch.manual_seed(0)
    return LabelCompleter(LMAEConfig.tiny(**TINY_MODEL, num_classes=11)).eval()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _voc_label(h: int, w: int, seed: int, hole_value: int = 254) -> np.ndarray:
    """Class ids in blocks, VOC's 255 borders between them and a rectangular hole of ``hole_value``."""
    return voc_label(h, w, seed, N, hole_value)


def _pil_p(a: np.ndarray) -> Image.Image:
    im = Image.fromarray(a.astype(np.uint8), mode="P")
    im.putpalette(default_palette())
    return im


# ----------------------------------------------------------------------------------------------------
# 1. missing and void are two things
# ----------------------------------------------------------------------------------------------------
@st.composite
def labels_with_void(draw, max_side=40):
    """``(image, label, map)``: ids in [0, N), void 255, 254 and the map drawn independently."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    label = rng.integers(0, N, (h, w))
    specials = rng.random((h, w))
    label[specials < draw(st.sampled_from([0.0, 0.1, 0.4]))] = 255
    label[specials > 1 - draw(st.sampled_from([0.0, 0.1, 0.4]))] = 254
    missing = rng.random((h, w)) < draw(st.sampled_from([0.0, 0.2, 0.7]))
    return _image(h, w, int(rng.integers(1 << 16))), label.astype(np.uint8), missing


@FAST
@given(sample=labels_with_void(), kind=st.sampled_from(["numpy", "pil", "mask"]))
@pytest.mark.filterwarnings(r"ignore:labels\[\d+\] has no known pixel")
def test_an_explicit_map_changes_exactly_its_pixels(completer, sample, kind):
    image, raw, missing = sample
    wrap = {"numpy": lambda a: a, "pil": _pil_p, "mask": lambda a: tv_tensors.Mask(torch.from_numpy(a))}[kind]
    # void 255 and holes 254; no void: 255 (the default missing index) and 254 (not an id: refused) -> 255
    for label, kwargs in ((raw, dict(missing_index=254, void_index=255)), (np.where(raw == 254, 255, raw), {})):
        out = np.asarray(completer.complete(image, wrap(label), missing=missing, **kwargs))
        assert out.dtype == np.uint8 and out.shape == label.shape
        assert out[~missing].tobytes() == label[~missing].tobytes()  # void and 254 outside the map included
        assert ((out[missing] >= 0) & (out[missing] < N)).all()


@FAST
@given(sample=labels_with_void())
@pytest.mark.filterwarnings(r"ignore:labels\[\d+\] has no known pixel")
def test_without_a_map_the_missing_index_is_filled_and_void_kept(completer, sample):
    image, label, _ = sample
    holes = label == 254
    out = completer.complete(image, label, missing_index=254, void_index=255)
    assert out[~holes].tobytes() == label[~holes].tobytes()
    assert ((out[holes] >= 0) & (out[holes] < N)).all()
    batch = completer.complete_batch([image, image], [label, label], missing_index=254, void_index=255)
    for b in batch:
        np.testing.assert_array_equal(b, out)


def test_void_is_unknown_context_not_a_class(completer):
    """The model sees void pixels as unknown: the same result as when they carried the model's ignore
    index, whatever value the dataset uses for void."""
    image, label = _image(32, 32, 1), _voc_label(32, 32, 1)
    a = completer.complete(image, label, missing_index=254, void_index=255)
    b = completer.complete(image, np.where(label == 255, 250, label), missing_index=254, void_index=250)
    np.testing.assert_array_equal(a[label != 255], b[label != 255])
    assert (a[label == 255] == 255).all() and (b[label == 255] == 250).all()


def test_a_void_pixel_outside_the_map_is_kept_by_default(completer):
    """The CamVid report: with an explicit map, 255 pixels outside it no longer change (no void_index)."""
    image, label = _image(24, 40, 2), _voc_label(24, 40, 2, hole_value=3)
    missing = np.zeros(label.shape, bool)
    missing[4:12, 8:30] = True
    out = completer.complete(image, label, missing=missing)
    np.testing.assert_array_equal(out[~missing], label[~missing])
    assert (label[~missing] == 255).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(void_index=255), r"void_index and missing_index are both 255.*missing_index=254"),
        (dict(void_index=3), r"void_index 3 is a class id of this model \(0..4\)"),
        (dict(void_index=True), r"void_index must be an integer"),
        (dict(missing_index=300), r"labels\[0\]: missing_index 300 cannot occur in an 8-bit label"),
        (dict(missing_index=254, void_index=256), r"labels\[0\]: void_index 256 cannot occur in an 8-bit label"),
    ],
)
def test_conflicts_are_refused(completer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        completer.complete(_image(8, 8), _pil_p(np.zeros((8, 8))), **kwargs)


def test_void_equal_to_missing_index_is_fine_with_a_map(completer):
    label = _voc_label(16, 16, 3, hole_value=1)
    missing = np.zeros(label.shape, bool)
    missing[:4] = True
    out = completer.complete(_image(16, 16), label, missing=missing, void_index=255)  # missing_index unused
    np.testing.assert_array_equal(out[~missing], label[~missing])


def test_wide_labels_take_any_index(completer):
    label = np.full((8, 8), 2, np.int64)
    label[:2] = 1000  # void
    label[2:4] = -1  # holes
    out = completer.complete(_image(8, 8), label, missing_index=-1, void_index=1000)
    assert (out[:2] == 1000).all() and (out[2:4] >= 0).all() and (out[2:4] < N).all() and (out[4:] == 2).all()


def test_other_out_of_range_ids_are_still_refused(completer):
    label = np.full((8, 8), 2, np.uint8)
    label[0, 0] = 9
    with pytest.raises(ValueError, match=r"ids \[9\] outside \[0, 5\) that are not the missing index 254 or the void"):
        completer.complete(_image(8, 8), label, missing_index=254, void_index=255)


def test_complete_labels_keeps_voc_borders(completer):
    image, raw = Image.fromarray(_image(37, 45, 4)), _voc_label(37, 45, 4)
    target = _pil_p(raw)
    t = CompleteLabels(completer, void_index=255, missing_index=254)
    _, out = t(image, target)
    out = np.array(out)
    holes = raw == 254
    np.testing.assert_array_equal(out[~holes], raw[~holes])  # borders (255) kept
    assert (raw == 255).any() and (out[holes] < N).all()
    assert "void_index=255" in repr(t)
    with pytest.raises(ValueError, match="both 255"):
        CompleteLabels(completer, void_index=255)


def test_random_crop_padding_stays_void(completer):
    """``RandomCrop(pad_if_needed=True, fill={Mask: 255})`` before the transform: the padding is void."""
    raw = _voc_label(20, 24, 5)
    image, mask = tv_tensors.Image(torch.from_numpy(_image(20, 24, 5)).permute(2, 0, 1)), tv_tensors.Mask(raw)
    crop = v2.RandomCrop(32, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255})
    pipeline = v2.Compose([crop, CompleteLabels(completer, void_index=255, missing_index=254)])
    torch.manual_seed(0)
    out_image, out = pipeline(image, mask)
    torch.manual_seed(0)
    _, padded = crop(image, mask)
    assert isinstance(out, tv_tensors.Mask) and out.shape == (32, 32)
    holes = padded == 254
    assert torch.equal(out[~holes], padded[~holes]) and int((out == 255).sum()) >= 32 * 32 - 20 * 24
    assert bool((out[holes] < N).all())


def test_voc_segmentation_keeps_its_borders(tmp_path, completer):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    ids = ["2007_000001", "2007_000002"]
    raws = [_voc_label(37, 45, 6), _voc_label(30, 29, 7)]
    for name, raw in zip(ids, raws, strict=True):
        Image.fromarray(_image(*raw.shape, 8)).save(base / "JPEGImages" / f"{name}.jpg")
        _pil_p(raw).save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    t = CompleteLabels(completer, void_index=255, missing_index=254)
    ds = datasets.VOCSegmentation(str(tmp_path), year="2012", image_set="train", download=False, transforms=t)
    for i, raw in enumerate(raws):
        _, target = ds[i]
        out = np.array(target)
        assert target.mode == "P"
        np.testing.assert_array_equal(out[raw != 254], raw[raw != 254])
        assert (out[raw == 254] < N).all()


# ----------------------------------------------------------------------------------------------------
# 2. colour tables
# ----------------------------------------------------------------------------------------------------
def _camvid_rgb(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB CamVid-coded label (classes, void black, a white hole) and its ids (MISSING_ID / VOID_ID)."""
    rng = np.random.default_rng(seed)
    ids = np.kron(rng.integers(0, 11, (-(-h // 8), -(-w // 8))), np.ones((8, 8), np.int64))[:h, :w]
    ids[rng.random((h, w)) < 0.05] = VOID_ID
    ids[h // 4 : h // 2, w // 4 : w - 3] = MISSING_ID
    return CAMVID.encode(ids), ids


@pytest.mark.parametrize("kind", ["pil", "numpy", "tensor", "mask"])
def test_rgb_label_round_trips(camvid_completer, kind):
    from torchvision import tv_tensors

    rgb, ids = _camvid_rgb(36, 44, 1)
    wrap = {
        "pil": lambda a: Image.fromarray(a, mode="RGB"),
        "numpy": lambda a: a,
        "tensor": lambda a: torch.from_numpy(a).permute(2, 0, 1).clone(),
        "mask": lambda a: tv_tensors.Mask(torch.from_numpy(a).permute(2, 0, 1).clone()),
    }[kind]
    label = wrap(rgb)
    out, conf = camvid_completer.complete(_image(36, 44), label, colors="camvid", return_confidence=True)
    assert type(out) is type(label)
    chw = lambda t: t.as_subclass(torch.Tensor).permute(1, 2, 0).numpy()  # noqa: E731
    got = {"pil": np.array, "numpy": np.asarray, "tensor": chw, "mask": chw}[kind](out)
    assert got.shape == rgb.shape and got.dtype == np.uint8
    holes = ids == MISSING_ID
    assert got[~holes].tobytes() == rgb[~holes].tobytes()
    assert set(map(tuple, got[holes].tolist())) <= set(CAMVID.colors)
    assert (conf[~holes] == 1).all()
    given = chw(label) if kind in ("tensor", "mask") else np.asarray(label)
    np.testing.assert_array_equal(given, rgb)  # the input untouched


def test_rgb_with_a_missing_map_and_transform(camvid_completer):
    rgb, ids = _camvid_rgb(32, 32, 2)
    missing = np.zeros(ids.shape, bool)
    missing[:8] = True
    out = camvid_completer.complete(_image(32, 32), rgb, missing=missing, colors=CAMVID)
    assert out[~missing].tobytes() == rgb[~missing].tobytes()  # white outside the map stays white
    _, t_out = CompleteLabels(camvid_completer, colors="camvid")(_image(32, 32), Image.fromarray(rgb))
    assert t_out.mode == "RGB" and np.array(t_out)[ids != MISSING_ID].tobytes() == rgb[ids != MISSING_ID].tobytes()


def test_unknown_colours_are_reported(camvid_completer):
    rgb, _ = _camvid_rgb(16, 16, 3)
    rgb[:2, :3] = (1, 2, 3)
    rgb[5, 5] = (250, 0, 7)
    with pytest.raises(
        ValueError, match=r"labels\[0\]: 7 pixels .* 2 colours .*'camvid': \(1, 2, 3\) x 6, \(250, 0, 7\) x 1"
    ):
        camvid_completer.complete(_image(16, 16), rgb, colors="camvid")


def test_rgb_without_a_table_says_how(camvid_completer):
    rgb, _ = _camvid_rgb(8, 8, 4)
    with pytest.raises(ValueError, match=r"PIL mode 'RGB' is not a label.*colors="):
        camvid_completer.complete(_image(8, 8), Image.fromarray(rgb))
    with pytest.raises(ValueError, match=r"numpy label must be an HxW integer array.*colors="):
        camvid_completer.complete(_image(8, 8), rgb)


def test_a_table_too_small_for_the_model_is_refused(completer):
    small = ColorTable(colors=((1, 1, 1), (2, 2, 2)), name="two")
    with pytest.raises(ValueError, match=r"'two' has 2 class colours but the model has 5 classes"):
        completer.complete(_image(8, 8), np.zeros((8, 8, 3), np.uint8), colors=small)


def test_flattened_colour_label_gets_a_hint(camvid_completer):
    """A CamVid label saved with VOC's palette and converted to 'L' (the values of the report)."""
    ids = np.zeros((16, 16), np.uint8)
    for k, c in enumerate([4, 8, 1, 5, 9]):
        ids[k * 3 : k * 3 + 3] = c
    gray = _pil_p(ids).convert("RGB").convert("L")
    assert sorted(np.unique(np.array(gray)).tolist()) == [0, 15, 19, 38, 53, 57]
    with pytest.raises(ValueError, match=r"ids \[15, 19, 38, 53, 57\] outside \[0, 11\).*converted to grayscale"):
        camvid_completer.complete(_image(16, 16), gray)
    rgb, _ = _camvid_rgb(16, 16, 5)
    with pytest.raises(ValueError, match=r"gray levels of the camvid colours.*colors='camvid'"):
        camvid_completer.complete(_image(16, 16), Image.fromarray(rgb).convert("L"))


def test_builtin_tables():
    assert BUILTIN["camvid"].num_classes == 11 and BUILTIN["camvid"].void == ((0, 0, 0),)
    assert BUILTIN["cityscapes"].num_classes == 19 and BUILTIN["cityscapes"].colors[0] == (128, 64, 128)
    voc = BUILTIN["voc"]
    assert voc.num_classes == 21 and voc.void == ((224, 224, 192),) and voc.colors[15] == (192, 128, 128)
    for t in BUILTIN.values():
        assert t.missing == WHITE
        assert load_colors(t.name) is t and load_colors(t.name.upper()) is t


@st.composite
def tables_and_ids(draw):
    k = draw(st.integers(1, 12))
    colours = draw(st.lists(st.tuples(*[st.integers(0, 254)] * 3), min_size=k + 1, max_size=k + 1, unique=True))
    table = ColorTable(colors=tuple(colours[:k]), void=(colours[k],))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return table, rng.integers(MISSING_ID, k, (h, w))


@settings(deadline=None, max_examples=50)
@given(case=tables_and_ids())
def test_encode_decode_round_trip(case):
    table, ids = case
    rgb = table.encode(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (*ids.shape, 3)
    np.testing.assert_array_equal(table.decode(rgb), ids)
    np.testing.assert_array_equal(table.encode(table.decode(rgb)), rgb)


@pytest.mark.parametrize(
    "data",
    [
        {"colors": [[0, 0, 0], [10, 20, 30]], "void": [9, 9, 9], "missing": [255, 0, 255]},
        {"classes": [{"id": 1, "color": "#0a141e"}, {"id": 0, "color": [0, 0, 0], "name": "bg"}], "void": [[9, 9, 9]]},
        [{"id": 0, "color": [0, 0, 0]}, {"id": 1, "color": [10, 20, 30]}, {"id": 1, "color": [11, 21, 31]}],
    ],
)
def test_table_files_load(tmp_path, data):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    table = load_colors(str(path))
    assert table.colors == ((0, 0, 0), (10, 20, 30))
    rgb = np.array([[[0, 0, 0], [10, 20, 30]]], np.uint8)
    np.testing.assert_array_equal(table.decode(rgb), [[0, 1]])
    assert load_colors(table.to_dict()) == ColorTable.from_dict(table.to_dict(), table.name)
    if isinstance(data, list):
        np.testing.assert_array_equal(table.decode(np.array([[[11, 21, 31]]], np.uint8)), [[1]])  # an alias


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"table.json: not valid JSON"),
        ('{"colors": [[0, 0, 0], [1, 2]]}', r"table.json: colors\[1\]: expected \[r, g, b\] with integers in 0..255"),
        ('{"colors": [[0, 0, 300]]}', r"colors\[0\]: expected \[r, g, b\]"),
        ('{"colors": [[0, 0, 0]], "missing": [0, 0, 0]}', r"colour \(0, 0, 0\) is both class 0 and missing"),
        ('{"colors": [[0, 0, 0], [0, 0, 0]]}', r"colour \(0, 0, 0\) is both class 0 and class 1"),
        ('{"classes": [{"id": 0, "color": [0, 0, 0]}, {"id": 2, "color": [1, 1, 1]}]}', r"missing ids \[1\]"),
        ('{"classes": [{"id": "a", "color": [0, 0, 0]}]}', r"classes\[0\]: 'id' must be an integer"),
        ('{"colours": []}', r"unknown keys \['colours'\]"),
        ('{"colors": [[0, 0, 0]], "classes": []}', r"exactly one of 'colors'"),
        ('{"colors": [[0, 0, 0]], "void": "#12345"}', r"void.*expected '#rrggbb'"),
        ("42", r"a colour table is a JSON object"),
    ],
)
def test_bad_table_files_are_refused(tmp_path, text, message):
    path = tmp_path / "table.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_colors(path)


def test_unknown_table_name():
    with pytest.raises(ValueError, match=r"'kamvid' is neither a built-in table \['camvid', 'cityscapes', 'voc'\]"):
        load_colors("kamvid")


def test_transform_with_colors_pickles(camvid_completer):
    import pickle

    t = pickle.loads(pickle.dumps(CompleteLabels(Path("unused-folder"), colors="voc")))
    assert t.colors == BUILTIN["voc"] and t.colors.decode(np.array([[[224, 224, 192]]], np.uint8))[0, 0] == VOID_ID


# ----------------------------------------------------------------------------------------------------
# whole folders: complete_dataset and label-mae complete
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camvid_dir(tmp_path_factory, camvid_completer) -> Path:
    folder = tmp_path_factory.mktemp("camvid-model")
    camvid_completer.save_pretrained(folder)
    return folder


def _folder(root: Path, labels: dict[str, Image.Image]) -> tuple[Path, Path]:
    images, labs = root / "images", root / "labels"
    images.mkdir(parents=True)
    labs.mkdir()
    for k, (name, lab) in enumerate(labels.items()):
        Image.fromarray(_image(lab.height, lab.width, k)).save(images / f"{name}.jpg")
        lab.save(labs / f"{name}.png")
    return images, labs


def _cli(images, labels, out, model, *extra) -> int:
    from torch_label_mae.cli import main

    args = ["complete", "--images", str(images), "--labels", str(labels), "--out", str(out), "--model", str(model)]
    return main([*args, "--device", "cpu", "--quiet", *map(str, extra)])


def test_cli_completes_rgb_labels_into_rgb_pngs(tmp_path, camvid_dir):
    rgbs = {f"f{k}": _camvid_rgb(24 + 8 * k, 40, 10 + k) for k in range(3)}
    images, labels = _folder(tmp_path, {k: Image.fromarray(rgb) for k, (rgb, _) in rgbs.items()})
    out = tmp_path / "out"
    assert _cli(images, labels, out, camvid_dir, "--colors", "camvid", "--confidence-dir", tmp_path / "conf") == 0
    for name, (rgb, ids) in rgbs.items():
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "RGB" and im.format == "PNG"
            got = np.array(im)
        holes = ids == MISSING_ID
        assert got[~holes].tobytes() == rgb[~holes].tobytes()
        assert set(map(tuple, got[holes].tolist())) <= set(CAMVID.colors)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert _cli(images, labels, out, camvid_dir, "--colors", "camvid", "--confidence-dir", tmp_path / "conf") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamp  # resume: all valid, skipped
    report = json.loads((out / "completion_report.json").read_text())
    assert report["skipped"] == 3 and report["done"] == 0


def test_rgb_folder_failures_name_the_colours(tmp_path, camvid_dir):
    from torch_label_mae.complete_dataset import complete_dataset

    good, _ = _camvid_rgb(16, 24, 20)
    bad = good.copy()
    bad[:3, :3] = (9, 9, 9)
    images, labels = _folder(tmp_path, {"good": Image.fromarray(good), "bad": Image.fromarray(bad)})
    report = complete_dataset(images, labels, tmp_path / "out", model=camvid_dir, colors="camvid", progress=False)
    assert report.done == 1 and [f for f, _ in report.failed] == ["bad.png"]
    assert "unknown colours: 9 pixels have 1 colours" in report.failed[0][1] and "(9, 9, 9) x 9" in report.failed[0][1]
    plain = complete_dataset(images, labels, tmp_path / "out2", model=camvid_dir, progress=False)
    assert plain.done == 0 and all("colors=" in r for _, r in plain.failed)


def test_dataset_keeps_void_and_resumes(tmp_path, camvid_dir):
    from torch_label_mae.complete_dataset import complete_dataset, output_is_valid

    raws = {f"v{k}": np.where(_voc_label(24, 32, 30 + k) == 255, 255, _voc_label(24, 32, 30 + k)) for k in range(2)}
    images, labels = _folder(tmp_path, {k: _pil_p(v) for k, v in raws.items()})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="both 255"):
        complete_dataset(images, labels, out, model=camvid_dir, void_index=255, progress=False)
    with pytest.raises(ValueError, match=r"void_index must be an integer in 0..255"):
        complete_dataset(images, labels, out, model=camvid_dir, void_index=300, missing_index=254, progress=False)
    report = complete_dataset(images, labels, out, model=camvid_dir, void_index=255, missing_index=254, progress=False)
    assert report.done == 2 and not report.failed
    for name, raw in raws.items():
        got = np.array(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(got[raw != 254], raw[raw != 254])
        assert (raw == 255).any() and (got[raw == 254] < 11).all()
        assert output_is_valid(out / f"{name}.png", raw.astype(np.int64), 11, 254, void_index=255)
        assert not output_is_valid(out / f"{name}.png", raw.astype(np.int64), 11, 254)  # 255 is no class
    again = complete_dataset(images, labels, out, model=camvid_dir, void_index=255, missing_index=254, progress=False)
    assert again.skipped == 2 and again.done == 0
    # without void_index, the 255 borders are out-of-range ids: a per-file failure, no silent fill
    strict = complete_dataset(images, labels, tmp_path / "o2", model=camvid_dir, missing_index=254, progress=False)
    assert strict.done == 0 and all("ids out of range" in r for _, r in strict.failed)


def test_cli_void_index_and_bad_colors(tmp_path, camvid_dir, capsys):
    raw = _voc_label(16, 16, 40)
    images, labels = _folder(tmp_path, {"a": _pil_p(raw)})
    assert _cli(images, labels, tmp_path / "o", camvid_dir, "--void-index", "255", "--missing-index", "254") == 0
    got = np.array(Image.open(tmp_path / "o" / "a.png"))
    np.testing.assert_array_equal(got[raw != 254], raw[raw != 254])
    assert _cli(images, labels, tmp_path / "o2", camvid_dir, "--void-index", "255") == 2
    err = capsys.readouterr().err
    assert "--void-index and --missing-index are both 255" in err and "--missing-index 254" in err
    (tmp_path / "t.json").write_text('{"colors": [[1, 2]]}')
    assert _cli(images, labels, tmp_path / "o3", camvid_dir, "--colors", tmp_path / "t.json") == 2
    assert "t.json: colors[0]: expected [r, g, b]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(images, labels, tmp_path / "o4", camvid_dir, "--void-index", "256")
    assert "must be in 0..255" in capsys.readouterr().err


def test_dataset_flattened_labels_get_the_hint(tmp_path, camvid_dir):
    from torch_label_mae.complete_dataset import complete_dataset

    rgb, _ = _camvid_rgb(16, 24, 50)
    images, labels = _folder(tmp_path, {"g": Image.fromarray(rgb).convert("L")})
    report = complete_dataset(images, labels, tmp_path / "out", model=camvid_dir, progress=False)
    assert "converted to grayscale" in report.failed[0][1] and "colors='camvid'" in report.failed[0][1]


def test_opaque_rgba_labels_like_cityscapes_colour_pngs(tmp_path):
    """Cityscapes' ``*_color.png`` are opaque RGBA: read, completed and written back as RGBA."""
    from torch_label_mae.complete_dataset import complete_dataset

    torch.manual_seed(0)
    model = LabelCompleter(LMAEConfig.tiny(**TINY_MODEL, num_classes=19)).eval()
    city = BUILTIN["cityscapes"]
    ids = np.kron(np.random.default_rng(0).integers(0, 19, (3, 4)), np.ones((8, 8), np.int64))
    ids[:4] = VOID_ID
    ids[8:16, 8:24] = MISSING_ID
    rgba = Image.fromarray(city.encode(ids)).convert("RGBA")
    out = model.complete(_image(24, 32), rgba, colors="cityscapes")
    assert out.mode == "RGBA" and (np.array(out)[..., 3] == 255).all()
    keep = ids != MISSING_ID
    assert np.array(out)[keep].tobytes() == np.array(rgba)[keep].tobytes()
    images, labels = _folder(tmp_path, {"aachen_000000_000019_gtFine_color": rgba})
    model.save_pretrained(tmp_path / "model")
    report = complete_dataset(images, labels, tmp_path / "out", model=tmp_path / "model", colors="cityscapes")
    assert report.done == 1, report.failed
    with Image.open(tmp_path / "out" / "aachen_000000_000019_gtFine_color.png") as im:
        assert im.mode == "RGBA" and np.array(im)[keep].tobytes() == np.array(rgba)[keep].tobytes()
    again = complete_dataset(images, labels, tmp_path / "out", model=tmp_path / "model", colors="cityscapes")
    assert again.skipped == 1
    seen = np.array(rgba)
    seen[0, 0, 3] = 0
    with pytest.raises(ValueError, match=r"labels\[0\]: 1 pixels of this RGBA colour label are not opaque"):
        model.complete(_image(24, 32), Image.fromarray(seen, mode="RGBA"), colors="cityscapes")
