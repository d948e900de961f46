"""Completing whole datasets (``complete_dataset.py``, ``label-mae complete`` / ``show``): valid outputs,
inputs untouched, refusal to write into the labels folder, resume / overwrite, bad inputs reported,
``--strict``, sharding (in process and under torchrun), ``kill -9`` and rerun, the side-by-side picture."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synth import TINY_MODEL, make_dataset

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.cli import main
from torch_label_mae.complete_dataset import (
    CompletionError,
    complete_dataset,
    output_is_valid,
    resolve_rank,
)
from torch_label_mae.data import degrade_folder
from torch_label_mae.io import default_palette

N = 4
TINY = dict(TINY_MODEL, num_classes=N)
ROOT = Path(__file__).resolve().parents[1]
PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    LabelCompleter(LMAEConfig.tiny(**TINY)).save_pretrained(folder)
    return folder


def make_data(root: Path, n: int = 6, size=(48, 64), seed: int = 0) -> tuple[Path, Path, Path]:
    """``(images, broken labels, true labels)`` folders: synthetic pairs with half of their 8 px blocks
    set to 255."""
    make_dataset(root / "data", splits=(("train", n),), size=size, num_classes=N, seed=seed)
    images, truth = root / "data" / "train" / "images", root / "data" / "train" / "labels"
    degrade_folder(truth, root / "broken", ratio=0.5, block=8)
    return images, root / "broken", truth


def run(images, labels, out, model_dir, *extra) -> int:
    return main(
        ["complete", "--images", str(images), "--labels", str(labels), "--out", str(out)]
        + ["--model", str(model_dir), "--device", "cpu", "--quiet", *map(str, extra)]
    )


def hashes(*folders) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in folders for p in sorted(Path(d).rglob("*"))}


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def array(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def save_p(arr: np.ndarray, path: Path, palette=None, **info) -> None:
    """A palette PNG with a full palette (Pillow rewrites ids beyond a short palette)."""
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(palette or default_palette())
    im.save(path, **info)


def save_short_palette_png(arr: np.ndarray, path: Path, palette: list[int]) -> None:
    """An 8-bit palette PNG whose PLTE has fewer than 256 entries (as other tools write; Pillow cannot)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = arr.shape
    raw = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in arr)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes(palette))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def assert_all_valid(out: Path, labels: Path, names=None) -> None:
    for name in names or pngs(labels):
        label = array(labels / name)
        assert output_is_valid(out / name, label, N), name


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ----------------------------------------------------------------------------------------------------
# outputs and inputs
# ----------------------------------------------------------------------------------------------------
def test_outputs_keep_name_size_palette_and_only_missing_pixels_change(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=5)
    names = pngs(broken)
    # one label with its own palette, one grayscale ('L': no palette of its own), two with transparency (tRNS)
    save_p(array(broken / names[0]), broken / names[0], PALETTE)
    Image.fromarray(array(broken / names[1]), mode="L").save(broken / names[1])
    save_p(array(broken / names[2]), broken / names[2], PALETTE, transparency=0)
    save_p(array(broken / names[3]), broken / names[3], PALETTE, transparency=bytes(range(0, 250, 10)))
    before = hashes(images, broken)
    out, conf = tmp_path / "out", tmp_path / "conf"

    assert run(images, broken, out, model_dir, "--confidence-dir", conf) == 0

    assert hashes(images, broken) == before  # inputs untouched
    assert pngs(out) == names and pngs(conf) == names
    for name in names:
        with Image.open(broken / name) as src, Image.open(out / name) as res:
            assert res.format == "PNG" and res.mode == "P" and res.size == src.size
            want = src.getpalette() if src.mode == "P" else default_palette()
            assert res.getpalette()[: len(want)] == want
            assert res.info.get("transparency") == src.info.get("transparency")
            lab, got = np.asarray(src), np.asarray(res)
        missing = lab == 255
        assert missing.any() and (~missing).any()
        assert np.array_equal(got[~missing], lab[~missing])  # only missing pixels changed
        assert got.max() < N  # every filled value is a class id
        with Image.open(conf / name) as c:
            assert c.mode == "L" and c.size == (lab.shape[1], lab.shape[0])
            cv = np.asarray(c)
        assert (cv[~missing] == 255).all() and cv[missing].max() <= 255 and cv[missing].min() >= 255 // N - 1
    report = json.loads((out / "completion_report.json").read_text())
    assert report["done"] == 5 and report["failed"] == [] and report["finished"] is True
    assert report["images_per_s"] > 0


