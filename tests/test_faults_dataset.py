"""Faults of a dataset run (``label-mae complete``): outputs that would land on inputs, files too large
to decode, write failures, signals, concurrent runs on one folder, reader processes outliving their
parent, half-set torchrun variables. Each test could fail; none may change an input file."""

from __future__ import annotations

import errno
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
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from synth import TINY_MODEL, make_dataset

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.cli import main
from torch_label_mae.complete_dataset import (
    MAX_BATCH_PIXELS,
    MAX_PIXELS,
    Interrupted,
    OutputLockedError,
    OutputWriteError,
    complete_dataset,
    output_is_valid,
    resolve_rank,
)
from torch_label_mae.data import degrade_folder
from torch_label_mae.io import atomic_write
from torch_label_mae.outputs import OutputLock, check_outputs, read_json_object, remove_stale_temp_files

N = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    LabelCompleter(LMAEConfig.tiny(**dict(TINY_MODEL, num_classes=N))).save_pretrained(folder)
    return folder


def make_data(root: Path, n: int = 6, size=(48, 64)) -> tuple[Path, Path]:
    """``(images, broken labels)``: synthetic pairs with half of their 8 px blocks set to 255."""
    make_dataset(root / "data", splits=(("train", n),), size=size, num_classes=N, seed=0)
    degrade_folder(root / "data" / "train" / "labels", root / "broken", ratio=0.5, block=8)
    return root / "data" / "train" / "images", root / "broken"


def hashes(*folders) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in folders for p in sorted(Path(d).rglob("*"))}


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def cli(images, labels, out, model_dir, *extra) -> int:
    return main(
        ["complete", "--images", str(images), "--labels", str(labels), "--out", str(out)]
        + ["--model", str(model_dir), "--device", "cpu", "--quiet", *map(str, extra)]
    )


def command(images, labels, out, model_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "torch_label_mae", "complete", "--images", str(images), "--labels", str(labels)] + [
        "--out",
        str(out),
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        *map(str, extra),
    ]


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def all_valid(out: Path, labels: Path) -> bool:
    return all(output_is_valid(out / n, np.asarray(Image.open(labels / n)), N) for n in pngs(out))


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


# ----------------------------------------------------------------------------------------------------
# 1. no output on an input
# ----------------------------------------------------------------------------------------------------
def test_report_and_confidence_maps_can_never_land_on_inputs(tmp_path, model_dir, capsys):
    images, broken = make_data(tmp_path, n=3)
    before = hashes(images, broken)
    label, image = sorted(broken.glob("*.png"))[0], sorted(images.iterdir())[0]
    (tmp_path / "link").symlink_to(broken)
    attempts = [
        ("--report", label),  # the input label itself
        ("--report", image),
        ("--report", broken / "report.json"),  # a new file inside the labels folder
        ("--report", tmp_path / "out" / ".." / "broken" / "r.json"),  # through ..
        ("--report", tmp_path / "link" / label.name),  # through a symlink
        ("--report", tmp_path / "out" / label.name),  # an output's own name
        ("--confidence-dir", broken / "conf"),
        ("--confidence-dir", images / "conf"),
        ("--confidence-dir", tmp_path / "link"),
    ]
    for flag, path in attempts:
        assert cli(images, broken, tmp_path / "out", model_dir, flag, path) == 2, (flag, path)
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err
    assert cli(images, broken, tmp_path / "link" / "out", model_dir) == 2  # --out through a symlink
    assert "labels folder" in capsys.readouterr().err
    assert hashes(images, broken) == before
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_show_evaluate_and_degrade_outputs_are_checked_too(tmp_path, model_dir, capsys):
    images, broken = make_data(tmp_path, n=2)
    out = tmp_path / "out"
    assert cli(images, broken, out, model_dir) == 0
    before = hashes(images, broken, out)
    for target in (broken / "pic.png", out / pngs(out)[0], images / "x.png"):
        code = main(
            ["show", "--images", str(images), "--labels", str(broken), "--completed", str(out)]
            + [
                "--out",
                str(target),
            ]
        )
        assert code == 2 and "inside" in capsys.readouterr().err
    data = tmp_path / "data"
    code = main(["evaluate", "--model", str(model_dir), "--data", str(data), "--json", str(data / "dataset.json")])
    assert code == 2 and "--json" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(broken)
    code = main(["degrade", "--labels", str(broken), "--out", str(tmp_path / "link" / "more")])
    assert code == 2 and "inside the labels folder" in capsys.readouterr().err
    assert hashes(images, broken, out) == before


