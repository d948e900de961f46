"""``CompleteLabels`` as a torchvision joint transform: lazy loading, pickling, ``transforms.v2``,
``VOCSegmentation`` (plain and wrapped for v2) and a ``DataLoader`` worker."""

from __future__ import annotations

import pickle
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synth import TINY_MODEL, VOC_IDS, make_voc_tree, voc_label, voc_segmentation
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from torch_label_mae import CompleteLabels, LabelCompleter, LMAEConfig, hub
from torch_label_mae.io import default_palette

N = 5
TINY = dict(TINY_MODEL, num_classes=N, background_index=0)
VOC_PALETTE = default_palette()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("completer")
    LabelCompleter(LMAEConfig.tiny(**TINY)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def completer(folder) -> LabelCompleter:
    return LabelCompleter.from_pretrained(folder, device="cpu")


def _label(h: int, w: int, seed: int) -> np.ndarray:
    """Class ids in blocks, a VOC-style 255 boundary and a rectangular 255 hole."""
    return voc_label(h, w, seed, N)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A VOC tree (``synth.make_voc_tree``): random images, labels with 255 holes."""
    rng = np.random.default_rng(0)
    return make_voc_tree(
        tmp_path_factory.mktemp("voc"),
        lambda i, h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        lambda i, h, w: _label(h, w, i),
    )


def _check_completed(out: np.ndarray, raw: np.ndarray) -> None:
    known = raw != 255
    np.testing.assert_array_equal(out[known], raw[known])
    assert (out < N).all()  # every 255 (holes and VOC's boundary) was filled


# ----------------------------------------------------------------------------------------------------
# the transform itself
# ----------------------------------------------------------------------------------------------------
def test_completes_the_target_and_passes_the_image_through(completer):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))
    raw = _label(37, 45, 1)
    target = Image.fromarray(raw, mode="P")
    target.putpalette(VOC_PALETTE)
    t = CompleteLabels(completer)
    out_image, out = t(image, target)
    assert out_image is image
    assert isinstance(out, Image.Image) and out.mode == "P" and out.getpalette() == target.getpalette()
    _check_completed(np.array(out), raw)
    np.testing.assert_array_equal(np.array(out), np.array(completer.complete(image, target)))
    np.testing.assert_array_equal(np.array(target), raw)  # the input is untouched
    assert t(image) == (image, None) and t(image, None) == (image, None)
    with pytest.raises(TypeError, match="dict"):
        t(image, {"masks": target})
    assert repr(t) == "CompleteLabels(completer='LabelCompleter', missing_index=255 (the completer's))"
    assert "missing_index=254, void_index=255" in repr(CompleteLabels(completer, 254, void_index=255))
    preset = "completer='voc-m0.5', missing_index=254 (the completer's), void_index=255 (the completer's)"
    assert repr(CompleteLabels("voc-m0.5")) == f"CompleteLabels({preset})"  # not loaded, nothing printed of it
    agnostic = CompleteLabels("any-m0.5", device="cpu")
    agnostic.completer.label_set = "voc"  # loaded, then given VOC's conventions: those a call uses now
    assert "missing_index=254 (the completer's), void_index=255 (the completer's)" in repr(agnostic)


def test_a_warning_inside_compose_points_at_the_caller():
    """Not at torchvision's ``Compose`` nor inside the library: at the line that called the transform."""
    t = v2.Compose([CompleteLabels("any-m0.5", device="cpu")])
    image, target = np.zeros((9, 11, 3), np.uint8), np.full((9, 11), 255, np.uint8)
    with pytest.warns(UserWarning, match="has no known pixel") as caught:
        t(image, target)
    assert [w.filename for w in caught] == [__file__]


def test_other_missing_index(completer):
    target = np.full((12, 13), 3, np.int64)
    target[2:6, 2:9] = 0
    _, out = CompleteLabels(completer, missing_index=0)(np.zeros((12, 13, 3), np.uint8), target)
    assert (out[target != 0] == 3).all() and (out < N).all()


def test_a_device_given_with_a_completer_is_used_not_ignored(completer):
    completer = deepcopy(completer)  # moved here: the module's fixture stays where it is
    with pytest.raises((ValueError, RuntimeError), match="foo"):
        CompleteLabels(completer, device="foo")
    assert CompleteLabels(completer, device="cpu").completer.device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            CompleteLabels(completer, device="cuda")


def test_refuses_what_is_not_a_completer():
    with pytest.raises(TypeError, match="completer must be"):
        CompleteLabels(42)


def test_loads_lazily_pickles_without_weights_until_loaded_and_as_changed_after(folder, completer):
    weights = (folder / hub.WEIGHTS_NAME).stat().st_size
    t = CompleteLabels(folder, device="cpu")  # a Path works as well as a str
    assert t._completer is None
    before = pickle.dumps(t)
    assert len(before) < weights / 10

    image, target = np.zeros((20, 21, 3), np.uint8), _label(20, 21, 2)
    _, out = t(image, target)
    assert isinstance(t.completer, LabelCompleter) and not t.completer.training
    np.testing.assert_array_equal(out, completer.complete(image, target))

    copy = pickle.loads(before)
    assert copy._completer is None and "_completer" not in copy._modules
    with torch.no_grad():  # a change made to the loaded completer: a copy (a spawned worker's) keeps it
        t.completer.model.head.bias.add_(torch.linspace(-3, 3, t.completer.model.head.bias.numel()))
        t.completer.precision = "float32"
    changed = t(image, target)[1]
    assert (changed != out).any()  # the change shows
    for copy in (pickle.loads(pickle.dumps(t)), deepcopy(t)):
        assert copy.completer.precision == "float32"
        np.testing.assert_array_equal(copy(image, target)[1], changed)
    assert t._completer is not None  # pickling did not unload the original


def test_nothing_is_loaded_before_the_first_call(tmp_path):
    t = CompleteLabels(str(tmp_path / "no-such-model"))  # no error yet: nothing is resolved
    pickle.loads(pickle.dumps(t))
    with pytest.raises(hub.HubError):
        t(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))


