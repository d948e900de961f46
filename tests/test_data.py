"""Dataset folders, degradation and the evaluation protocols."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from synth import make_dataset

from torch_label_mae.data import FolderDataset, degrade, degrade_folder, pair_files, read_label, seed_for
from torch_label_mae.evaluate import degraded_samples, evaluate


@given(
    gh=st.integers(1, 8),
    gw=st.integers(1, 8),
    p=st.sampled_from([2, 4, 8]),
    ratio=st.floats(0, 1),
    seed=st.integers(0, 2**31),
)
def test_degrade_patches_hides_exactly_round_ratio_l_and_is_seeded(gh, gw, p, ratio, seed):
    label = torch.randint(0, 5, (gh * p, gw * p))
    before = label.clone()
    broken, missing = degrade(label, ratio, p, seed=seed)
    assert torch.equal(label, before)  # input untouched
    per_patch = missing.view(gh, p, gw, p).any(3).any(1)
    assert int(per_patch.sum()) == round(ratio * gh * gw)
    assert missing.view(gh, p, gw, p).all(3).all(1).eq(per_patch).all()  # whole patches
    assert torch.equal(broken[~missing], label[~missing]) and (broken[missing] == 255).all()
    again = degrade(label, ratio, p, seed=seed)
    assert torch.equal(again[1], missing)  # same seed, same holes


@given(h=st.integers(5, 70), w=st.integers(5, 70), block=st.sampled_from([4, 16, 32]), key=st.text(min_size=1))
def test_degrade_blocks_any_size_seeded_by_image_id(h, w, block, key):
    label = torch.zeros(h, w, dtype=torch.int64)
    _, m1 = degrade(label, 0.5, block, seed=key, mode="blocks")
    _, m2 = degrade(label, 0.5, block, seed=key, mode="blocks")
    assert m1.shape == (h, w) and torch.equal(m1, m2)
    assert seed_for(key) == seed_for(key) and seed_for(key) != seed_for(key + "x")


def test_degrade_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        degrade(torch.zeros(10, 12, dtype=torch.int64), 0.5, 16)
    with pytest.raises(ValueError, match="mode"):
        degrade(torch.zeros(16, 16, dtype=torch.int64), 0.5, 16, mode="nope")
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        degrade(torch.zeros(1, 16, 16, dtype=torch.int64), 0.5, 16)


def test_folder_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FolderDataset(tmp_path / "nope")
    root = make_dataset(tmp_path / "d", splits=(("train", 3),))
    (root / "train" / "labels" / "train_000.png").unlink()
    with pytest.raises(ValueError, match="train_000 \\(unpaired: image"):
        FolderDataset(root, "train")
    root2 = make_dataset(tmp_path / "d2", splits=(("train", 2),))
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(root2 / "train" / "labels" / "train_001.png")
    ds = FolderDataset(root2, "train")
    with pytest.raises(ValueError, match="train_001"):
        ds[1]
    with pytest.raises(FileNotFoundError):
        pair_files(tmp_path / "x", tmp_path / "y")


def test_degrade_cli_writes_a_broken_copy_and_refuses_the_input_folder(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("val", 3),))
    labels = root / "val" / "labels"
    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    out = tmp_path / "broken"
    cmd = [sys.executable, "-m", "torch_label_mae", "degrade", "--labels", str(labels), "--out", str(out)]
    r = subprocess.run(cmd + ["--ratio", "0.5", "--block", "16"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in labels.iterdir()} == before
    for name in before:
        broken, orig = read_label(out / name), read_label(labels / name)
        hole = broken == 255
        assert hole.any() and torch.equal(broken[~hole], orig[~hole])
        assert Image.open(out / name).mode == "P"
    assert "warning" not in r.stderr  # the synthetic labels hold no 255
    r = subprocess.run(cmd[:-1] + [str(labels / "sub")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "inside" in r.stderr
    r = subprocess.run(cmd[:5] + [str(out), "--out", str(tmp_path / "again")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.startswith("label-mae degrade: warning: 3 of 3 labels in ")


def test_degrade_skips_hidden_files_as_complete_and_fit_do(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("val", 2),))
    labels = root / "val" / "labels"
    (labels / "._f.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS's resource fork: no PNG
    Image.new("P", (4, 4)).save(labels / ".hidden.png")
    assert degrade_folder(labels, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in labels.iterdir() if not p.name.startswith(".")
    )


def test_degrade_warns_when_the_labels_already_hold_the_missing_index(tmp_path):
    """Labels whose own void is 255 (CamVid, VOC): holes written as 255 could not be told from it."""
    root = make_dataset(tmp_path / "d", splits=(("val", 3),))
    labels = root / "val" / "labels"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        degrade_folder(labels, tmp_path / "clean")  # synthetic labels hold no 255: nothing to say
    first = sorted(labels.glob("*.png"))[0]
    lab = read_label(first).numpy().astype(np.uint8)
    lab[0, :5] = 255
    Image.fromarray(lab, mode="L").save(first)
    with pytest.warns(
        UserWarning, match=r"1 of 3 labels in .* already hold 255 .*--missing-index 254 --void-index 255"
    ):
        degrade_folder(labels, tmp_path / "broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        degrade_folder(labels, tmp_path / "broken254", missing_index=254)


@pytest.mark.parametrize("protocol", ["paper", "native"])
def test_protocols_give_the_same_holes_to_every_method_and_count_only_hidden_pixels(tmp_path, protocol):
    root = make_dataset(tmp_path / "d", splits=(("val", 3),), size=(40, 56))
    ds = FolderDataset(root, "val")
    samples = list(degraded_samples(ds, protocol=protocol))
    again = list(degraded_samples(ds, protocol=protocol))
    for a, b in zip(samples, again, strict=True):
        assert torch.equal(a[4], b[4])
    size = (224, 224) if protocol == "paper" else (40, 56)
    assert all(tuple(s[2].shape) == size for s in samples)

    def oracle(images, labels, missing):  # perfect on hidden pixels
        return [next(s[2] for s in samples if torch.equal(s[3], lab)) for lab in labels]

    def keep_broken(images, labels, missing):  # visible pixels right, hidden pixels all class 0
        return [torch.where(m, torch.zeros_like(lab), lab) for lab, m in zip(labels, missing, strict=True)]

    assert evaluate(oracle, ds, 4, protocol=protocol)["pa_miou"] == pytest.approx(1.0)
    res = evaluate(keep_broken, ds, 4, protocol=protocol)
    assert res["pa_miou"] < 1.0 and res["miou"] > res["pa_miou"]


def test_several_seeds_count_every_draw_and_report_each(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("val", 3),), size=(40, 56))
    ds = FolderDataset(root, "val")

    def keep_broken(images, labels, missing):  # hidden pixels all class 0
        return [torch.where(m, torch.zeros_like(lab), lab) for lab, m in zip(labels, missing, strict=True)]

    singles = [evaluate(keep_broken, ds, 4, seed=s) for s in (0, 5)]
    both = evaluate(keep_broken, ds, 4, seed=[0, 5])
    assert both["images"] == 6 and "per_seed" not in singles[0]
    assert [r["seed"] for r in both["per_seed"]] == [0, 5]
    for single, draw in zip(singles, both["per_seed"], strict=True):
        assert draw["pa_miou"] == pytest.approx(single["pa_miou"])
    assert evaluate(keep_broken, ds, 4, seed=[5])["pa_miou"] == pytest.approx(singles[1]["pa_miou"])
    for bad in ([], [0.5], True, [1, 1]):
        with pytest.raises(ValueError, match="seed must be"):
            evaluate(keep_broken, ds, 4, seed=bad)


def test_seeds_accept_numpy_integers(tmp_path):
    root = make_dataset(tmp_path / "d", splits=(("val", 2),), size=(40, 56))
    ds = FolderDataset(root, "val")

    def keep(images, labels, missing):  # hidden pixels all class 0
        return [torch.where(m, torch.zeros_like(lab), lab) for lab, m in zip(labels, missing, strict=True)]

    assert evaluate(keep, ds, 4, seed=np.int64(3))["seeds"] == [3]
    assert evaluate(keep, ds, 4, seed=[np.int64(0), 2])["seeds"] == [0, 2]