def test_progress_bar_on_stderr_shows_rate_and_eta(tmp_path, model_dir, capsys):
    images, broken, _ = make_data(tmp_path, n=3)
    complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), batch_size=1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3/3" in captured.err and "img/s" in captured.err and "<00:00" in captured.err  # rate, ETA


def test_a_short_input_palette_does_not_change_ids(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=2)
    name = pngs(broken)[0]
    lab = array(broken / name)
    lab[lab != 255] = lab[lab != 255] % 2  # ids 0, 1 and holes: a 2-colour palette covers the known ids
    save_p(lab, broken / name)
    (images / f"short{name[:-4]}.jpg").write_bytes((images / name.replace(".png", ".jpg")).read_bytes())
    save_short_palette_png(lab, broken / f"short{name}", [10, 20, 30, 40, 50, 60])
    with Image.open(broken / f"short{name}") as im:
        assert len(im.getpalette()) == 6 and np.array_equal(np.asarray(im), lab)
    r = complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), progress=False)
    assert r.done == 3 and not r.failed
    full, short = array(tmp_path / "out" / name), array(tmp_path / "out" / f"short{name}")
    assert (full[lab == 255] >= 2).any()  # ids beyond the short palette were predicted ...
    assert np.array_equal(full, short)  # ... and written as they are
    with Image.open(tmp_path / "out" / f"short{name}") as im:
        assert im.getpalette()[:6] == [10, 20, 30, 40, 50, 60]


def test_a_label_without_known_pixels_is_filled_with_a_warning_in_the_report(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=2)
    name = pngs(broken)[1]
    save_p(np.full_like(array(broken / name), 255), broken / name)
    r = complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), progress=False)
    assert r.done == 2 and not r.failed
    assert [f for f, _ in r.warnings] == [name] and "no known pixel" in r.warnings[0][1]
    assert array(tmp_path / "out" / name).max() < N
    rep = json.loads((tmp_path / "out" / "completion_report.json").read_text())
    assert rep["warnings"][0]["file"] == name


@pytest.fixture(scope="module")
def agnostic_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("agnostic")
    LabelCompleter(LMAEConfig.tiny(**dict(TINY, num_classes=8, class_agnostic=True))).save_pretrained(folder)
    return folder


def test_a_class_agnostic_rerun_redoes_outputs_whose_holes_were_not_filled(tmp_path, agnostic_dir):
    """With a class-agnostic model every id of a palette PNG is a class, the missing index too: an output
    whose holes still hold it is not done. The broken labels copied to --out, completed in place, or
    completed first without the --missing-index that marks their holes, are completed on the rerun."""
    images, broken, _ = make_data(tmp_path)
    names = pngs(broken)
    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).write_bytes((broken / name).read_bytes())
    assert run(images, broken, out, agnostic_dir) == 0
    assert run(images, out, out, agnostic_dir, "--in-place") == 0  # in place: the holes are filled already
    for name in names:
        holes = array(broken / name) == 255
        assert holes.any() and not (array(out / name)[holes] == 255).any()
    marked = tmp_path / "marked254"  # holes marked 254, completed first as if 255 marked them: nothing filled
    marked.mkdir()
    for name in names:
        lab = array(broken / name)
        save_p(np.where(lab == 255, 254, lab).astype(np.uint8), marked / name)
    out2 = tmp_path / "out2"
    assert run(images, marked, out2, agnostic_dir) == 0
    assert all(np.array_equal(array(out2 / n), array(marked / n)) for n in names)
    assert run(images, marked, out2, agnostic_dir, "--missing-index", 254) == 0
    report = json.loads((out2 / "completion_report.json").read_text())
    assert report["done"] == len(names) and report["skipped"] == 0
    assert all(not (array(out2 / n)[array(marked / n) == 254] == 254).any() for n in names)