def test_instance_pickles_with_its_weights(completer):
    t = CompleteLabels(completer)
    copy = pickle.loads(pickle.dumps(t))
    image, target = np.zeros((9, 10, 3), np.uint8), _label(9, 10, 3)
    np.testing.assert_array_equal(copy(image, target)[1], t(image, target)[1])


def test_in_a_v2_compose(completer):
    rng = np.random.default_rng(4)
    raw = _label(30, 34, 4)
    image = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 30, 34), dtype=np.uint8)))
    mask = tv_tensors.Mask(torch.from_numpy(raw))
    completed = completer.complete(image, mask)

    flip_after = v2.Compose([CompleteLabels(completer), v2.RandomHorizontalFlip(p=1.0)])
    out_image, out_mask = flip_after(image, mask)
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out_mask, completed.flip(-1))
    _, direct = CompleteLabels(completer)(image, mask)
    assert not direct.is_inference()
    direct[0, 0] = 1  # later transforms / user code may edit the target in place

    flip_first = v2.Compose(
        [
            v2.RandomHorizontalFlip(p=1.0),
            CompleteLabels(completer),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ]
    )
    out_image, out_mask = flip_first(image, mask)
    assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.uint8
    assert out_image.dtype == torch.float32
    _check_completed(out_mask.numpy(), raw[:, ::-1])
    assert torch.equal(mask, torch.from_numpy(raw))  # inputs untouched