@given(
    parts=st.lists(st.sampled_from(["labels", "images", "out", "..", "link", "sub"]), min_size=1, max_size=5),
)
def test_check_outputs_refuses_exactly_the_paths_inside_an_input(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / "paths"
    if not root.exists():
        for d in ("labels", "images", "out"):
            (root / d).mkdir(parents=True)
        (root / "link").symlink_to(root / "labels")
    path = root.joinpath(*parts)
    real = path.resolve()
    inside = any(real == root / d or root / d in real.parents for d in ("labels", "images"))
    try:
        check_outputs([("out", path)], [("labels", root / "labels"), ("images", root / "images")])
        refused = False
    except ValueError:
        refused = True
    assert refused == inside


# ----------------------------------------------------------------------------------------------------
# 2. memory: files over the limit, batches by pixels
# ----------------------------------------------------------------------------------------------------
def test_atomic_write_flushes_the_file_to_disk_before_renaming_it(tmp_path, monkeypatch):
    """Renamed before its bytes reach the disk, a power cut could leave an empty file under the real name."""
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.fstat(fd).st_size)), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", Path(b).name)), replace(a, b))[1])
    atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("hello"))
    assert calls == [("fsync", 5), ("replace", "x.txt")] and (tmp_path / "x.txt").read_text() == "hello"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@given(obj=_json, cut=st.integers(0, 40))
def test_read_json_object_gives_the_object_or_none_and_never_raises(tmp_path_factory, obj, cut):
    path = tmp_path_factory.mktemp("json") / "record.json"
    text = json.dumps(obj)
    path.write_text(text, encoding="utf-8")
    assert read_json_object(path) == (obj if isinstance(obj, dict) else None)
    assert read_json_object(path, max_bytes=len(text.encode()) - 1) is None  # too large: not read
    path.write_text(text[:cut], encoding="utf-8")  # a run killed while writing it: no prefix of an object parses
    assert read_json_object(path) == (obj if isinstance(obj, dict) and cut >= len(text) else None)
    assert read_json_object(path.with_name("absent.json")) is None
    assert read_json_object(path.parent) is None  # a folder


def test_a_file_over_max_pixels_is_reported_without_decoding_and_the_rest_done(tmp_path, model_dir, monkeypatch):
    images, broken = make_data(tmp_path, n=4)
    big = np.zeros((120, 160), np.uint8)  # 19,200 px; the others 3,072
    Image.fromarray(big, mode="P").save(broken / "zz_big.png")
    Image.new("RGB", (160, 120)).save(images / "zz_big.jpg")
    decoded = []
    real_load = Image.Image.load

    def spy(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    r = complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), max_pixels=10_000, progress=False)
    monkeypatch.undo()
    assert r.done == 4 and [f for f, _ in r.failed] == ["zz_big.png"]
    assert "too large" in r.failed[0][1] and "160x120" in r.failed[0][1] and "max_pixels" in r.failed[0][1]
    assert (160, 120) not in decoded  # refused from the header alone
    report = json.loads((tmp_path / "out" / "completion_report.json").read_text())
    assert report["failed"][0]["file"] == "zz_big.png"
    assert cli(images, broken, tmp_path / "out2", model_dir, "--max-pixels", 10_000) == 1


