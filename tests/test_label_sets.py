"""Class-agnostic names and dataset presets (#17 items 4 and 6): ``any-m0.5`` takes labels of any class
list; ``voc-m0.5``, ``cityscapes-m0.5`` and ``ade20k-m0.5`` are its files with a label set (class names,
colours, VOC-style 255 void and 254 holes). Offline; behaviour only, no figure of the model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL, VOC_IDS, make_voc_tree, voc_label, voc_segmentation

from torch_label_mae import CompleteLabels, LabelCompleter, LMAEConfig, hub, inputs
from torch_label_mae.cli import main
from torch_label_mae.colors import BUILTIN
from torch_label_mae.complete_dataset import complete_dataset
from torch_label_mae.label_sets import LABEL_SETS, LabelSet, load_label_set, resolve_indices

PRESETS = ["voc-m0.5", "cityscapes-m0.5", "ade20k-m0.5"]


@pytest.fixture(scope="module", autouse=True)
def any_files(tmp_path_factory):
    """The bundled ``any-m0.5`` folder; until its weights ship, an untrained stand-in read as bundled."""
    found = hub.bundled_dir(hub.AGNOSTIC_MODEL)
    if found is not None:
        yield found
        return
    folder = tmp_path_factory.mktemp("bundled") / hub.AGNOSTIC_MODEL
    torch.manual_seed(0)
    LabelCompleter(LMAEConfig.tiny(**dict(TINY_MODEL, num_classes=32, class_agnostic=True))).save_pretrained(folder)
    real = hub.bundled_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub, "bundled_dir", lambda name: folder if name == hub.AGNOSTIC_MODEL else real(name))
        yield folder


@pytest.fixture
def no_network(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a registered class-agnostic name went to the Hub")

    monkeypatch.setattr(hub, "download", boom)


@pytest.fixture(scope="module")
def voc() -> LabelCompleter:
    return LabelCompleter.from_pretrained("voc-m0.5", device="cpu", precision="float32")


@pytest.fixture(scope="module")
def any_model() -> LabelCompleter:
    return LabelCompleter.from_pretrained("any-m0.5", device="cpu", precision="float32")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _visible(label: np.ndarray, *unknown: int) -> set[int]:
    keep = ~np.isin(label, unknown)
    return set(np.unique(label[keep]).tolist())


# ----------------------------------------------------------------------------------------------------
# label sets
# ----------------------------------------------------------------------------------------------------
def test_builtin_label_sets():
    voc, city, ade = LABEL_SETS["voc"], LABEL_SETS["cityscapes"], LABEL_SETS["ade20k"]
    assert (voc.num_classes, city.num_classes, ade.num_classes) == (21, 19, 150)
    assert voc.class_names[0] == "background" and voc.class_names[15] == "person" and voc.class_names[-1] == "tvmonitor"
    assert city.class_names[:3] == ("road", "sidewalk", "building") and city.class_names[-1] == "bicycle"
    assert ade.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ade.class_names[12] == "person" and ade.class_names[-2:] == ("clock", "flag")
    assert len(set(ade.class_names)) == 150
    for s in LABEL_SETS.values():
        assert (s.void_index, s.missing_index) == (255, 254)
        assert s.colors is None or BUILTIN[s.colors].num_classes == s.num_classes
    assert (voc.colors, city.colors, ade.colors) == ("voc", "cityscapes", None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_names=()), "non-empty"),
        (dict(void_index=1), r"void_index must be an integer in 2..255"),
        (dict(missing_index=256), r"missing_index must be an integer in 2..255"),
        (dict(void_index=254, missing_index=254), "both 254"),
        (dict(class_names=("c",) * 300), r"300 classes; a label set has at most 254 \(its missing index and void"),
        (dict(class_names=("c",) * 256, void_index=None), r"256 classes; a label set has at most 255 \(its missing"),
    ],
)
def test_a_label_set_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelSet(**{"name": "mine", "class_names": ("a", "b"), **kwargs})


def test_load_label_set():
    assert load_label_set(None) is None and load_label_set("VOC") is LABEL_SETS["voc"]
    mine = LabelSet("mine", ("a", "b"), void_index=None, missing_index=200)
    assert load_label_set(mine) is mine
    with pytest.raises(ValueError, match="unknown label set 'pascal'"):
        load_label_set("pascal")
    with pytest.raises(TypeError, match="label_set must be"):
        load_label_set(21)


@given(
    st.sampled_from([None, *LABEL_SETS.values()]),
    st.one_of(st.none(), st.integers(0, 255)),
    st.one_of(st.none(), st.integers(0, 255)),
)
def test_indices_given_win_then_the_label_set_then_the_defaults(label_set, missing_index, void_index):
    missing, void = resolve_indices(label_set, missing_index, void_index)
    if missing_index is not None:
        assert missing == missing_index
    else:
        assert missing == (label_set.missing_index if label_set is not None else 255)
    if void_index is not None or label_set is None:
        assert void == void_index
    else:  # the set's void, unless the caller marks holes with it
        assert void == (None if missing_index == label_set.void_index else label_set.void_index)
        assert void != missing


# ----------------------------------------------------------------------------------------------------
# registered names
# ----------------------------------------------------------------------------------------------------
def test_registered_class_agnostic_names(any_files, no_network):
    assert inputs.AGNOSTIC_MODEL == hub.AGNOSTIC_MODEL == "any-m0.5"
    reg = hub.list_pretrained()
    assert reg["any-m0.5"].class_agnostic and reg["any-m0.5"].bundled and reg["any-m0.5"].label_set is None
    assert reg["any-m0.5"].family == "any"
    assert not reg["camvid-m0.5"].class_agnostic and reg["camvid-m0.5"].label_set is None
    for name in PRESETS:
        e = reg[name]
        assert e.class_agnostic and e.weights == "any-m0.5" and e.files == "any-m0.5" and e.offline
        assert e.label_set in LABEL_SETS and name == f"{e.label_set}-m0.5" == f"{e.family}-m0.5"
        assert hub.resolve(name) == hub.resolve("any-m0.5") == any_files  # the bundled files, no download


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_loads_the_agnostic_weights_with_its_label_set(name, any_model, no_network):
    c = LabelCompleter.from_pretrained(name, device="cpu")
    label_set = LABEL_SETS[hub.REGISTRY[name].label_set]
    assert c.label_set is label_set and c.pretrained_name == name and c.num_ids == label_set.num_classes
    assert c.class_names == list(label_set.class_names)
    assert c.config == any_model.config and c.config.class_agnostic
    want = any_model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in c.state_dict().items())
    family = LabelCompleter.from_pretrained(hub.REGISTRY[name].family, device="cpu")  # "voc": every ratio
    assert family.label_set is label_set


def test_label_set_by_hand(any_model, tmp_path):
    c = LabelCompleter.from_pretrained("any-m0.5", device="cpu")
    assert c.label_set is None and c.class_names is None and c.num_ids is None
    c.label_set = "cityscapes"
    assert c.label_set is LABEL_SETS["cityscapes"] and c.class_names[0] == "road"
    c.label_set = LABEL_SETS["voc"]
    assert c.conventions() == (254, 255, BUILTIN["voc"])
    c.label_set = None
    assert c.conventions() == (255, None, None)
    camvid = LabelCompleter.from_pretrained("camvid-m0.5", device="cpu")
    assert camvid.label_set is None and camvid.class_names == camvid.config.class_names
    with pytest.raises(ValueError, match="class-agnostic models"):
        camvid.label_set = "voc"


label_sets_st = st.builds(
    lambda n, colors, void, name: LabelSet(name, [f"c{i}" for i in range(n)], colors, void, 254),
    st.integers(1, 200), st.sampled_from([None, "voc", "camvid"]), st.sampled_from([None, 255]), st.text(max_size=8),
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(label_set=label_sets_st)
def test_a_label_set_survives_its_json(label_set):
    import json

    assert LabelSet.from_dict(json.loads(json.dumps(label_set.to_dict()))) == label_set


@pytest.mark.parametrize(
    "data",
    [[], {"name": "x"}, {"name": "x", "class_names": ["a"], "extra": 1}, {"name": 3, "class_names": ["a"]},
     {"name": "x", "class_names": "ab"}, {"name": "x", "class_names": ["a"], "missing_index": 0},
     {"name": "x", "class_names": ["a"], "colors": "/tmp/some.json"},
     {"name": "x", "class_names": ["a"], "colors": "no"}],
)  # fmt: skip
def test_a_label_set_from_json_is_checked(data):
    with pytest.raises(ValueError):
        LabelSet.from_dict(data)


def test_a_saved_preset_reloads_with_its_label_set(voc, tmp_path):
    """save_pretrained writes label_set.json beside the weights; the folder loads as the preset did (VOC's
    254 holes filled, its 255 borders kept), and a completer saved without one removes a stale file."""
    voc.save_pretrained(tmp_path / "myvoc")
    again = LabelCompleter.from_pretrained(tmp_path / "myvoc", device="cpu", precision="float32")
    assert again.label_set == voc.label_set and again.conventions() == voc.conventions()
    label = voc_label(40, 48, 3, 21, 254)
    assert np.array_equal(again.complete(_image(40, 48), label), voc.complete(_image(40, 48), label))
    plain = LabelCompleter.from_pretrained("any-m0.5", device="cpu")
    plain.save_pretrained(tmp_path / "myvoc")
    assert not (tmp_path / "myvoc" / hub.LABEL_SET_NAME).exists()
    assert LabelCompleter.from_pretrained(tmp_path / "myvoc", device="cpu").label_set is None


@pytest.mark.parametrize(
    "text", ["{", "[1]", '{"name": "x", "class_names": []}', '{"name": "x", "class_names": ["a"]}']
)
def test_a_bad_label_set_file_is_refused_naming_it(voc, tmp_path, text):
    voc.save_pretrained(tmp_path / "m")
    if text.endswith('["a"]}'):  # a valid set, beside a class-specific model
        LabelCompleter.from_pretrained("camvid-m0.5", device="cpu").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / hub.LABEL_SET_NAME).write_text(text)
    with pytest.raises(hub.CorruptWeightsError, match=r"label_set\.json"):
        LabelCompleter.from_pretrained(tmp_path / "m", device="cpu")


def test_list_marks_class_agnostic_names_and_label_sets(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "classes" in lines["name"]
    assert "class-specific" in lines["camvid-m0.5"] and "class-agnostic" not in lines["camvid-m0.5"]
    assert "class-agnostic" in lines["any-m0.5"] and "label set" not in lines["any-m0.5"]
    for name in PRESETS:
        e = hub.REGISTRY[name]
        assert re.search(rf"class-agnostic, label set {e.label_set}\b", lines[name]), lines[name]
        assert "any-m0.5's files" in lines[name] and "loads offline" in lines[name]


# ----------------------------------------------------------------------------------------------------
# completing with presets
# ----------------------------------------------------------------------------------------------------
def _check_voc_completion(out: np.ndarray, raw: np.ndarray) -> None:
    """Borders (255) and known pixels unchanged; every 254 filled with an id the visible label carries."""
    holes = raw == 254
    assert holes.any() and (raw == 255).any()
    np.testing.assert_array_equal(out[~holes], raw[~holes])
    assert set(np.unique(out[holes]).tolist()) <= _visible(raw, 254, 255)


@settings(max_examples=8)
@given(st.integers(0, 2**16), st.integers(24, 60), st.integers(24, 60))
def test_voc_preset_fills_254_keeps_borders_and_uses_visible_ids(voc, seed, h, w):
    raw = voc_label(h, w, seed, 21, hole_value=254)
    _check_voc_completion(np.asarray(voc.complete(_image(h, w, seed), raw)), raw)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A VOC tree (``synth.make_voc_tree``): 255 borders, holes marked 254."""
    return make_voc_tree(
        tmp_path_factory.mktemp("voc"), lambda i, h, w: _image(h, w, i), lambda i, h, w: voc_label(h, w, i, 21, 254)
    )


