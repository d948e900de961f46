"""``label-mae fit``: hole shapes, held-out pixels, class remapping of the start model, the fit end to
end (inputs untouched, a loadable model folder, resume after ``kill -9``) and its errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL, make_dataset

from torch_label_mae.cli import main
from torch_label_mae.completer import LabelCompleter
from torch_label_mae.config import NAMED_CONFIGS
from torch_label_mae.data import degrade_folder
from torch_label_mae.fit_dataset import (
    HOLE,
    LATER_ARGS,
    UNKNOWN,
    HoleShapes,
    Sample,
    _claim,
    _data,
    choose,
    data_label_set,
    fit_dataset,
    held_out_digest,
    hold_out,
    model_card,
    read_ids,
    score,
    summary,
)
from torch_label_mae.label_sets import LABEL_SETS, LabelSet
from torch_label_mae.metrics import iou_parts
from torch_label_mae.model import LMAE
from torch_label_mae.train import TrainConfig, remap_classes, train


@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    y=st.integers(0, 20),
    x=st.integers(0, 20),
)
@settings(max_examples=60, deadline=None)
def test_a_rectangle_hole_is_as_wide_as_its_short_side(h, w, y, x):
    hole = torch.zeros(64, 64, dtype=torch.bool)
    hole[y : y + h, x : x + w] = True  # the image edge may cut it: the hole is then that wide still
    shapes = HoleShapes.measure([hole])
    side = min(min(h, 64 - y), min(w, 64 - x))
    assert shapes.count == 1
    assert side <= shapes.width <= side + 1
    assert shapes.fraction == pytest.approx(float(hole.float().mean()))


def test_no_holes_gives_the_paper_masking():
    shapes = HoleShapes.measure([torch.zeros(8, 8, dtype=torch.bool)])
    assert shapes.count == 0 and shapes.fraction == 0.0
    assert shapes.training_holes(480, 224) == {}


def test_training_holes_scale_the_widths_to_the_model():
    shapes = HoleShapes(fraction=0.3, width=32.0, widths=(32.0, 64.0), count=10, patches=0.6)
    s = shapes.training_holes(480, 224)  # 480 px labels cropped to 0.75 on average, resized to 224
    assert s["mask_ratio"] == pytest.approx(0.3) and s["block_holes"] == 0.5
    assert s["block_range"] == (20, 40)
    on_grid = HoleShapes(fraction=0.3, width=32.0, widths=(32.0, 64.0), count=10, patches=0.3)
    hidden = on_grid.training_holes(480, 224, hide_unknown=True)  # the holes' patches hide context already
    assert hidden == {**s, "mask_ratio": pytest.approx(0.15)} and on_grid.training_holes(480, 224) == s
    off_grid = HoleShapes(fraction=0.3, width=32.0, widths=(32.0, 64.0), count=10, patches=0.9)
    assert off_grid.training_holes(480, 224, hide_unknown=True) == s


@given(seed=st.integers(0, 2**16), side=st.sampled_from([1, 2, 3]))
@settings(max_examples=20, deadline=None)
def test_patches_is_the_share_that_completion_hides(seed, side):
    from torch_label_mae.masking import block_holes, hidden_from_missing

    g = torch.Generator().manual_seed(seed)
    holes = [block_holes(1, (14 * side, 14 * side), 0.4, (side * 2, side * 5), generator=g)[0] for _ in range(3)]
    shapes = HoleShapes.measure(holes, (14, 14))
    share = [float(hidden_from_missing(h[None], (14, 14)).float().mean()) for h in holes]
    assert shapes.patches == pytest.approx(float(np.mean(share)))
    assert shapes.fraction <= shapes.patches + 1e-9  # a hidden patch holds every hole pixel
    assert HoleShapes.measure(holes).patches == shapes.fraction  # without a grid: taken as on it


def _sample(rng, h, w, k, void):
    truth = torch.from_numpy(rng.integers(0, k, (h, w)))
    holes = torch.from_numpy(rng.random((h, w)) < 0.3)
    if void:
        truth[torch.from_numpy(rng.random((h, w)) < 0.1)] = UNKNOWN
    truth = torch.where(holes, UNKNOWN, truth)
    return Sample("s", torch.zeros(3, h, w, dtype=torch.uint8), truth.to(torch.uint8), holes,
                  torch.zeros_like(holes), truth)  # fmt: skip


@given(
    h=st.integers(1, 50),
    w=st.integers(1, 50),
    k=st.integers(1, 6),
    fraction=st.sampled_from([0.0, 0.1, 0.5]),
    width=st.integers(1, 16),
    seed=st.integers(0, 2**16),
    void=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_held_out_pixels_are_known_and_never_trained_on(h, w, k, fraction, width, seed, void):
    rng = np.random.default_rng(seed)
    samples = [_sample(rng, h, w, k, void) for _ in range(3)]
    truths = [s.truth.clone() for s in samples]
    hold_out(samples, fraction, 2, width, seed)
    for s, truth in zip(samples, truths, strict=True):
        assert torch.equal(s.truth, truth)  # the truth is kept as it was
        assert not (s.held & (truth == UNKNOWN)).any()  # only known pixels are held out
        unknown = s.label == UNKNOWN
        assert torch.equal(unknown, s.held | (truth == UNKNOWN))  # held, holes and void: unknown to training
        assert torch.equal(s.label[~unknown].long(), truth[~unknown])
        if (truth != UNKNOWN).any():  # something known is always left to complete from
            assert (s.label != UNKNOWN).any()
    if any((s.truth != UNKNOWN).any() for s in samples):
        for (_, label), s in zip(_data(samples, "x", _start()).pairs, samples, strict=True):
            assert (label[s.holes | s.held] == UNKNOWN).all()
        marked = _data(samples, "x", _start(), holes=True).pairs  # hide_unknown: holes apart from void
        for (_, label), s in zip(marked, samples, strict=True):
            assert torch.equal(label == HOLE, s.holes | s.held)
            assert torch.equal(label == UNKNOWN, (s.truth == UNKNOWN) & ~s.holes)  # void
    rng = np.random.default_rng(seed)
    again = [_sample(rng, h, w, k, void) for _ in range(3)]
    hold_out(again, fraction, 2, width, seed)
    assert all(torch.equal(a.held, b.held) for a, b in zip(again, samples, strict=True))  # seeded


def test_an_id_far_above_the_others_is_taken_for_an_unnamed_marker():
    s = _sample(np.random.default_rng(0), 6, 6, 3, False)
    s.truth[0, 0] = s.label[0, 0] = 254  # ids 0..2 and 254: holes or void the arguments did not name
    with pytest.raises(ValueError, match="hold id 254 but not 253.*missing_index=254"):
        _data([s], "x", _start())
    s.truth[0, 1] = s.label[0, 1] = 150  # a large class id alone is no marker
    s.truth[0, 0] = s.label[0, 0] = 0
    _data([s], "x", _start())


def test_hide_unknown_refuses_the_class_id_that_marks_the_holes():
    s = _sample(np.random.default_rng(0), 6, 6, 3, False)
    s.truth[0, 0] = s.label[0, 0] = HOLE
    s.truth[0, 1] = s.label[0, 1] = 253  # with 253: 254 is a class, no unnamed marker
    _data([s], "x", _start())  # without hide_unknown, id 254 is a class like any other
    with pytest.raises(ValueError, match=f"class ids must be below {HOLE}.*found {HOLE}"):
        _data([s], "x", _start(), holes=True)


def test_a_refused_fit_leaves_no_settings_behind(tmp_path):
    """hide_unknown refuses class id 254 after reading the labels: no fit-args.json is left, so the same
    --out takes the fit without the flag (not "a fit is already there")."""
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    first = sorted(labels.iterdir())[0]
    lab = np.array(Image.open(first))
    lab[0, 0], lab[0, 1] = HOLE, 253  # with 253: 254 is a class, no marker
    Image.fromarray(lab).save(first)
    kw = dict(init=str(start), minutes=5, max_steps=1, batch_size=4, threads=1, val_images=2, progress=False)
    with pytest.raises(ValueError, match=f"class ids must be below {HOLE}"):
        fit_dataset(images, labels, tmp_path / "f", hide_unknown=True, **kw)
    assert not (tmp_path / "f" / "fit-run" / "fit-args.json").exists()
    assert fit_dataset(images, labels, tmp_path / "f", agnostic=True, **kw)["training"]["steps"] == 1


@pytest.mark.parametrize("hide_unknown", [False, True])
def test_resume_of_a_fit_from_before_hole_index(tmp_path, hide_unknown):
    """A fit-args.json without hole_index (earlier versions): resumable without --hide-unknown; with it the
    earlier version hid void's patches too, so the resume is refused, naming why."""
    args = dict(init="any-m0.5", missing_index=255, void_index=None, colors=None, val_fraction=0.1, val_images=32,
                seed=0, agnostic=False, hide_unknown=hide_unknown)  # fmt: skip
    run_dir = tmp_path / "fit-run"
    run_dir.mkdir()
    (run_dir / "fit-args.json").write_text(json.dumps(args))
    now = dict(args, hole_index=HOLE if hide_unknown else None)
    if not hide_unknown:
        _claim(run_dir, now, resume=True)
        return
    with pytest.raises(ValueError, match="earlier version, whose --hide-unknown may have hidden the patches with void"):
        _claim(run_dir, now, resume=True)
    with pytest.raises(ValueError, match="other settings than the fit it continues: agnostic, hole_index"):
        _claim(run_dir, dict(now, agnostic=True), resume=True)