def test_a_rerun_with_another_model_says_the_outputs_there_are_kept(tmp_path, model_dir, agnostic_dir):
    images, broken, _ = make_data(tmp_path, n=2)
    out = tmp_path / "out"
    first = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    assert first.model == str(model_dir.resolve()) and not first.notes
    again = complete_dataset(images, broken, out, model=str(agnostic_dir), progress=False)
    assert again.skipped == 2 and len(again.notes) == 1 and f"made by the model {model_dir.resolve()}" in again.notes[0]
    assert "note: the outputs already in" in again.summary()
    both = f"{model_dir.resolve()} and {agnostic_dir.resolve()}"
    assert json.loads((out / "completion_report.json").read_text())["model"] == both  # the outputs' makers
    same = complete_dataset(images, broken, out, model=str(agnostic_dir), progress=False)
    assert len(same.notes) == 1 and same.model == both  # the first model's outputs are still there
    unknown = complete_dataset(images, broken, out, model=LabelCompleter.from_pretrained(str(agnostic_dir)))
    assert not unknown.notes and unknown.model == both  # a completer of unknown origin: nothing to compare
    redo = complete_dataset(images, broken, out, model=str(model_dir), overwrite=True, progress=False)
    assert redo.done == 2 and not redo.notes and redo.model == str(model_dir.resolve())
    (out / "completion_report.json").write_text("[" * 100_000)  # an unreadable report: as none
    assert not complete_dataset(images, broken, out, model=str(agnostic_dir), progress=False).notes


def test_in_place_with_a_missing_index_that_is_a_class_is_refused(tmp_path, model_dir, agnostic_dir):
    """A class-specific model may fill a hole with the very id that marks the holes: in place, a completed
    label could not be told from one still to complete. A class-agnostic model never fills with it."""
    images, broken, _ = make_data(tmp_path)
    before = hashes(broken)
    with pytest.raises(ValueError, match=r"in_place=True with missing_index 0, a class id of this model \(0\.\.3\)"):
        complete_dataset(images, broken, broken, model=str(model_dir), in_place=True, missing_index=0)
    assert hashes(broken) == before
    for name in pngs(broken):  # holes 0, classes 1..4
        lab = array(broken / name)
        save_p(np.where(lab == 255, 0, lab + 1).astype(np.uint8), broken / name)
    r = complete_dataset(images, broken, broken, model=str(agnostic_dir), in_place=True, missing_index=0)
    assert r.done == len(pngs(broken)) and not r.failed
    assert all((array(broken / name) > 0).all() for name in pngs(broken))


def test_a_class_agnostic_model_fails_a_label_without_known_pixels_and_writes_nothing(tmp_path, agnostic_dir):
    images, broken, _ = make_data(tmp_path, n=3)
    first, second, third = pngs(broken)
    save_p(np.full_like(array(broken / second), 255), broken / second)
    r = complete_dataset(images, broken, tmp_path / "out", model=str(agnostic_dir), progress=False)
    assert r.done == 2 and [f for f, _ in r.failed] == [second] and "no known pixel" in r.failed[0][1]
    assert not (tmp_path / "out" / second).exists()
    # holes marked 254: the model's unknown marker 255 is no class, refused as completion refuses it
    marked = tmp_path / "marked"
    marked.mkdir()
    lab = array(broken / first)
    for name in (first, second):
        save_p(np.where(lab == 255, 254, lab).astype(np.uint8), marked / name)
    save_p(np.full_like(lab, 255), marked / third)
    out = tmp_path / "out254"
    out.mkdir()
    save_p(np.where(lab == 255, 255, lab).astype(np.uint8), out / first)  # an output holding 255 in the holes
    r = complete_dataset(images, marked, out, model=str(agnostic_dir), missing_index=254, progress=False)
    assert r.done == 2 and r.skipped == 0  # redone: 255 is no class of this model
    assert [f for f, _ in r.failed] == [third] and r.failed[0][1].startswith("ids out of range: ")
    assert "ids [255] (any id >= 0 but 255 is a class)" in r.failed[0][1]
    r = complete_dataset(images, broken, tmp_path / "out300", model=str(agnostic_dir), missing_index=300)
    assert r.done == 0 and all("no pixel holds 300 (8-bit labels hold 0..255)" in why for _, why in r.failed)