def test_voc_segmentation_with_the_voc_preset(voc_root, no_network):
    transform = CompleteLabels("voc-m0.5", device="cpu")
    assert "missing_index=254 (the completer's), void_index=255 (the completer's)" in repr(transform)
    raw_ds, ds = voc_segmentation(voc_root), voc_segmentation(voc_root, transforms=transform)
    for i in range(len(ds)):
        (_, raw_target), (_, target) = raw_ds[i], ds[i]
        assert isinstance(target, Image.Image) and target.mode == "P"
        assert target.getpalette() == raw_target.getpalette()
        _check_voc_completion(np.array(target), np.array(raw_target))


def test_the_agnostic_model_fills_vocs_255_and_keeps_its_ids(any_model):
    raw = voc_label(40, 48, 3, 21)  # borders and hole 255: any-m0.5's holes by default
    raw[:7, :7] = 15  # an id a CamVid model does not know
    _, out = CompleteLabels(any_model)(_image(40, 48, 3), raw)
    known = raw != 255
    np.testing.assert_array_equal(out[known], raw[known])
    assert set(np.unique(out[~known]).tolist()) <= _visible(raw, 255)


def test_explicit_values_win_over_the_preset(voc):
    raw = voc_label(32, 40, 5, 21)  # borders and hole 255
    out = voc.complete(_image(32, 40, 5), raw, missing_index=255)  # the borders are holes too now: filled
    np.testing.assert_array_equal(out[raw != 255], raw[raw != 255])
    assert set(np.unique(out[raw == 255]).tolist()) <= _visible(raw, 255)
    with pytest.raises(ValueError, match=r"ids \[254\] outside \[0, 21\) that are not the missing index 255;"):
        voc.complete(_image(32, 40, 5), voc_label(32, 40, 5, 21, hole_value=254), missing_index=255)
    with pytest.raises(ValueError, match=r"void_index must be an integer"):
        CompleteLabels("voc-m0.5", void_index=True)
    with pytest.raises(ValueError, match="void_index and missing_index are both 7"):
        CompleteLabels("voc-m0.5", missing_index=7, void_index=7)
    assert CompleteLabels("voc-m0.5", void_index=255).missing_index is None  # 254 from the preset
    with pytest.raises(ValueError, match="void_index and missing_index are both 255"):  # any-m0.5: holes 255
        CompleteLabels("any-m0.5", void_index=255)


