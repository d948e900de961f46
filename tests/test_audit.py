"""The leave-out audit (``audit.py``, ``LabelCompleter.audit``, ``label-mae audit``): every patch predicted
while hidden, no leak of the hidden pixels' classes, repair only on flagged pixels, inputs untouched,
outputs, resume."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL, make_dataset

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.audit import (
    audit_batch,
    finish,
    grid_shifts,
    leave_out_masks,
    leave_out_probs,
    patch_pixels,
    repair_label,
    score_from_probs,
)
from torch_label_mae.audit_dataset import audit_dataset
from torch_label_mae.cli import main

N = 4
TINY = dict(TINY_MODEL, num_classes=N)


@pytest.fixture(scope="module")
def completer() -> LabelCompleter:
    torch.manual_seed(0)
    return LabelCompleter(LMAEConfig.tiny(**TINY, label_prior=True)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, completer) -> Path:
    folder = tmp_path_factory.mktemp("model")
    completer.save_pretrained(folder)
    return folder


@pytest.fixture()
def data(tmp_path) -> tuple[Path, Path]:
    make_dataset(tmp_path / "data", splits=(("train", 5),), size=(40, 56), num_classes=N)
    return tmp_path / "data" / "train" / "images", tmp_path / "data" / "train" / "labels"


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- leave-out coverage ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    gh=st.integers(1, 20),
    gw=st.integers(1, 20),
    num_masks=st.sampled_from([1, 2, 4]),
    block=st.integers(1, 4),
)
def test_masks_cover_every_patch_once(gh, gw, num_masks, block):
    masks = leave_out_masks((gh, gw), num_masks, block)
    assert masks.shape == (num_masks, gh * gw)
    assert bool((masks.sum(0) == 1).all())  # every patch hidden exactly once


def test_hidden_blocks_keep_visible_neighbours():
    masks = leave_out_masks((14, 14), 4, 2)
    for m in masks:
        g = m.view(14, 14)
        ys, xs = torch.nonzero(g, as_tuple=True)
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            near = g[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
            assert not bool(near.all())


@settings(max_examples=25, deadline=None)
@given(h=st.integers(3, 70), w=st.integers(3, 70), gh=st.integers(1, 6), gw=st.integers(1, 6))
def test_every_pixel_predicted_while_hidden_without_its_class(h, w, gh, gw):
    """At any size and grid, each pixel is predicted once, in a pass where it is hidden and its class is
    unknown to the predictor (no leak)."""
    gh, gw = min(gh, h), min(gw, w)
    rng = np.random.default_rng(h * 100 + w)
    label = torch.from_numpy(rng.integers(0, N, (2, h, w)))
    image = torch.zeros(2, 3, h, w)
    seen = torch.zeros(2, h, w)

    def predict(img, lab, hidden, missing):
        assert bool((lab[missing] == 255).all())  # the hidden pixels' classes never reach the predictor
        assert torch.equal(missing, patch_pixels(hidden, (gh, gw), (h, w)))
        seen.add_(missing.float())
        return torch.full((2, N, h, w), 1.0 / N)

    probs, count = leave_out_probs(predict, image, label, (gh, gw), N, shifts=1)
    assert bool((count == 1).all()) and bool((seen == 1).all())
    assert torch.allclose(probs.sum(1), torch.ones(2, h, w))


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(3, 70),
    w=st.integers(3, 70),
    gh=st.integers(1, 6),
    gw=st.integers(1, 6),
    shifts=st.sampled_from([2, 4]),
)
def test_grid_shifts_predict_each_pixel_once_per_shift_hidden_and_in_place(h, w, gh, gw, shifts):
    """With grid shifts: every pass hides its pixels' classes (no leak), each pixel is predicted once per
    shift that keeps it inside the image, at least once, and each prediction lands back on its own pixel."""
    gh, gw = min(gh, h), min(gw, w)
    rng = np.random.default_rng(h * 100 + w + shifts)
    label = torch.from_numpy(rng.integers(0, N, (2, h, w)))
    where = torch.arange(h * w).view(1, 1, h, w).float().expand(2, 3, h, w) / (h * w)  # an image of positions
    moves = grid_shifts(shifts, (gh, gw), (h, w))

    def predict(img, lab, hidden, missing):
        assert bool((lab[missing] == 255).all())  # the hidden pixels' classes never reach the predictor
        pos = (img[:, 0] * (h * w)).round().long()  # [2, h, w]: the pixel each position came from
        return F.one_hot(pos % N, N).permute(0, 3, 1, 2).float()  # a class read off the pixel's own position

    probs, count = leave_out_probs(predict, where, label, (gh, gw), N, shifts=shifts)
    expect = torch.zeros(h, w)
    for dy, dx in moves:
        expect[: h - dy, : w - dx] += 1  # the last rows / columns a shift moves past the edge: not predicted
    assert torch.equal(count, expect.expand(2, -1, -1)) and bool((count >= 1).all())
    own = F.one_hot(torch.arange(h * w).view(h, w) % N, N).permute(2, 0, 1).float()
    assert torch.allclose(probs, own.expand(2, -1, -1, -1))  # every pass put its prediction back in place


def test_grid_shifts_are_half_a_patch():
    assert grid_shifts(1, (14, 14), (224, 224)) == [(0, 0)]
    assert grid_shifts(2, (14, 14), (224, 224)) == [(0, 0), (8, 8)]
    assert grid_shifts(4, (14, 14), (224, 224)) == [(0, 0), (8, 8), (8, 0), (0, 8)]
    assert grid_shifts(4, (14, 14), (360, 480)) == [(0, 0), (13, 17), (13, 0), (0, 17)]
    assert grid_shifts(4, (4, 4), (4, 4)) == [(0, 0)]  # 1 px patches: no half-patch move
    with pytest.raises(ValueError, match="shifts"):
        grid_shifts(3, (14, 14), (224, 224))


def test_model_prior_sees_the_visible_label_only(completer):
    """Changing the label inside a hidden patch leaves that patch's prediction unchanged."""
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 255, (1, 3, 32, 32), dtype=np.uint8))
    lab = torch.from_numpy(rng.integers(0, N, (1, 32, 32)))
    from torch_label_mae.audit import model_predictor

    predict = model_predictor(completer)
    hidden = leave_out_masks(completer.config.grid, 4, 1)[:1]
    missing = patch_pixels(hidden, completer.config.grid, (32, 32))
    a = predict(img, torch.where(missing, 255, lab), hidden, missing)
    other = torch.where(missing, (lab + 1) % N, lab)
    b = predict(img, torch.where(missing, 255, other), hidden, missing)
    assert torch.allclose(a, b)