def png_header_only(path: Path, width: int, height: int) -> None:
    """A palette PNG that claims ``width x height`` but holds almost no data (decoding it would fail):
    what a reader that trusts the header before decoding sees, at no memory cost."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes(768))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_huge_files_at_default_limits_are_reported_and_the_run_goes_on(tmp_path, model_dir):
    images, broken = make_data(tmp_path, n=2)
    png_header_only(broken / "huge.png", 12000, 12000)  # the fault probe's 144-megapixel label
    Image.new("RGB", (8, 8)).save(images / "huge.jpg")
    png_header_only(broken / "bomb.png", 20000, 20000)  # over Pillow's own decompression-bomb limit
    Image.new("RGB", (8, 8)).save(images / "bomb.jpg")
    r = complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), progress=False)
    reasons = dict(r.failed)
    assert r.done == 2 and sorted(reasons) == ["bomb.png", "huge.png"]
    assert "too large" in reasons["huge.png"] and "12000x12000 = 144,000,000 pixels" in reasons["huge.png"]
    assert "cannot read label" in reasons["bomb.png"]


@pytest.mark.parametrize(("max_batch_pixels", "expected"), [(3072 * 2, [2, 2, 1]), (3072, [1] * 5), (10**9, [4, 1])])
def test_batches_are_formed_by_pixel_count(tmp_path, model_dir, max_batch_pixels, expected):
    images, broken = make_data(tmp_path, n=5)
    completer = LabelCompleter.from_pretrained(str(model_dir), device="cpu")
    sizes = []
    real = completer.complete_batch

    def spy(imgs, labels, **kw):
        sizes.append(len(imgs))
        return real(imgs, labels, **kw)

    completer.complete_batch = spy
    r = complete_dataset(
        images,
        broken,
        tmp_path / "out",
        model=completer,
        batch_size=4,
        max_batch_pixels=max_batch_pixels,
        progress=False,
    )
    assert r.done == 5 and sizes == expected


def test_the_cli_defaults_are_the_library_limits(capsys):
    with pytest.raises(SystemExit):
        main(["complete", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {MAX_PIXELS})" in text and f"(default: {MAX_BATCH_PIXELS})" in text


def test_limits_are_validated(tmp_path, model_dir):
    images, broken = make_data(tmp_path, n=1)
    for kw in (dict(max_pixels=0), dict(max_batch_pixels=-1), dict(batch_size=0), dict(max_pixels=1.5)):
        with pytest.raises(ValueError, match=next(iter(kw))):
            complete_dataset(images, broken, tmp_path / "out", model=str(model_dir), progress=False, **kw)


# ----------------------------------------------------------------------------------------------------
# 5. write failures
# ----------------------------------------------------------------------------------------------------
def test_an_unwritable_out_folder_is_found_before_any_work(tmp_path, model_dir, monkeypatch, capsys):
    images, broken = make_data(tmp_path, n=3)
    out = tmp_path / "out"
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputWriteError, match="Read-only file system"):
        complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    assert cli(images, broken, out, model_dir) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write here" in err and "Traceback" not in err


def test_a_full_disk_stops_the_run_with_a_summary_and_a_report_elsewhere(tmp_path, model_dir, monkeypatch, capsys):
    images, broken = make_data(tmp_path, n=6)
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    real_replace, written = os.replace, []

    def full(src, dst):
        if Path(dst).parent == out and len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert cli(images, broken, out, model_dir, "--batch-size", 1) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2 completed" in err and "No space left" in err
    fallback = cwd / f"label-mae-report-{os.getpid()}.json"
    assert f"report: {fallback}" in err
    report = json.loads(fallback.read_text())
    assert report["done"] == 2 and report["finished"] is False and len(report["failed"]) == 3  # stopped after 3
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert cli(images, broken, out, model_dir) == 0 and all_valid(out, broken) and len(pngs(out)) == 6


def test_no_report_anywhere_is_one_line_not_a_traceback(tmp_path, model_dir, monkeypatch, capsys):
    images, broken = make_data(tmp_path, n=2)
    out = tmp_path / "out"
    real_replace = os.replace

    def nowhere(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", nowhere)
    r = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
    assert r.done == 2 and r.report_path is None and len(r.errors) == 3
    assert "could not be written anywhere" in r.summary()


# ----------------------------------------------------------------------------------------------------
# 5. signals, and workers that die with their parent
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_current_file_writes_the_report_and_exits_128_plus_n(tmp_path, model_dir, sig, code):
    images, broken = make_data(tmp_path, n=30, size=(192, 256))
    out = tmp_path / "out"
    cmd = command(images, broken, out, model_dir, "--batch-size", 1, "--quiet")
    p = subprocess.Popen(cmd, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: out.is_dir() and len(pngs(out)) >= 2), "no output appeared"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == code, err[-2000:]
    assert "Traceback" not in err and "rerun the same command" in err
    report = json.loads((out / "completion_report.json").read_text())
    assert report["finished"] is False and report["done"] == len(pngs(out)) < 30
    assert all_valid(out, broken) and not [q for q in out.iterdir() if q.name.endswith(".tmp")]
    assert not (out / ".label-mae.lock").exists()
    r = subprocess.run(cmd, env=env1(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and len(pngs(out)) == 30


def _children(pid: int) -> set[int]:
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the workers")
def test_reader_processes_die_with_a_killed_parent(tmp_path, model_dir):
    images, broken = make_data(tmp_path, n=40, size=(192, 256))
    out = tmp_path / "out"
    cmd = command(images, broken, out, model_dir, "--batch-size", 1, "--num-workers", 2, "--quiet")
    p = subprocess.Popen(cmd, env=env1(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: out.is_dir() and len(pngs(out)) >= 1), "no output appeared"
        workers = _children(p.pid)
        assert len(workers) >= 2
        p.kill()
        p.wait(timeout=30)
        assert wait_for(lambda: not any(_alive(w) for w in workers), timeout=10), "workers outlived their parent"
    finally:
        p.kill()


# ----------------------------------------------------------------------------------------------------
# 6. one writer per --out
# ----------------------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_out_is_refused_while_the_first_lives(tmp_path, model_dir, capsys):
    images, broken = make_data(tmp_path, n=24, size=(192, 256))
    out = tmp_path / "out"
    cmd = command(images, broken, out, model_dir, "--batch-size", 1, "--quiet")
    a = subprocess.Popen(cmd, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(pngs(out)) >= 1 if out.is_dir() else False), "run A wrote nothing"
        a.send_signal(signal.SIGSTOP)  # A holds the lock and has temp files in flight, paused
        with pytest.raises(OutputLockedError, match=f"pid {a.pid}"):
            complete_dataset(images, broken, out, model=str(model_dir), progress=False)
        assert cli(images, broken, out, model_dir) == 2
        assert f"pid {a.pid}" in capsys.readouterr().err
        a.send_signal(signal.SIGCONT)
        _, err = a.communicate(timeout=120)
    finally:
        a.kill()
    assert a.returncode == 0, err[-2000:]
    assert len(pngs(out)) == 24 and all_valid(out, broken)
    assert json.loads((out / "completion_report.json").read_text())["done"] == 24


def test_stale_locks_and_dead_runs_temp_files_are_removed_live_ones_kept(tmp_path, model_dir):
    images, broken = make_data(tmp_path, n=2)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = pngs(broken)[0]
    (out / ".label-mae.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    (out / f".{name}.{dead.pid}.abc123.tmp").write_bytes(b"half")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".{name}.{live.pid}.def456.tmp").write_bytes(b"in flight")
        r = complete_dataset(images, broken, out, model=str(model_dir), progress=False)
        assert r.done == 2
        assert not (out / f".{name}.{dead.pid}.abc123.tmp").exists()
        assert (out / f".{name}.{live.pid}.def456.tmp").exists()  # another live run's file: left alone
        assert not (out / ".label-mae.lock").exists()  # released at the end

        (out / ".label-mae.lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        with pytest.raises(OutputLockedError, match="another label-mae run"):
            complete_dataset(images, broken, out, model=str(model_dir), progress=False)
        (out / ".label-mae.lock").write_text("{half a lock")  # a run killed while taking it
        assert complete_dataset(images, broken, out, model=str(model_dir), progress=False).skipped == 2
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temp_files(out, {name}) == 1  # now that run is dead too


TAKE_LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("outputs", sys.argv[2])  # the module alone: no torch to import
outputs = sys.modules["outputs"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(outputs)
OutputLock, OutputLockedError = outputs.OutputLock, outputs.OutputLockedError
sys.stdin.readline()  # all start together
try:
    with OutputLock(sys.argv[1]):
        print("took", flush=True)
        time.sleep(1.5)
except OutputLockedError:
    print("refused", flush=True)
"""