def _start() -> LabelCompleter:
    """A class-agnostic completer to start from, without a label set."""
    return LabelCompleter(_agnostic().config)


def _agnostic(num_slots=8) -> LMAE:
    cfg = NAMED_CONFIGS["tiny"](num_classes=num_slots, background_index=None, class_agnostic=True,
                                label_prior=True, **TINY_MODEL)  # fmt: skip
    model = LMAE(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # a head that is not zero, embeddings that differ per slot
    return model


@given(k=st.integers(1, 20))
@settings(max_examples=20, deadline=None)
def test_remapped_classes_take_their_slots_embeddings_and_a_new_head(k):
    start = _agnostic()
    cfg = start.config
    new = LMAE(type(cfg).from_dict({**cfg.to_dict(), "num_classes": k, "class_agnostic": False}))
    state = remap_classes(start.state_dict(), cfg, new)
    new.load_state_dict(state)
    pp = cfg.patch_size**2
    for key in ("label_embed.bag.weight", "prior_embed.bag.weight"):
        old, got = start.state_dict()[key], new.state_dict()[key]
        for c in range(k):
            assert torch.equal(got[c * pp : (c + 1) * pp], old[(c % 8) * pp : (c % 8 + 1) * pp])
        assert not got[-1].any()  # the void row
    assert not new.head.weight.any() and not new.head.bias.any()  # starts at its prior
    assert torch.equal(new.state_dict()["blocks.0.attn.qkv.weight"], start.state_dict()["blocks.0.attn.qkv.weight"])


def _tiny_start(tmp_path, **overrides) -> Path:
    """A tiny class-agnostic model folder to fit from (a few steps on synthetic data)."""
    data = make_dataset(tmp_path / "pool", splits=(("train", 4),), seed=5)
    model = dict(TINY_MODEL, **overrides)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "start"), model="tiny", model_overrides=model,
                      class_agnostic=True, num_slots=8, batch_size=4, max_steps=1, val_split="", workers=0,
                      threads=1)  # fmt: skip
    train(cfg)
    return tmp_path / "start" / "last"