# -- scores, regions, repair ----------------------------------------------------------------------
def test_score_is_one_minus_probability_of_given_class():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]).T.reshape(1, 3, 1, 2)
    label = torch.tensor([[[0, 255]]])
    score, pred = score_from_probs(probs, label)
    assert torch.allclose(score, torch.tensor([[[0.3, 0.0]]]))  # void is never suspect
    assert pred.tolist() == [[[0, 2]]]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    threshold=st.floats(0.0, 0.99),
    min_area=st.floats(0.0, 0.2),
)
def test_repair_changes_only_flagged_pixels(seed, h, w, threshold, min_area):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, N, (h, w))
    label[rng.random((h, w)) < 0.1] = 255  # void: never changed
    predicted = rng.integers(0, N, (h, w))
    score = np.where(label == 255, 0.0, rng.random((h, w)))
    res = finish(score, predicted, label, N, threshold, min_area)
    changed = res.repaired != label
    assert not (changed & ~res.flagged).any()
    assert (res.repaired[label == 255] == 255).all()
    assert (res.repaired[res.flagged] == predicted[res.flagged]).all()
    assert not (res.flagged & (score <= threshold)).any()
    assert res.changed == int(changed.sum())
    assert sum(r["area"] for r in res.regions) == int(res.flagged.sum())
    assert np.array_equal(repair_label(label, predicted, np.zeros_like(res.flagged), N), label)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    thresholds=st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.99)),
)
def test_image_score_is_the_99th_percentile_of_labelled_pixels_whatever_the_threshold(seed, h, w, thresholds):
    """The image score ranks labels without the threshold: the same at any threshold, the 99th percentile
    of the labelled pixels' scores (void pixels do not count), never lowered by raising a pixel's score."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, N, (h, w))
    label[rng.random((h, w)) < 0.2] = 255
    score = rng.random((h, w))
    predicted = rng.integers(0, N, (h, w))
    a, b = (finish(score, predicted, label, N, t).image_score for t in thresholds)
    assert a == b
    known = label != 255
    assert a == (pytest.approx(np.quantile(score[known], 0.99)) if known.any() else 0.0)
    assert 0.0 <= a <= 1.0
    worse = score.copy()
    worse[rng.random((h, w)) < 0.3] = 1.0
    assert finish(worse, predicted, label, N).image_score >= a
    assert finish(np.where(known, score, 1.0), predicted, label, N).image_score == a  # void: not counted


def test_audit_api_finds_a_swapped_region(completer):
    """With a predictor that knows the truth, the swapped square is the one suspect region, and the repair
    restores it."""
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[:, 16:] = 1
    label = truth.copy()
    label[8:16, 4:12] = 2

    def oracle(img, lab, hidden, missing):
        return torch.nn.functional.one_hot(torch.from_numpy(truth), N).permute(2, 0, 1)[None].float() * 0.97 + 0.01

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    res = completer.audit(image, label, predictor=oracle)
    assert len(res.regions) == 1 and res.regions[0]["area"] == 64
    assert res.regions[0]["given_class"] == 2 and res.regions[0]["predicted_class"] == 0
    assert np.array_equal(res.repaired, truth) and res.changed == 64
    assert res.score_png().dtype == np.uint8 and res.score_png().shape == (32, 32)


def test_audit_api_runs_on_the_model(completer):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    labels = [rng.integers(0, N, (40, 56)).astype(np.uint8) for _ in range(3)]
    before = [lab.copy() for lab in labels]
    out = audit_batch(completer, images, labels, batch_size=2)
    assert len(out) == 3
    for res, lab, old in zip(out, labels, before, strict=True):
        assert np.array_equal(lab, old)  # inputs untouched
        assert res.score.shape == (40, 56) and res.score.min() >= 0 and res.score.max() <= 1
        assert not ((res.repaired != lab) & ~res.flagged).any()
    with pytest.raises(TypeError, match=r"batch_size must be an integer >= 1, got float 2.0"):
        audit_batch(completer, images, labels, batch_size=2.0)


# -- folders --------------------------------------------------------------------------------------
def test_audit_dataset_outputs_and_inputs_untouched(tmp_path, data, model_dir):
    images, labels = data
    before = _digest(images), _digest(labels)
    out = tmp_path / "audit"
    rep = audit_dataset(images, labels, out, model=model_dir, repair=0.5, threshold=0.5, progress=False, worst=3)
    assert rep.ok and rep.done == 5 and rep.skipped == 0
    assert (_digest(images), _digest(labels)) == before
    report = json.loads((out / "audit_report.json").read_text())
    scores = [r["image_score"] for r in report["images"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    for p in sorted(labels.iterdir()):
        with Image.open(out / "scores" / p.name) as s, Image.open(p) as lab, Image.open(out / "repaired" / p.name) as r:
            assert s.mode == "L" and s.size == lab.size
            assert r.mode == "P" and r.size == lab.size and r.getpalette() == lab.getpalette()
            changed = np.array(r) != np.array(lab)
        rec = next(x for x in report["images"] if x["file"] == p.name)
        assert rec["changed_pixels"] == int(changed.sum())
    with Image.open(out / "worst.png") as pic:
        assert pic.width > 3 * 300


def test_audit_dataset_resumes(tmp_path, data, model_dir):
    images, labels = data
    out = tmp_path / "audit"
    audit_dataset(images, labels, out, model=model_dir, progress=False, worst=0)
    (out / "scores" / "train_002.png").unlink()
    (out / "records" / "train_003.json").write_text("{")  # a record cut short
    rep = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=0)
    assert (rep.done, rep.skipped) == (2, 3) and len(rep.images) == 5
    rep = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=0, threshold=0.5)
    assert (rep.done, rep.skipped) == (5, 0)  # other settings: redone
    other = LabelCompleter.from_pretrained(model_dir)
    with torch.no_grad():
        other.model.head.bias.add_(0.01)  # the same config and folder name, other weights
    rep = audit_dataset(images, labels, out, model=other, progress=False, worst=0, threshold=0.5)
    assert (rep.done, rep.skipped) == (5, 0)  # another model: redone


def test_audit_refuses_outputs_on_inputs(data, model_dir):
    images, labels = data
    with pytest.raises(ValueError, match="input"):
        audit_dataset(images, labels, labels, model=model_dir, progress=False)
    with pytest.raises(ValueError, match="inside"):
        audit_dataset(images, labels, labels / "sub", model=model_dir, progress=False)


def test_each_model_audits_at_its_config_threshold_and_keeps_it_when_saved(tmp_path, completer):
    from torch_label_mae import LabelCompleter
    from torch_label_mae.audit import DEFAULT_THRESHOLD, default_threshold
    from torch_label_mae.hub import REGISTRY

    assert completer.config.audit_threshold is None and default_threshold(completer) == DEFAULT_THRESHOLD
    for name, entry in REGISTRY.items():
        if entry.offline:  # bundled weights (a preset audits as the weights it loads)
            loaded = LabelCompleter.from_pretrained(name)
            assert default_threshold(loaded) == loaded.config.audit_threshold is not None  # chosen on its train split
    camvid = LabelCompleter.from_pretrained("camvid-m0.5")
    camvid.save_pretrained(tmp_path / "saved")
    again = LabelCompleter.from_pretrained(str(tmp_path / "saved"))
    assert default_threshold(again) == default_threshold(camvid) == 0.8  # docs/audit.md: camvid-m0.5 audits at 0.8


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "0.9", True])
def test_config_refuses_an_audit_threshold_outside_0_1(bad):
    from torch_label_mae.config import LMAEConfig

    with pytest.raises(ValueError, match="audit_threshold"):
        LMAEConfig.tiny(audit_threshold=bad)
    assert "audit_threshold" not in LMAEConfig.tiny().to_dict()  # configs older releases read stay as they were
    assert LMAEConfig.from_dict(LMAEConfig.tiny(audit_threshold=0.9).to_dict()).audit_threshold == 0.9


def test_audit_dataset_repairs_at_the_threshold_in_use_with_auto(tmp_path, data, model_dir):
    from torch_label_mae.audit import DEFAULT_THRESHOLD

    images, labels = data
    rep = audit_dataset(images, labels, tmp_path / "a", model=model_dir, repair="auto", progress=False, worst=0)
    assert rep.settings["threshold"] == rep.settings["repair"] == DEFAULT_THRESHOLD
    rep = audit_dataset(images, labels, tmp_path / "b", model=model_dir, repair="auto", threshold=0.4, progress=False,
                        worst=0)  # fmt: skip
    assert rep.settings["threshold"] == rep.settings["repair"] == 0.4
    assert len(list((tmp_path / "b" / "repaired").glob("*.png"))) == 5
    with pytest.raises(ValueError, match="repair"):
        audit_dataset(images, labels, tmp_path / "c", model=model_dir, repair="0.5", progress=False)  # not "auto"


def test_the_repaired_files_change_only_pixels_scored_above_the_repair_threshold(tmp_path, data, model_dir):
    """On disk, with the repair threshold above the audit's: a repair at the audit threshold, or of every
    pixel, would change pixels scored between the two."""
    images, labels = data
    out = tmp_path / "a"
    rep = audit_dataset(images, labels, out, model=model_dir, threshold=0.5, repair=0.8, progress=False, worst=0)
    changed_any, between = 0, 0
    for r in rep.images:
        label = np.asarray(Image.open(labels / r["file"])).astype(np.int64)
        fixed = np.asarray(Image.open(out / "repaired" / r["file"])).astype(np.int64)
        score = np.asarray(Image.open(out / "scores" / r["file"])).astype(np.int64)
        changed = fixed != label
        assert (score[changed] >= round(0.8 * 255)).all()  # 8-bit scores: > 0.8 reads as 204 or more
        assert int(changed.sum()) == r["changed_pixels"]
        changed_any += int(changed.sum())
        between += int(((score > round(0.5 * 255)) & (score < round(0.8 * 255))).sum())
    assert changed_any > 0 and between > 0  # both kinds of pixel occur: the test can tell the two apart


def test_a_bad_min_area_is_refused_before_anything_is_written(tmp_path, data, model_dir):
    images, labels = data
    with pytest.raises(ValueError, match="min_area"):
        audit_dataset(images, labels, tmp_path / "out", model=model_dir, min_area=1.0, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_audit_repair_without_a_value_uses_the_threshold(tmp_path, data, model_dir):
    images, labels = data
    out = tmp_path / "cli"
    argv = ["audit", "--images", str(images), "--labels", str(labels), "--out", str(out), "--model", str(model_dir)]
    assert main(argv + ["--threshold", "0.3", "--repair", "--quiet", "--worst", "0", "--device", "cpu"]) == 0
    settings = json.loads((out / "audit_report.json").read_text())["settings"]
    assert settings["threshold"] == settings["repair"] == 0.3


def test_cli_audit(tmp_path, data, model_dir, capsys):
    images, labels = data
    out = tmp_path / "cli"
    rc = main(
        ["audit", "--images", str(images), "--labels", str(labels), "--out", str(out), "--model", str(model_dir)]
        + ["--repair", "0.6", "--quiet", "--worst", "2", "--device", "cpu"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "5 audited" in text and "audit_report.json" in text
    assert len(list((out / "repaired").glob("*.png"))) == 5


# -- a new user's review of the audit ---------------------------------------------------------------
def test_a_labels_folder_where_the_audit_writes_is_refused(tmp_path, data, model_dir):
    images, labels = data
    out = tmp_path / "t"
    (out / "scores").mkdir(parents=True)
    for p in labels.iterdir():
        (out / "scores" / p.name).write_bytes(p.read_bytes())
    before = _digest(out / "scores")
    with pytest.raises(ValueError, match="scores"):  # the score maps would overwrite the labels
        audit_dataset(images, out / "scores", out, model=model_dir, progress=False)
    assert _digest(out / "scores") == before


def test_an_edited_label_is_audited_again_on_a_rerun(tmp_path, data, model_dir):
    images, labels = data
    out = tmp_path / "audit"
    audit_dataset(images, labels, out, model=model_dir, progress=False, worst=0)
    lab = np.array(Image.open(labels / "train_001.png"))
    lab[:8, :8] = (lab[:8, :8] + 1) % N  # fixed (or broken) by hand after the audit
    im = Image.fromarray(lab, mode="P")
    im.putpalette(Image.open(labels / "train_002.png").getpalette())
    im.save(labels / "train_001.png")
    rep = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=0)
    assert (rep.done, rep.skipped) == (1, 4)


def _agnostic(label_set=None) -> LabelCompleter:
    torch.manual_seed(0)
    cfg = LMAEConfig.tiny(**{**TINY, "num_classes": 8}, class_agnostic=True, label_prior=True)
    c = LabelCompleter(cfg).eval()
    c.label_set = label_set
    return c


def test_a_rerun_with_another_label_set_is_audited_again(tmp_path, data):
    from torch_label_mae.label_sets import LABEL_SETS

    images, labels = data
    out = tmp_path / "audit"
    assert audit_dataset(images, labels, out, model=_agnostic(), progress=False, worst=0).done == 5
    assert audit_dataset(images, labels, out, model=_agnostic(), progress=False, worst=0).skipped == 5
    voc = audit_dataset(images, labels, out, model=_agnostic(LABEL_SETS["voc"]), progress=False, worst=0)
    assert voc.done == 5  # other classes and names: not the same audit


def test_class_agnostic_audit_never_scores_ids_above_its_classes():
    from torch_label_mae.label_sets import LABEL_SETS

    label = np.zeros((32, 32), dtype=np.int64)
    label[:, 16:] = 7
    label[4:12, 4:12] = 300  # a 16-bit label's void
    label[20:24, 20:24] = 40  # a class to the bare model, no VOC class
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"labels\[0\]: 64 pixels have ids \[300\] of no class.*void, never scored"):
        bare = _agnostic().audit(image, label, threshold=0.0)  # said: 16-bit classes would look clean
    assert (bare.score[label == 300] == 0).all() and (bare.repaired[label == 300] == 300).all()
    with pytest.warns(UserWarning, match=r"labels\[0\]: 80 pixels have ids \[40, 300\] of no class"):
        voc = _agnostic(LABEL_SETS["voc"]).audit(image, label, threshold=0.0)  # VOC's 21 classes
    assert (voc.score[label == 40] == 0).all() and (voc.repaired[label == 40] == 40).all()
    assert voc.regions and all("given_name" in r for r in voc.regions)  # the label set's class names
    assert {r["given_name"] for r in voc.regions} <= set(LABEL_SETS["voc"].class_names)
    marked = np.where(label >= 40, 255, label)  # VOC's own void, its label set says: no warning
    class_specific = np.where(label == 300, 9, label)  # ids beyond a class-specific model's: its void, by design
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _agnostic(LABEL_SETS["voc"]).audit(image, marked, threshold=0.0)
        LabelCompleter(LMAEConfig.tiny(**TINY, label_prior=True)).eval().audit(image, class_specific, threshold=0.0)


def test_a_folder_audit_names_the_file_of_ids_it_takes_as_void(tmp_path, data):
    images, labels = data
    lab = np.array(Image.open(labels / "train_001.png")).astype(np.uint16)
    lab[:6, :6] = 300
    (labels / "train_001.png").unlink()
    Image.fromarray(lab).save(labels / "train_001.png")
    agnostic = tmp_path / "agnostic"
    _agnostic().save_pretrained(agnostic)
    with pytest.warns(UserWarning) as caught:
        audit_dataset(images, labels, tmp_path / "out", model=agnostic, progress=False, worst=5)
    said = {str(w.message).split(":")[0] for w in caught if "of no class" in str(w.message)}
    assert said == {"train_001.png"}  # the file, not its place in a batch
    image, label = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64)
    for files in (["a.png"], ["a.png", "b.png", "c.png"], "ab"):
        with pytest.raises(ValueError, match="files must name each of the 2 labels"):
            audit_batch(_agnostic(), [image, image], [label, label], files=files)


def test_a_16_bit_label_with_ids_over_255_is_repaired_as_16_bit(tmp_path, data, model_dir):
    images, labels = data
    lab = np.array(Image.open(labels / "train_000.png")).astype(np.uint16)
    lab[:6, :6] = 65535  # its void
    (labels / "train_000.png").unlink()
    Image.fromarray(lab).save(labels / "train_000.png")  # mode I;16
    out = tmp_path / "audit"
    rep = audit_dataset(images, labels, out, model=model_dir, repair=0.5, threshold=0.5, progress=False, worst=0)
    assert rep.ok and rep.done == 5
    with Image.open(out / "repaired" / "train_000.png") as r:
        fixed = np.array(r)
        assert r.mode in ("I;16", "I") and (fixed[:6, :6] == 65535).all()  # I: Pillow before 10.3
    assert ((fixed != lab).sum()) == next(x for x in rep.images if x["file"] == "train_000.png")["changed_pixels"]
    again = audit_dataset(images, labels, out, model=model_dir, repair=0.5, threshold=0.5, progress=False, worst=0)
    assert again.skipped == 5


def test_a_colour_label_is_refused_with_what_to_do(completer):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="colour.*decode"):
        completer.audit(rgb, rgb)


def test_an_empty_labels_folder_says_so(tmp_path, model_dir):
    (tmp_path / "i").mkdir(), (tmp_path / "l").mkdir()
    rep = audit_dataset(tmp_path / "i", tmp_path / "l", tmp_path / "o", model=model_dir, progress=False)
    assert rep.total == 0 and "no label PNG" in rep.summary() and "subfolders" not in rep.summary()
    for city in ("aachen", "bremen"):  # Cityscapes' layout: labels/<city>/*.png
        (tmp_path / "l" / city).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "l" / city / "x.png")
    (tmp_path / "l" / "empty").mkdir()
    rep = audit_dataset(tmp_path / "i", tmp_path / "l", tmp_path / "o2", model=model_dir, progress=False)
    assert "its subfolders aachen/, bremen/ hold some: labels are read from the folder itself" in rep.summary()


@pytest.mark.parametrize("flag", ["--threshold", "--repair", "--min-area"])
def test_cli_audit_thresholds_of_1_are_refused_by_the_parser(tmp_path, data, model_dir, flag, capsys):
    images, labels = data
    args = ["audit", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--model", str(model_dir), flag, "1"])
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "says"), [("--worst", "-1", ">= 0"), ("--batch-size", "0", ">= 1")])
def test_cli_audit_counts_out_of_range_are_refused_by_the_parser(tmp_path, data, model_dir, flag, value, says, capsys):
    images, labels = data
    args = ["audit", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--model", str(model_dir), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and f"must be {says}, got {value}" in err
    with pytest.raises(ValueError, match=r"worst must be an integer >= 0 \(0: no picture\), got -1"):
        audit_dataset(images, labels, tmp_path / "o", model=model_dir, worst=-1, progress=False)


def test_a_rerun_with_nothing_to_do_keeps_the_picture(tmp_path, data, model_dir, monkeypatch):
    import torch_label_mae.audit_dataset as ad

    images, labels = data
    out = tmp_path / "audit"
    first = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=2, threshold=0.5)
    assert first.picture and len(first.picture_labels) == 2
    with monkeypatch.context() as m:
        m.setattr(ad, "audit_batch", lambda *a, **k: pytest.fail("audited again"))
        again = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=2, threshold=0.5)
    assert again.skipped == 5 and again.picture == first.picture and again.picture_labels == first.picture_labels
    shown = first.picture_labels[0][0]
    (labels / shown).write_bytes((labels / shown).read_bytes())  # touched (copied back): the picture is redrawn
    os.utime(labels / shown, ns=(1, 1))
    third = audit_dataset(images, labels, out, model=model_dir, progress=False, worst=2, threshold=0.5)
    assert third.done == 1 and third.picture_labels != first.picture_labels


def test_a_rerun_without_repair_removes_the_earlier_repairs_of_the_labels_it_audits(tmp_path, data, model_dir):
    """repaired/ holds only what the report counts: a label audited again without --repair has
    ``changed_pixels`` 0, so its repaired file from the run before would be stale."""
    images, labels = data
    out = tmp_path / "a"
    audit_dataset(images, labels, out, model=model_dir, threshold=0.3, repair="auto", progress=False, worst=0)
    assert len(list((out / "repaired").glob("*.png"))) == 5
    before = _digest(labels)
    rep = audit_dataset(images, labels, out, model=model_dir, threshold=0.3, progress=False, worst=0)
    assert rep.done == 5 and all(r["changed_pixels"] == 0 for r in rep.images)
    assert list((out / "repaired").glob("*.png")) == []
    assert _digest(labels) == before  # the inputs are untouched