def test_of_runs_taking_over_one_stale_lock_at_once_one_gets_the_folder(tmp_path):
    import torch_label_mae.outputs

    outputs_py, PIPE = torch_label_mae.outputs.__file__, subprocess.PIPE
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for _ in range(3):  # three rounds: a race that is lost now and then shows
        (out / ".label-mae.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
        runs = [
            subprocess.Popen([sys.executable, "-c", TAKE_LOCK, str(out), outputs_py], stdin=PIPE, stdout=PIPE)
            for _ in range(6)
        ]
        time.sleep(0.5)  # loaded and waiting
        for r in runs:
            r.stdin.write(b"go\n")
            r.stdin.flush()
        said = sorted(r.communicate(timeout=60)[0].decode().strip() for r in runs)
        assert said == ["refused"] * 5 + ["took"]
        assert not list(out.iterdir())  # released, nothing left behind


def test_ranks_of_one_run_share_a_folder_but_a_differently_sharded_run_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, 0, 2), OutputLock(out, 1, 2):
        assert sorted(p.name for p in out.glob(".label-mae*")) == [".label-mae.rank0.lock", ".label-mae.rank1.lock"]
        with pytest.raises(OutputLockedError):
            OutputLock(out, 0, 1).__enter__()
        with pytest.raises(OutputLockedError):
            OutputLock(out, 1, 2).__enter__()
    assert not list(out.glob(".label-mae*"))