def test_a_class_agnostic_model_completes_16bit_labels_of_ids_above_255(tmp_path, agnostic_dir):
    """Any ids: the Python API completes them, and so does a folder (it refused ids of 255 and above)."""
    images, broken, _ = make_data(tmp_path, n=2)
    wide = tmp_path / "wide"
    wide.mkdir()
    for name in pngs(broken):
        lab = array(broken / name).astype(np.int64)
        Image.fromarray(np.where(lab == 255, 255, 1000 * (lab + 1)).astype(np.uint16)).save(wide / name)
    out = tmp_path / "out"
    r = complete_dataset(images, wide, out, model=str(agnostic_dir), progress=False)
    assert r.done == 2 and not r.failed
    for name in pngs(wide):
        lab, got = array(wide / name), array(out / name)
        known = lab != 255
        assert np.array_equal(got[known], lab[known]) and np.isin(got[~known], lab[known]).all()
        assert output_is_valid(out / name, lab, None, 255, agnostic=True)
        bad = got.copy()
        bad[~known] = 7  # an id the label's known pixels do not carry
        assert not np.isin(7, lab)
        Image.fromarray(bad.astype(np.uint16)).save(tmp_path / "bad.png")
        assert not output_is_valid(tmp_path / "bad.png", lab, None, 255, agnostic=True)
    assert complete_dataset(images, wide, out, model=str(agnostic_dir), progress=False).skipped == 2  # resumable


def test_a_failure_is_named_by_its_file_and_a_negative_missing_index_is_refused(
    tmp_path, agnostic_dir, model_dir, capsys, monkeypatch
):
    images, broken, _ = make_data(tmp_path, n=2)
    with pytest.raises(SystemExit) as e:
        run(images, broken, tmp_path / "out", agnostic_dir, "--missing-index", -1)
    assert e.value.code == 2 and "--missing-index: must be in 0..2147483647, got -1" in capsys.readouterr().err
    for bad in (-1, 2**31, 1.5, True):
        with pytest.raises(ValueError, match=r"missing_index must be an integer in 0\.\.2\^31 - 1"):
            complete_dataset(images, broken, tmp_path / "out", model=str(agnostic_dir), missing_index=bad)
    r = complete_dataset(images, broken, tmp_path / "out", model=str(agnostic_dir), missing_index=300, progress=False)
    assert [reason.split(" pixels")[0] for _, reason in r.failed] == ["ids out of range: " + str(n) for n in (
        int((array(broken / name) == 255).sum()) for name in pngs(broken))]  # fmt: skip
    assert all("that are not the missing index 300" in reason for _, reason in r.failed)
    r = complete_dataset(images, broken, tmp_path / "o2", model=str(model_dir), missing_index=254, progress=False)
    assert r.failed and all("say so with --missing-index / --void-index" in why for _, why in r.failed)

    def boom(self, images, labels, *args, **kwargs):
        raise ValueError(f"labels[{len(labels) - 1}]: boom")

    monkeypatch.setattr(LabelCompleter, "complete_batch", boom)
    r = complete_dataset(images, broken, tmp_path / "out3", model=str(agnostic_dir), progress=False)
    assert [reason for _, reason in r.failed] == ["completion failed: boom"] * 2  # each named by its file alone