def test_voc_colour_labels_are_read_through_the_presets_table(voc):
    table = BUILTIN["voc"]
    raw = voc_label(32, 40, 7, 21, hole_value=254)
    rgb = np.zeros((*raw.shape, 3), np.uint8)
    for v in np.unique(raw):
        rgb[raw == v] = table.missing if v == 254 else table.void[0] if v == 255 else table.colors[v]
    out = np.asarray(voc.complete(_image(32, 40, 7), Image.fromarray(rgb)))
    holes = raw == 254
    np.testing.assert_array_equal(out[~holes], rgb[~holes])
    colors = {tuple(c) for c in out[holes].reshape(-1, 3).tolist()}
    assert colors <= {table.colors[i] for i in _visible(raw, 254, 255)}


def _ade_label(h: int, w: int, seed: int) -> np.ndarray:
    """ADE20K-style reduced ids (up to 149) in blocks, 255 for the original "other", a 254 hole."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice([0, 12, 76, 120, 148, 149, 255], (-(-h // 8), -(-w // 8)))
    blocks[0, 0] = 149
    lab = np.kron(blocks, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
    lab[h // 4 : h // 2, w // 3 : w - 2] = 254
    return lab


@pytest.mark.parametrize("name", ["any-m0.5", "ade20k-m0.5"])
def test_ade20k_labels_complete_with_the_agnostic_model_and_its_preset(name):
    c = LabelCompleter.from_pretrained(name, device="cpu", precision="float32")
    raw = _ade_label(40, 56, 1)
    kwargs = dict(missing_index=254, void_index=255) if name == "any-m0.5" else {}
    out = c.complete(_image(40, 56, 1), raw, **kwargs)
    holes = raw == 254
    np.testing.assert_array_equal(out[~holes], raw[~holes])
    assert set(np.unique(out[holes]).tolist()) <= _visible(raw, 254, 255)


# ----------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------
def test_voc_preset_refuses_ids_outside_its_21_classes(voc):
    raw = voc_label(24, 32, 2, 21, hole_value=254)
    raw[0, :3] = 30
    with pytest.raises(ValueError) as e:
        voc.complete(_image(24, 32), raw)
    msg = str(e.value)
    assert msg.startswith("labels[0]: 3 pixels have ids [30]")
    assert "voc-m0.5" in msg and "'voc'" in msg and "21 classes" in msg


def test_camvid_refuses_voc_ids_and_points_to_the_agnostic_model():
    camvid = LabelCompleter.from_pretrained("camvid-m0.5", device="cpu")
    raw = np.zeros((24, 32), np.uint8)
    raw[:, 16:] = 15
    raw[8:12] = 255
    with pytest.raises(ValueError) as e:
        camvid.complete(_image(24, 32), raw)
    msg = str(e.value)
    assert msg.startswith("labels[0]:") and "[15]" in msg and "11 classes" in msg
    assert "camvid-m0.5" in msg and "from_pretrained('any-m0.5')" in msg


# ----------------------------------------------------------------------------------------------------
# label-mae complete
# ----------------------------------------------------------------------------------------------------
def test_cli_complete_uses_the_presets_missing_and_void_index(voc_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["complete", "--voc", str(voc_root), "--out", str(out), "--model", "voc-m0.5", "--quiet"]) == 0
    assert "3 completed" in capsys.readouterr().out
    labels = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    for name in VOC_IDS:
        _check_voc_completion(np.array(Image.open(out / f"{name}.png")), np.array(Image.open(labels / f"{name}.png")))
    assert main(["complete", "--voc", str(voc_root), "--out", str(out), "--model", "voc-m0.5", "--quiet"]) == 0
    assert "0 completed, 3 already done" in capsys.readouterr().out  # the outputs are valid under its conventions


def test_complete_dataset_takes_ade20k_ids_with_the_preset(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    raws = {f"ade_{i}": _ade_label(40, 48, i) for i in range(2)}
    for key, raw in raws.items():
        Image.fromarray(_image(40, 48, 1)).save(images / f"{key}.jpg")
        Image.fromarray(raw, mode="L").save(labels / f"{key}.png")
    report = complete_dataset(images, labels, tmp_path / "out", model="ade20k-m0.5", device="cpu", progress=False)
    assert report.done == 2 and not report.failed
    for key, raw in raws.items():
        out, holes = np.array(Image.open(tmp_path / "out" / f"{key}.png")), raw == 254
        np.testing.assert_array_equal(out[~holes], raw[~holes])
        assert set(np.unique(out[holes]).tolist()) <= _visible(raw, 254, 255)