def test_a_dict_sample_in_a_v2_compose(completer):
    rng = np.random.default_rng(5)
    raw = _label(30, 34, 4)
    image = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 30, 34), dtype=np.uint8)))
    sample = {"image": image, "mask": tv_tensors.Mask(torch.from_numpy(raw)), "id": "x"}
    out = v2.Compose([CompleteLabels(completer), v2.RandomHorizontalFlip(p=1.0)])(sample)
    assert set(out) == {"image", "mask", "id"} and out["id"] == "x"
    assert isinstance(out["mask"], tv_tensors.Mask) and torch.equal(out["image"], image.flip(-1))
    assert torch.equal(out["mask"], completer.complete(image, sample["mask"]).flip(-1))
    pair = CompleteLabels(completer)((image, sample["mask"]))  # one (image, target) tuple
    assert isinstance(pair, tuple) and torch.equal(pair[1], completer.complete(image, sample["mask"]))
    depth = {"depth": torch.rand(30, 34), "image": image, "mask": sample["mask"]}  # the image, not the depth
    assert torch.equal(CompleteLabels(completer)(depth)["mask"], completer.complete(image, sample["mask"]))
    with pytest.raises(TypeError, match="exactly one tv_tensors.Mask"):
        CompleteLabels(completer)({"image": image, "mask": torch.from_numpy(raw)})


# ----------------------------------------------------------------------------------------------------
# torchvision datasets
# ----------------------------------------------------------------------------------------------------
def test_voc_segmentation(voc_root, completer):
    raw_ds, ds = voc_segmentation(voc_root), voc_segmentation(voc_root, transforms=CompleteLabels(completer))
    assert len(ds) == len(VOC_IDS)
    for i in range(len(ds)):
        (raw_image, raw_target), (image, target) = raw_ds[i], ds[i]
        raw = np.array(raw_target)
        assert (raw == 255).any()  # holes and boundaries to fill
        assert isinstance(target, Image.Image) and target.mode == "P" and target.size == raw_target.size
        assert target.getpalette() == raw_target.getpalette()
        np.testing.assert_array_equal(np.array(image), np.array(raw_image))
        _check_completed(np.array(target), raw)


def test_voc_wrapped_for_transforms_v2(voc_root, folder):
    # The transform loads on the default device: CUDA when there is one, where precision "auto" means
    # bfloat16 autocast, which flips pixels whose top-2 logits are within bfloat16's resolution (3 of
    # 1,665 on an H200 against a float32 completer on the CPU). Both paths run in float32 on that same
    # device here, so they must agree exactly.
    transform = CompleteLabels(folder)
    transform.completer.precision = "float32"
    reference = transform.completer
    ds = datasets.wrap_dataset_for_transforms_v2(
        voc_segmentation(voc_root, transforms=v2.Compose([transform, v2.RandomHorizontalFlip(p=1.0), v2.ToImage()]))
    )
    raw_ds = voc_segmentation(voc_root)
    for i in range(len(ds)):
        image, target = ds[i]
        raw_image, raw_target = raw_ds[i]
        assert isinstance(image, tv_tensors.Image) and isinstance(target, tv_tensors.Mask)
        assert tuple(target.shape) == (1, raw_target.size[1], raw_target.size[0])
        want = np.array(reference.complete(raw_image, raw_target))[:, ::-1]
        np.testing.assert_array_equal(target[0].numpy(), want)
        _check_completed(target[0].numpy(), np.array(raw_target)[:, ::-1])


def test_in_a_dataloader_worker(voc_root, folder, completer):
    transform = CompleteLabels(str(folder), device="cpu")
    ds = datasets.wrap_dataset_for_transforms_v2(voc_segmentation(voc_root, transforms=transform))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=list)
    items = [item for batch in loader for item in batch]
    assert len(items) == len(VOC_IDS)
    assert transform._completer is None  # the worker loaded its own copy; this process never did
    raw_ds = voc_segmentation(voc_root)
    for (image, target), (raw_image, raw_target) in zip(items, (raw_ds[i] for i in range(len(raw_ds))), strict=True):
        assert isinstance(image, Image.Image) and isinstance(target, tv_tensors.Mask)
        want = np.array(completer.complete(raw_image, raw_target))
        np.testing.assert_array_equal(target[0].numpy(), want)