def test_labels_of_several_sizes_in_one_batch_and_reader_processes(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path / "a", n=3, size=(40, 56), seed=1)
    images2, broken2, _ = make_data(tmp_path / "b", n=3, size=(32, 48), seed=2)
    for src, dst in ((images2, images), (broken2, broken)):
        for p in src.iterdir():
            p.rename(dst / f"b_{p.name}")
    r0 = complete_dataset(images, broken, tmp_path / "o0", model=str(model_dir), batch_size=4, progress=False)
    r2 = complete_dataset(
        images, broken, tmp_path / "o2", model=str(model_dir), batch_size=4, num_workers=2, progress=False
    )
    assert r0.done == r2.done == 6 and not r0.failed and not r2.failed
    for name in pngs(broken):
        assert array(tmp_path / "o0" / name).shape == array(broken / name).shape
        assert (tmp_path / "o0" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()


def test_out_in_labels_folder_is_refused_unless_in_place(tmp_path, model_dir, capsys):
    images, broken, _ = make_data(tmp_path, n=3)
    before = hashes(images, broken)
    for out in (broken, broken / "completed"):
        with pytest.raises(ValueError, match="labels folder or inside it"):
            complete_dataset(images, broken, out, model=str(model_dir), progress=False)
        assert run(images, broken, out, model_dir) == 2
        assert "--in-place" in capsys.readouterr().err
    with pytest.raises(ValueError, match="images folder"):
        complete_dataset(images, broken, images, model=str(model_dir), progress=False)
    with pytest.raises(ValueError, match="confidence_dir"):
        complete_dataset(images, broken, tmp_path / "o", confidence_dir=tmp_path / "o", model=str(model_dir))
    assert hashes(images, broken) == before and not (broken / "completed").exists()

    assert run(images, broken, broken, model_dir, "--in-place") == 0  # on purpose: labels replaced
    for name in pngs(broken):
        assert array(broken / name).max() < N
    r = complete_dataset(images, broken, broken, model=str(model_dir), in_place=True, progress=False)
    assert (r.done, r.skipped) == (0, 3)


# ----------------------------------------------------------------------------------------------------
# resume, overwrite, kill -9
# ----------------------------------------------------------------------------------------------------
def test_rerun_skips_valid_outputs_redoes_invalid_ones_and_overwrite_redoes_all(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=5)
    out, conf = tmp_path / "out", tmp_path / "conf"
    kw = dict(model=str(model_dir), confidence_dir=conf, progress=False)
    first = complete_dataset(images, broken, out, **kw)
    assert (first.done, first.skipped) == (5, 0)
    names = pngs(out)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in names}
    time.sleep(0.01)

    again = complete_dataset(images, broken, out, **kw)
    assert (again.done, again.skipped, again.failed) == (0, 5, [])
    assert {n: (out / n).stat().st_mtime_ns for n in names} == mtimes
    assert json.loads((out / "completion_report.json").read_text())["skipped"] == 5

    # damaged outputs are not "done": truncated file, wrong size, stale (known pixel differs), no confidence map
    (out / names[0]).write_bytes((out / names[0]).read_bytes()[:40])
    small = Image.open(out / names[1]).crop((0, 0, 8, 8))
    small.save(out / names[1])
    stale = array(out / names[2])
    known = array(broken / names[2]) != 255
    stale[known] = (stale[known] + 1) % N
    save_p(stale, out / names[2])
    (conf / names[3]).unlink()
    fixed = complete_dataset(images, broken, out, **kw)
    assert (fixed.done, fixed.skipped) == (4, 1)
    assert_all_valid(out, broken)

    mtimes = {n: (out / n).stat().st_mtime_ns for n in names}
    time.sleep(0.01)
    assert run(images, broken, out, model_dir, "--overwrite") == 0
    assert all((out / n).stat().st_mtime_ns != mtimes[n] for n in names)
    assert json.loads((out / "completion_report.json").read_text())["done"] == 5