def _broken(tmp_path, n=8):
    data = make_dataset(tmp_path / "data", splits=(("train", n),), size=(48, 64), num_classes=4)
    degrade_folder(data / "train" / "labels", tmp_path / "broken", ratio=0.3, block=8)
    return data / "train" / "images", tmp_path / "broken"


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fit_writes_a_model_folder_that_completes_and_leaves_inputs_alone(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path)
    before = (_digest(images), _digest(labels))
    out = tmp_path / "fitted"
    report = fit_dataset(images, labels, out, init=str(start), minutes=5, max_steps=2, batch_size=4, threads=1,
                         val_images=4, progress=False)  # fmt: skip
    assert (_digest(images), _digest(labels)) == before
    assert {"config.json", "model.safetensors", "README.md", "fit.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "fit.json").read_text()) == json.loads(json.dumps(report))
    assert report["training"]["steps"] == 2 and report["num_classes"] == 4 and report["holes"]["count"] > 0
    assert report["kept"] in ("fitted", "zero_shot")
    for k in ("fitted", "zero_shot", "random_walker"):
        assert 0 <= report[k]["pa_miou"] <= 1 and report[k]["images"] == 4 and report[k]["pixels"] > 0
    completer = LabelCompleter.from_pretrained(str(out))
    if report["kept"] == "fitted":
        assert completer.config.num_classes == 4 and not completer.config.class_agnostic
    label = np.array(Image.open(sorted(labels.iterdir())[0]))
    filled = np.array(completer.complete(np.zeros((*label.shape, 3), dtype=np.uint8), label))
    hole = label == 255
    assert (filled[~hole] == label[~hole]).all() and (filled[hole] < 4).all()
    card = (out / "README.md").read_text()
    assert "PA-mIoU" in card and f"Kept: the {report['kept'].replace('_', '-')} model" in card


def test_an_existing_fit_is_refused_unless_resumed(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path)
    kw = dict(init=str(start), minutes=5, batch_size=4, threads=1, val_images=2, progress=False)
    fit_dataset(images, labels, tmp_path / "f", max_steps=2, **kw)
    with pytest.raises(ValueError, match="resume"):
        fit_dataset(images, labels, tmp_path / "f", max_steps=2, **kw)
    cache = tmp_path / "f" / "fit-run" / "baselines.json"
    first = json.loads(cache.read_text())
    args = tmp_path / "f" / "fit-run" / "fit-args.json"  # as a fit of an earlier version wrote it
    args.write_text(json.dumps({k: v for k, v in json.loads(args.read_text()).items() if k not in LATER_ARGS}))
    report = fit_dataset(images, labels, tmp_path / "f", max_steps=4, resume=True, **kw)
    assert report["training"]["steps"] == 4  # continued, not restarted
    # the same held-out pixels and start weights: the start model and the walker were not scored again
    lean = lambda r: {k: v for k, v in r.items() if k != "per_label"}  # noqa: E731 (fit.json holds no per_label)
    assert report["zero_shot"] == lean(first["zero_shot"]) and report["random_walker"] == lean(first["random_walker"])
    tp, predicted, truth = torch.tensor(first["zero_shot"]["per_label"], dtype=torch.float64).sum(0)
    union = predicted + truth - tp  # the per-label parts the keep rule resamples add up to the score
    assert float((tp / union)[union > 0].mean()) == pytest.approx(first["zero_shot"]["pa_miou"], abs=1e-9)
    first["zero_shot"]["seconds"] = -1.0  # a mark that only a reuse of the cache carries into the report
    cache.write_text(json.dumps(first))
    assert fit_dataset(images, labels, tmp_path / "f", max_steps=5, resume=True, **kw)["zero_shot"]["seconds"] == -1
    for key in ("start_weights", "held_out"):  # other start weights, other held-out pixels: scored again
        cache.write_text(json.dumps(dict(first, **{key: "another"})))
        again = fit_dataset(images, labels, tmp_path / "f", max_steps=6, resume=True, **kw)
        assert again["zero_shot"]["seconds"] >= 0
    old = {k: (lean(v) if isinstance(v, dict) else v) for k, v in first.items()}  # an earlier version's cache
    cache.write_text(json.dumps(dict(old, zero_shot=dict(old["zero_shot"], seconds=-1.0))))
    assert fit_dataset(images, labels, tmp_path / "f", max_steps=7, resume=True, **kw)["zero_shot"]["seconds"] >= 0
    cache.write_text('{"zero_shot": ')  # a cache cut short (killed while written): scored again
    assert fit_dataset(images, labels, tmp_path / "f", max_steps=8, resume=True, **kw)["zero_shot"]["seconds"] >= 0
    args.write_text("[1, 2]")  # the fit's own settings unreadable: refused, naming the file
    with pytest.raises(ValueError, match=r"fit-args\.json: unreadable, so this fit cannot be resumed"):
        fit_dataset(images, labels, tmp_path / "f", max_steps=8, resume=True, **kw)


def test_a_fit_killed_with_sigkill_resumes_to_a_valid_model(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path)
    out = tmp_path / "f"
    args = [sys.executable, "-m", "torch_label_mae", "fit", "--images", str(images), "--labels", str(labels),
            "--out", str(out), "--init", str(start), "--batch-size", "4", "--val-images", "2", "--quiet",
            "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--minutes", "10"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600  # the first checkpoint comes after the first epoch: later on a loaded machine
    while not (out / "fit-run" / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    second = subprocess.run([*args, "--minutes", "10", "--resume"], env=env, capture_output=True, timeout=600)
    assert second.returncode == 2 and b"another label-mae run writes here" in second.stderr  # while it lives
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "fit-run" / "checkpoint.pt").exists(), "no checkpoint within 600 s"
    assert not (out / "model.safetensors").exists()
    killed_at = json.loads(torch.load(out / "fit-run" / "checkpoint.pt", weights_only=True)["state"])["step"]
    assert killed_at >= 2  # the first checkpoint comes after the first epoch: 2 steps of 4 of the 8 labels
    dead = [out / "fit-run" / f".checkpoint.pt.{proc.pid}.k1.tmp", out / f".model.safetensors.{proc.pid}.k2.tmp"]
    live = out / f".model.safetensors.{os.getpid()}.k3.tmp"  # a running process's: left alone
    for p in [*dead, live]:
        p.write_bytes(b"half a file")  # as a kill in the middle of a write leaves it
    done = subprocess.run([*args, "--minutes", "10", "--resume", "--max-steps", "1"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads((out / "fit.json").read_text())
    assert report["training"]["steps"] >= killed_at  # continued from the kill (a restart would stop at 1)
    LabelCompleter.from_pretrained(str(out))  # a valid model folder
    assert not any(p.exists() for p in dead) and live.exists()  # the dead run's temp files removed


def test_a_fit_stopped_by_sigterm_writes_no_model_and_says_resume(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path)
    out = tmp_path / "f"
    args = [sys.executable, "-m", "torch_label_mae", "fit", "--images", str(images), "--labels", str(labels),
            "--out", str(out), "--init", str(start), "--batch-size", "4", "--val-images", "2", "--quiet",
            "--minutes", "10"]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "fit-run" / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2 and "rerun with --resume" in err, err
    assert not (out / "model.safetensors").exists() and not (out / "fit.json").exists()
    changed = [*args[:-2], "--minutes", "10", "--seed", "1", "--resume"]  # other held-out pixels: refused
    done = subprocess.run(changed, capture_output=True, text=True)
    assert done.returncode == 2 and "other settings" in done.stderr and "seed" in done.stderr


def test_read_ids_names_the_file_at_fault(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 255, dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"a\.png: class ids must be in 0\.\.254, found 255.*void"):
        read_ids(path, 254, None, None)  # holes are 254: 255 would be a class id
    ids, holes = read_ids(path, 254, 255, None)  # 255 is void: unknown, not a hole
    assert (ids == UNKNOWN).all() and not holes.any()
    Image.fromarray(np.full((4, 4), 300, dtype=np.uint16)).save(tmp_path / "wide.png")  # --void-index cannot say 300
    with pytest.raises(ValueError, match=r"found 300; a fit takes 8-bit labels: remap 16-bit ids to 0\.\.254"):
        read_ids(tmp_path / "wide.png", 254, 255, None)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="rgb.png: a colour label; pass colors"):
        read_ids(rgb, 255, None, None)
    ids = tmp_path / "ids.png"
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(ids)
    from torch_label_mae.colors import load_colors

    with pytest.raises(ValueError, match="ids.png: a label of class ids.*drop colors"):
        read_ids(ids, 255, None, load_colors("camvid"))


@pytest.mark.parametrize(
    "args, match",
    [
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),  # the flags' names, not Python's
        (["--minutes", "0"], "minutes"),
        (["--minutes", "inf"], "minutes must be a finite number > 0, got inf"),
    ],
)
def test_fit_cli_errors_are_one_line(tmp_path, capsys, args, match):
    images, labels = _broken(tmp_path, n=2)
    rc = main(["fit", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"), *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and match in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_a_fit_holds_its_out_folder_and_keeps_no_stale_label_set(tmp_path):
    """One fit per --out (a second is refused while the first lives, its files untouched); the threads
    asked for serve the whole fit and the caller's come back; a label set left in --out by an earlier
    save does not outlive the model it went with."""
    from torch_label_mae import LabelCompleter
    from torch_label_mae.outputs import OutputLock, OutputLockedError

    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    out = tmp_path / "f"
    agnostic = LabelCompleter.from_pretrained(str(start))
    agnostic.label_set = "voc"
    agnostic.save_pretrained(out)  # an earlier model there, with a label set
    before = _digest(out)
    with OutputLock(out), pytest.raises(OutputLockedError, match="another label-mae run writes here"):
        fit_dataset(images, labels, out, init=str(start), minutes=5, max_steps=1, batch_size=4, progress=False)
    assert _digest(out) == before
    threads = torch.get_num_threads()
    report = fit_dataset(images, labels, out, init=str(start), minutes=5, max_steps=1, batch_size=4, threads=1,
                         progress=False)  # fmt: skip
    assert torch.get_num_threads() == threads and not list(out.glob(".label-mae*.lock"))
    fitted = LabelCompleter.from_pretrained(str(out))  # loads: no label set beside a class-specific model
    assert (report["kept"] == "fitted") != fitted.config.class_agnostic
    if fitted.config.class_agnostic:  # the zero-shot start kept: the data's own label set, not the stale voc
        assert fitted.label_set.name == labels.name and fitted.label_set.num_classes == 255
    else:
        assert fitted.label_set is None


def test_a_class_agnostic_fit_records_the_datas_holes_and_void_for_complete(tmp_path):
    """Holes 254 and void 255: the folder completes them as the fit read them with no flags (without its
    label set, 255 would be the holes, the void filled, and 254 a class)."""
    from torch_label_mae import LabelCompleter

    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    marked = tmp_path / "marked"
    marked.mkdir()
    for f in sorted(labels.iterdir()):
        lab = np.array(Image.open(f))
        lab = np.where(lab == 255, 254, lab)
        lab[:2] = 255  # the dataset's own void, a border
        Image.fromarray(lab.astype(np.uint8)).save(marked / f.name)
    out = tmp_path / "f"
    report = fit_dataset(images, marked, out, init=str(start), minutes=5, max_steps=1, batch_size=4, threads=1,
                         missing_index=254, void_index=255, agnostic=True, progress=False)  # fmt: skip
    fitted = LabelCompleter.from_pretrained(str(out))
    assert fitted.config.class_agnostic and report["num_classes"] == 4 and report["label_set"] == "marked"
    assert (fitted.label_set.missing_index, fitted.label_set.void_index) == (254, 255)
    assert fitted.label_set.num_classes == 254  # any 8-bit id below the markers, as the model takes
    label = np.array(Image.open(marked / sorted(p.name for p in marked.iterdir())[0]))
    label[label == 3] = 9  # an id the fit never saw: still a class to a class-agnostic model
    filled = fitted.complete(np.zeros((*label.shape, 3), np.uint8), label)
    assert (filled[label == 255] == 255).all() and np.isin(filled[label == 254], np.unique(label[label < 254])).all()
    assert (filled[label < 254] == label[label < 254]).all()
    assert "no label set" not in summary(report)
    # a void below the classes cannot be a label set's: none is written, and the summary says what to pass
    for f in sorted(marked.iterdir()):
        lab = np.array(Image.open(f))
        Image.fromarray(np.where(lab == 255, 0, np.where(lab < 4, lab + 1, lab)).astype(np.uint8)).save(f)
    report = fit_dataset(images, marked, tmp_path / "g", init=str(start), minutes=5, max_steps=1, batch_size=4,
                         threads=1, missing_index=254, void_index=0, agnostic=True, progress=False)  # fmt: skip
    assert report["label_set"] is None and not (tmp_path / "g" / "label_set.json").exists()
    assert "pass --missing-index 254 --void-index 0 to complete" in summary(report)


def test_the_label_set_a_fit_writes_in_each_case():
    base = dict(colors=None, missing_index=254, void_index=255, num_classes=4, labels="/data/mine", kept="fitted")
    own = data_label_set(None, base)
    assert (own.name, own.num_classes, own.missing_index, own.void_index) == ("mine", 254, 254, 255)
    assert data_label_set(None, dict(base, void_index=200)).num_classes == 200  # the ids below both markers
    assert data_label_set(None, dict(base, void_index=2)) is None  # void among the classes: no label set says it
    assert data_label_set(None, dict(base, colors={"name": "camvid"})) is None  # colour labels: their table
    wide = LabelSet("wide", tuple(f"c{i}" for i in range(255)), missing_index=255, void_index=None)
    assert data_label_set(wide, base) == own  # the start's cannot take 254 / 255: the data's own
    voc = data_label_set(LABEL_SETS["voc"], dict(base, missing_index=255, void_index=None))
    assert voc.class_names == LABEL_SETS["voc"].class_names and (voc.missing_index, voc.void_index) == (255, None)
    scores = dict(pa_miou=0.5, pixels=10, images=1)
    report = dict(base, fitted=scores, zero_shot=scores, random_walker=scores, init="x")
    assert "no label set" not in summary(report)  # a class-specific model kept: none is its due
    assert "pass --missing-index 254 --void-index 255 to complete" in summary(dict(report, label_set=None))


def _scores(right: list[float], n: int = 3) -> dict:
    """A :func:`score` result of labels of 100 pixels per class, ``right[i]`` of label i's pixels right (the
    others predicted as the next class)."""
    per_label = []
    for r in right:
        cm = torch.zeros(n, n, dtype=torch.long)
        for c in range(n):
            cm[c, c], cm[c, (c + 1) % n] = round(100 * r), 100 - round(100 * r)
        per_label.append(iou_parts(cm).tolist())
    total = torch.tensor(per_label, dtype=torch.float64).sum(0)
    tp, predicted, target = total
    return dict(pa_miou=float((tp / (predicted + target - tp)).mean()), per_label=per_label)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.2, 0.8), min_size=4, max_size=24), st.floats(0.05, 0.2))
def test_a_fit_is_kept_where_it_gains_on_every_label_and_not_on_the_luck_of_one(right, gain):
    """Better by ``gain`` on every held-out label: kept. A gain on one label alone (the same on the others):
    not kept, though the mean gain is above 0; a start that cannot take the labels: the fit kept."""
    start = _scores(right)
    kept, g = choose(_scores([r + gain for r in right]), start)
    assert kept == "fitted" and g["low"] > 0 and g["mean"] > 0
    one = _scores([min(right[0] + gain * len(right), 1.0)] + right[1:])  # the gain on label 0 only
    kept, g = choose(one, start)
    assert kept == "zero_shot" and g["low"] <= 0 < g["mean"]  # not drawn in over 5% of the resamples
    assert choose(one, None) == ("fitted", None)


def test_the_summary_and_the_card_say_the_gain_and_why_it_was_kept():
    h = dict(count=3, fraction=0.2, width=16.0)
    t = dict(steps=5, seconds=60.0, minutes=1.0, batch_size=4)
    scores = dict(pa_miou=0.5, pa_pixel_acc=0.9, pixels=10, images=4)
    report = dict(colors=None, missing_index=254, void_index=None, num_classes=4, labels="/data/mine", init="x",
                  kept="zero_shot", fitted=scores, zero_shot=scores, random_walker=scores, val_fraction=0.1,
                  num_labels=8, images="/data/images", holes=h, training=t,
                  gain=dict(mean=0.003, low=-0.0025))  # fmt: skip
    assert "kept the zero-shot model (the fitted model's gain +0.3, at least -0.2 with 95% confidence)" in summary(
        report
    )
    card = model_card(report)
    assert "above 0 with\n95% confidence (a bootstrap over the held-out labels): the fitted model's gain +0.3" in card
    assert "gain" not in summary(dict(report, gain=None, kept="fitted"))
    assert "kept: the start model cannot take these labels" in model_card(dict(report, gain=None, kept="fitted"))


def test_a_start_with_a_label_set_keeps_it_with_the_fits_indices_and_must_hold_the_ids(tmp_path):
    from torch_label_mae import LabelCompleter

    start = LabelCompleter.from_pretrained(str(_tiny_start(tmp_path)))
    start.label_set = LabelSet("five", ("a", "b", "c", "d", "e"), missing_index=254, void_index=255)
    start.save_pretrained(tmp_path / "five")
    images, labels = _broken(tmp_path, n=4)  # ids 0..3, holes 255, no void
    kw = dict(init=str(tmp_path / "five"), minutes=5, max_steps=1, batch_size=4, threads=1, agnostic=True)
    report = fit_dataset(images, labels, tmp_path / "f", progress=False, **kw)
    kept = LabelCompleter.from_pretrained(str(tmp_path / "f")).label_set
    assert report["label_set"] == "five" and kept.class_names == ("a", "b", "c", "d", "e")
    assert (kept.missing_index, kept.void_index) == (255, None)  # the holes as this fit read them
    start.label_set = LabelSet("two", ("a", "b"))
    start.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="ids up to 3, but the start's label set 'two' has 2 classes"):
        fit_dataset(images, labels, tmp_path / "g", progress=False, **dict(kw, init=str(tmp_path / "two")))
    assert not (tmp_path / "g" / "fit-run" / "checkpoint.pt").exists()  # refused before any training