# ----------------------------------------------------------------------------------------------------
# 8. torchrun variables
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"RANK": "1"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_half_set_rank_variables_are_refused(monkeypatch, env):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="RANK"):
        resolve_rank()


@pytest.mark.parametrize(
    ("rank", "world_size", "bad"), [(1.5, 2, "rank"), (0, 2.7, "world_size"), (True, 2, "rank"), ("1", 2, "rank")]
)
def test_rank_and_world_size_that_are_no_integers_are_named(rank, world_size, bad):
    with pytest.raises(ValueError, match=rf"^{bad} must be an integer, got "):
        resolve_rank(rank, world_size)
    assert resolve_rank(np.int64(1), np.int64(2)) == (1, 2)


def test_a_report_path_that_is_the_output_folder_is_refused_before_any_work(tmp_path):
    data = make_dataset(tmp_path / "d", splits=(("val", 2),))
    images, labels = data / "val" / "images", data / "val" / "labels"
    with pytest.raises(ValueError, match="would collide with an output"):
        complete_dataset(images, labels, tmp_path / "o9", report_path=tmp_path / "o9")
    assert not (tmp_path / "o9").exists()


def test_interrupted_carries_the_shell_exit_code():
    assert Interrupted(signal.SIGINT).exit_code == 130 and Interrupted(signal.SIGTERM).exit_code == 143