def test_stray_temp_files_are_removed_and_never_counted(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=3)
    out = tmp_path / "out"
    out.mkdir()
    name = pngs(broken)[0]
    (out / f".{name}.abc_1234.tmp").write_bytes(b"\x89PNG half written")  # what kill -9 inside a write leaves
    (out / ".someone_else.png.xyz.tmp").write_bytes(b"not ours")
    r = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    assert r.done == 3
    assert not (out / f".{name}.abc_1234.tmp").exists()
    assert (out / ".someone_else.png.xyz.tmp").exists()  # not one of this run's files: left alone
    assert pngs(out) == pngs(broken)


def test_a_write_failing_midway_leaves_no_partial_file_and_is_reported(tmp_path, model_dir, monkeypatch):
    images, broken, _ = make_data(tmp_path, n=4)
    out, names = tmp_path / "out", pngs(broken)
    real_save, calls = Image.Image.save, []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the second output: half written, then the disk is full
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    r = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    monkeypatch.undo()
    assert all(str(c).endswith(".tmp") for c in calls)  # written beside the final name, then renamed
    assert r.done == 3 and [f for f, _ in r.failed] == [names[1]] and "No space left" in r.failed[0][1]
    assert pngs(out) == [n for n in names if n != names[1]]  # nothing under the failed file's name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    r = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    assert (r.done, r.skipped) == (1, 3)
    assert_all_valid(out, broken)


def _count_valid(out: Path, labels: Path) -> int:
    return sum(output_is_valid(out / n, array(labels / n), N) for n in pngs(out))