def test_nothing_held_out_keeps_the_fit_unscored(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    out = tmp_path / "f"
    report = fit_dataset(images, labels, out, init=str(start), minutes=5, max_steps=1, batch_size=4, threads=1,
                         val_fraction=0.0, progress=False)  # fmt: skip
    assert report["kept"] == "fitted" and report["fitted"] is None
    card = (out / "README.md").read_text()
    assert "kept unscored" in card and "--hide-unknown" not in card and "--agnostic" not in card
    assert LabelCompleter.from_pretrained(str(out)).config.num_classes == 4


def test_fit_reads_colour_labels_through_a_table(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    table = {"colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], "missing": [255, 255, 255]}
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    lut = np.array(table["colors"] + [[0, 0, 0]] * 251 + [table["missing"]], dtype=np.uint8)
    for p in labels.iterdir():
        Image.fromarray(lut[np.array(Image.open(p))]).save(rgb / p.name)
    report = fit_dataset(images, rgb, tmp_path / "f", init=str(start), minutes=5, max_steps=1, batch_size=4,
                         threads=1, val_images=2, colors=table, progress=False)  # fmt: skip
    plain = fit_dataset(images, labels, tmp_path / "g", init=str(start), minutes=5, max_steps=1, batch_size=4,
                        threads=1, val_images=2, progress=False)  # fmt: skip
    assert report["holes"] == plain["holes"] and report["num_classes"] == plain["num_classes"] == 4
    with pytest.raises(ValueError, match="void_index"):
        fit_dataset(images, rgb, tmp_path / "h", init=str(start), colors=table, void_index=0)


@given(seed=st.integers(0, 2**16), void=st.booleans())
@settings(max_examples=20, deadline=None)
def test_held_out_scoring_hides_the_holes_as_completion_does(seed, void):
    rng = np.random.default_rng(seed)
    samples = [_sample(rng, 20, 24, 3, void) for _ in range(3)]
    hold_out(samples, 0.3, 3, 4, seed)
    asked = []

    def method(images, labels, missing):  # a spy: fills every missing pixel with class 0
        asked.extend(missing)
        return [torch.where(m, 0, lab) for lab, m in zip(labels, missing, strict=True)]

    got = score(method, samples, 3)
    held = [s for s in samples if s.held.any()]
    assert all(torch.equal(m, s.held | s.holes) for m, s in zip(asked, held, strict=True))
    assert got["pixels"] == sum(int(s.held.sum()) for s in held)  # scored on the held-out pixels alone


@given(which=st.sampled_from(["image", "label", "holes", "held", "truth"]), seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None)
def test_the_held_out_digest_follows_what_the_scores_depend_on(which, seed):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(3):
        truth = torch.randint(0, 4, (12, 16), generator=g, dtype=torch.uint8)
        held = torch.rand(12, 16, generator=g) < (0.3 if i else 0.0)  # the first label holds nothing out
        image = torch.randint(0, 256, (3, 12, 16), generator=g, dtype=torch.uint8)
        samples.append(Sample(f"s{i}", image, torch.where(held, UNKNOWN, truth), torch.zeros_like(held), held, truth))
    before = held_out_digest(samples, 4)
    assert held_out_digest(samples, 5) != before
    for i, same in ((0, True), (2, False)):  # a label without held-out pixels plays no part
        t = getattr(samples[i], which).clone()
        t.view(-1)[int(torch.randint(0, t.numel(), (1,), generator=g))] ^= True if t.dtype == torch.bool else 1
        changed = [*samples[:i], dataclasses.replace(samples[i], **{which: t}), *samples[i + 1 :]]
        if which == "held" and i == 0:
            continue  # holding a pixel out of the first label makes it count
        assert (held_out_digest(changed, 4) == before) == same


def test_an_agnostic_fit_keeps_slots_and_pools_the_exact_walk(tmp_path):
    start = _tiny_start(tmp_path, prior_kind="random_walk", prior_solver="direct", prior_connectivity=4)
    images, labels = _broken(tmp_path)
    kw = dict(init=str(start), minutes=5, batch_size=4, threads=1, val_images=2, progress=False)
    report = fit_dataset(images, labels, tmp_path / "f", max_steps=3, agnostic=True, hide_unknown=True, **kw)
    assert report["agnostic"] and report["training"]["class_agnostic"] and report["training"]["mask_pool"] >= 1
    assert report["hide_unknown"] and report["training"]["hide_unknown"] and report["training"]["hole_index"] == HOLE
    card = (tmp_path / "f" / "README.md").read_text()
    assert "`--agnostic`" in card and "`--hide-unknown`" in card
    fitted = LabelCompleter.from_pretrained(str(tmp_path / "f" / "fit-run" / "last"))
    assert fitted.config.class_agnostic and fitted.config.num_classes == 8  # the start's slots
    with pytest.raises(ValueError, match="agnostic"):  # a resume must not change what is fitted
        fit_dataset(images, labels, tmp_path / "f", max_steps=4, resume=True, **kw)
    classes = _tiny_start(tmp_path / "c")
    specific = tmp_path / "specific"
    fit_dataset(images, labels, specific, init=str(classes), minutes=5, max_steps=1, batch_size=4, threads=1,
                val_images=2, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="not class-agnostic"):
        init = str(specific / "fit-run" / "last")  # the fitted model: the data's classes
        fit_dataset(images, labels, tmp_path / "g", max_steps=1, agnostic=True, **dict(kw, init=init))
    assert not (tmp_path / "g").exists()  # refused before anything is written


def test_an_out_folder_of_other_files_is_refused(tmp_path):
    images, labels = _broken(tmp_path, n=2)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="out holds other files"):
        fit_dataset(images, labels, out, minutes=1, max_steps=1, progress=False)
    assert (out / "README.md").read_text() == "my notes"


def test_a_start_with_fewer_classes_than_the_labels_has_no_zero_shot_score(tmp_path):
    from torch_label_mae import LabelCompleter, LMAEConfig

    folder = tmp_path / "two"
    LabelCompleter(LMAEConfig.tiny(**dict(TINY_MODEL, num_classes=2), label_prior=True)).save_pretrained(folder)
    images, labels = _broken(tmp_path, n=4)  # 4 classes
    report = fit_dataset(images, labels, tmp_path / "f", init=str(folder), minutes=5, max_steps=1, batch_size=4,
                         progress=False)  # fmt: skip
    assert report["zero_shot"] is None and report["kept"] == "fitted" and report["num_classes"] == 4
    from torch_label_mae.fit_dataset import summary

    assert "n/a" in (tmp_path / "f" / "README.md").read_text() and "n/a" in summary(report)


def test_a_resume_trains_with_the_pool_the_fit_began_with(tmp_path, monkeypatch):
    import torch_label_mae.fit_dataset as fd

    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=4)
    out = tmp_path / "f"
    kw = dict(init=str(start), minutes=5, max_steps=1, batch_size=4, progress=False)
    first = fit_dataset(images, labels, out, **kw)
    assert json.loads((out / "fit-run" / "fit-args.json").read_text())["mask_pool"] == first["training"]["mask_pool"]
    monkeypatch.setattr(fd, "pool_size", lambda *a, **k: pytest.fail("timed again on a resume"))
    again = fit_dataset(images, labels, out, resume=True, **kw)
    assert again["training"]["mask_pool"] == first["training"]["mask_pool"]


def test_fitting_and_training_refuse_a_float64_default_dtype_before_anything_is_written(tmp_path):
    start = _tiny_start(tmp_path)
    images, labels = _broken(tmp_path, n=2)
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        wrong = r"computes in float32, but torch's default dtype is torch\.float64"
        with pytest.raises(ValueError, match="fitting " + wrong):
            fit_dataset(images, labels, tmp_path / "f", init=str(start), minutes=1, progress=False)
        cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "t"), init=str(start), epochs=1)
        with pytest.raises(ValueError, match="training " + wrong):
            train(cfg)
    finally:
        torch.set_default_dtype(before)
    assert not (tmp_path / "f").exists() and not (tmp_path / "t").exists()


def test_a_fit_runs_on_its_threads_and_gives_the_callers_back(tmp_path):
    from torch_label_mae.fit_dataset import _holding
    from torch_label_mae.threads import torch_threads

    with torch_threads(1):
        with _holding(tmp_path / "f", 2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with _holding(tmp_path / "g", None):
            assert torch.get_num_threads() == 1
    assert not (tmp_path / "f").exists()  # nothing left for the lock alone