def test_kill_9_mid_run_then_rerun_completes_everything(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=40, size=(192, 256))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch_label_mae", "complete", "--images", str(images), "--labels", str(broken)]
    cmd += ["--out", str(out), "--model", str(model_dir), "--device", "cpu", "--batch-size", "1"]
    p = subprocess.Popen(cmd, env=env1(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            if out.is_dir() and len([e for e in os.scandir(out) if e.name.endswith(".png")]) >= 3:
                break
            time.sleep(0.001)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    written = pngs(out)
    assert 3 <= len(written) < 40  # killed mid-run
    assert _count_valid(out, broken) == len(written)  # nothing partial under a final name
    assert not (out / "completion_report.json").exists()

    r = subprocess.run(cmd + ["--quiet"], env=env1(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pngs(out) == pngs(broken)
    assert_all_valid(out, broken)
    assert not [e.name for e in os.scandir(out) if e.name.endswith(".tmp")]
    report = json.loads((out / "completion_report.json").read_text())
    assert report["skipped"] >= len(written) and report["done"] + report["skipped"] == 40


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------
def _break_some(images: Path, broken: Path) -> dict[str, str]:
    """Damage files 1..4 (sorted) in four ways, add an unpaired image and an unpaired label; returns
    {file: word expected in its reason}."""
    names = pngs(broken)
    (images / names[1].replace(".png", ".jpg")).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lab = array(broken / names[2])
    save_p(lab[:-8], broken / names[2])  # size differs from the image
    lab = array(broken / names[3])
    lab[0, :5] = 7  # id >= N and not the missing index
    save_p(lab, broken / names[3])
    (broken / names[4]).write_bytes(b"garbage")  # unreadable label
    Image.new("RGB", (64, 48)).save(images / "zz_no_label.jpg")
    save_p(np.zeros((48, 64)), broken / "zz_no_image.png")
    return {
        names[1]: "cannot read image",
        names[2]: "size mismatch",
        names[3]: "out of range",
        names[4]: "cannot read label",
        "zz_no_label.png": "unpaired",
        "zz_no_image.png": "unpaired",
    }


def test_bad_files_are_reported_with_reasons_and_the_rest_done(tmp_path, model_dir, capsys):
    images, broken, _ = make_data(tmp_path, n=8)
    expected = _break_some(images, broken)
    out, report = tmp_path / "out", tmp_path / "report.json"
    before = hashes(images, broken)

    assert run(images, broken, out, model_dir, "--report", report, "--batch-size", 3) == 1

    assert hashes(images, broken) == before
    rep = json.loads(report.read_text())
    failed = {f["file"]: f["reason"] for f in rep["failed"]}
    assert set(failed) == set(expected)
    for name, word in expected.items():
        assert word in failed[name], (name, failed[name])
    assert "[7]" in failed[pngs(broken)[3]]
    good = [n for n in pngs(broken) if n not in expected]
    assert rep["done"] == len(good) == 4 and rep["total"] == 10
    assert pngs(out) == good
    assert_all_valid(out, broken, good)
    printed = capsys.readouterr().out
    assert "4 completed" in printed and "6 failed" in printed and "size mismatch" in printed


def test_strict_stops_at_the_first_failure(tmp_path, model_dir, capsys):
    images, broken, _ = make_data(tmp_path, n=8)
    _break_some(images, broken)
    names = pngs(broken)
    out = tmp_path / "out"
    with pytest.raises(CompletionError, match="cannot read image") as e:
        complete_dataset(images, broken, out, model=str(model_dir), strict=True, batch_size=3, progress=False)
    assert e.value.file == names[1]
    assert pngs(out) == names[:1]  # everything before the failure done, nothing after
    rep = json.loads((out / "completion_report.json").read_text())
    assert rep["finished"] is False and [f["file"] for f in rep["failed"]] == [names[1]]

    assert run(images, broken, tmp_path / "out2", model_dir, "--strict") == 1
    assert "--strict" in capsys.readouterr().err
    assert pngs(tmp_path / "out2") == names[:1]


def test_voc_layout_defaults_to_voc_conventions(tmp_path):
    base = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = np.zeros((48, 64), np.uint8)
    label[:, 32:] = 15  # person
    label[20:24, :] = 255  # VOC's border
    label[4:12, 28:40] = 254  # a hole
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(base / "JPEGImages" / "a.jpg")
    im = Image.fromarray(label, mode="P")
    im.putpalette(default_palette())  # without, Pillow writes the PNG with a palette of the ids used
    im.save(base / "SegmentationClass" / "a.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    r = complete_dataset(None, None, tmp_path / "out", voc_root=tmp_path / "voc", image_set="train", progress=False)
    out = np.array(Image.open(tmp_path / "out" / "a.png"))
    assert r.ok and r.model == "voc-m0.5"
    assert (out[label == 255] == 255).all() and set(np.unique(out[label == 254]).tolist()) <= {0, 15}


def test_voc_layout(tmp_path, model_dir):
    images, broken, _ = make_data(tmp_path, n=4)
    base = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    images.rename(base / "JPEGImages")
    broken.rename(base / "SegmentationClass")
    ids = [n[:-4] for n in pngs(base / "SegmentationClass")]
    (base / "SegmentationClass" / f"{ids[3]}.png").unlink()
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[1:]) + "\n")  # ids[0] not listed
    out = tmp_path / "out"
    r = complete_dataset(
        None, None, out, voc_root=tmp_path / "voc", image_set="val", model=str(model_dir), progress=False
    )
    assert r.done == 2 and [f for f, _ in r.failed] == [f"{ids[3]}.png"] and "unpaired" in r.failed[0][1]
    assert pngs(out) == [f"{i}.png" for i in ids[1:3]]
    voc = ["complete", "--voc", str(tmp_path / "voc"), "--image-set", "val", "--out", str(tmp_path / "o2")]
    assert main([*voc, "--model", str(model_dir), "--quiet"]) == 1  # the listed id without label fails
    assert pngs(tmp_path / "o2") == pngs(out)
    assert main(["complete", "--voc", "x", "--images", "y", "--out", str(tmp_path / "o3")]) == 2
    assert main(["complete", "--images", str(images), "--out", str(tmp_path / "o3")]) == 2


# ----------------------------------------------------------------------------------------------------
# sharding
# ----------------------------------------------------------------------------------------------------
def test_ranks_split_the_files_without_overlap_or_gap(tmp_path, model_dir, monkeypatch):
    images, broken, _ = make_data(tmp_path, n=7)
    Image.new("RGB", (64, 48)).save(images / "unpaired.jpg")
    out = tmp_path / "out"
    done = []
    for rank in (0, 1):
        seen = set(pngs(out)) if out.exists() else set()
        r = complete_dataset(images, broken, out, model=str(model_dir), rank=rank, world_size=2, progress=False)
        done.append((set(pngs(out)) - seen) | {f for f, _ in r.failed})
        rep = json.loads((out / f"completion_report.rank{rank}.json").read_text())
        assert rep["rank"] == rank and rep["world_size"] == 2 and rep["total"] == 4
    assert not done[0] & done[1]
    assert done[0] | done[1] == set(pngs(broken)) | {"unpaired.png"}
    assert not (out / "completion_report.json").exists()
    r = complete_dataset(
        images, broken, out, model=str(model_dir), rank=1, world_size=2, report_path=tmp_path / "r.json", progress=False
    )
    assert r.skipped == 3 and (tmp_path / "r.rank1.json").is_file() and not (tmp_path / "r.json").exists()

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_rank() == (1, 3)
    assert resolve_rank(0, 1) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="rank"):
        resolve_rank()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_rank() == (0, 1)


def test_torchrun_two_processes(tmp_path, model_dir):
    pytest.importorskip("torch.distributed.run")
    images, broken, _ = make_data(tmp_path, n=9)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "torch_label_mae", "complete", "--images", str(images), "--labels", str(broken)]
    cmd += ["--out", str(out), "--model", str(model_dir), "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, env=env1(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    reps = [json.loads((out / f"completion_report.rank{k}.json").read_text()) for k in (0, 1)]
    assert [rep["rank"] for rep in reps] == [0, 1] and {rep["world_size"] for rep in reps} == {2}
    assert [rep["total"] for rep in reps] == [5, 4]
    assert sum(rep["done"] for rep in reps) == 9  # each file once
    assert pngs(out) == pngs(broken)
    assert_all_valid(out, broken)


# ----------------------------------------------------------------------------------------------------
# show, help
# ----------------------------------------------------------------------------------------------------
def test_show_writes_a_picture_with_four_panels(tmp_path, model_dir, capsys):
    images, broken, _ = make_data(tmp_path, n=3)
    out, conf = tmp_path / "out", tmp_path / "conf"
    assert run(images, broken, out, model_dir, "--confidence-dir", conf) == 0
    names = pngs(broken)
    pic = tmp_path / "show.png"
    args = ["show", "--images", str(images), "--labels", str(broken), "--completed", str(out), "--panel-width", "64"]
    capsys.readouterr()
    assert main([*args, "--confidence-dir", str(conf), "--out", str(pic), "--files", names[0], names[2][:-4]]) == 0
    assert "2 rows: image | input | completed | confidence)" in capsys.readouterr().out
    with Image.open(pic) as im:
        four = im.size
        assert im.width > 4 * 64 and im.height > 2 * 48  # image | broken | completed | confidence (+ bar)
    assert main([*args, "--out", str(tmp_path / "three.png")]) == 0
    assert "3 rows: image | input | completed)" in capsys.readouterr().out
    with Image.open(tmp_path / "three.png") as im:
        assert 3 * 64 < im.width < four[0] and im.height > 3 * 48


def test_help_texts_name_the_key_flags(capsys):
    for cmd, flags in {
        "complete": ["--images", "--labels", "--out", "--voc", "--image-set", "--model", "--missing-index"]
        + ["--batch-size", "--num-workers", "--device", "--confidence-dir", "--overwrite", "--in-place"]
        + ["--strict", "--report", "examples:", "torchrun"],
        "show": ["--images", "--labels", "--completed", "--confidence-dir", "--out", "--files", "examples:"],
    }.items():
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (cmd, flag)
