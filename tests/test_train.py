"""Training: a short run, resume, SIGTERM checkpointing, and DDP under torchrun with 2 CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from synth import TINY_MODEL, make_dataset

from torch_label_mae.completer import LabelCompleter
from torch_label_mae.train import TrainConfig, train

TINY = dict(TINY_MODEL, label_prior=True)


def _cfg(data, out, **kw):
    return TrainConfig(
        data=str(data), out=str(out), model="tiny", model_overrides=TINY, batch_size=4, warmup_steps=1, threads=1, **kw
    )


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_logs_checkpoints_exports_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1))
    first = _log(out)
    assert [r["epoch"] for r in first] == [1]
    assert {"loss", "lr", "val_pa_miou"} <= set(first[0])
    assert 0.0 <= first[0]["val_pa_miou"] <= 1.0
    assert (out / "checkpoint.pt").is_file()
    completer = LabelCompleter.from_pretrained(str(out / "last"))  # exported Hub folder loads strictly
    assert completer.config.num_classes == 4 and not completer.training
    state = train(_cfg(data, out, epochs=2), resume=True)
    assert [r["epoch"] for r in _log(out)] == [1, 2]
    assert state["step"] == 4  # 8 images / batch 4 = 2 steps per epoch, continued rather than restarted


def _run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch_label_mae", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 64), ("val", 2)))
    out = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    p = _run_cli(
        ["--data", str(data), "--out", str(out), "--batch-size", "2", "--epochs", "100", "--threads", "1", *sets]
    )
    deadline = time.time() + 60
    while time.time() < deadline and "step" not in (p.stdout.readline() or ""):
        pass
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == 0
    assert (out / "checkpoint.pt").is_file()
    assert _log(out)[-1]["partial"] is True


def test_torchrun_two_cpu_ranks_stay_in_sync(tmp_path):
    pytest.importorskip("torch.distributed.run")
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "torch_label_mae.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--val-split",
        "",
        "--threads",
        "1",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = _log(out)
    assert log[-1]["step"] == 2
    assert log[-1]["ranks_in_sync"] is True


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_warmup_then_schedule(schedule):
    import torch

    from torch_label_mae.train import set_lr

    cfg = TrainConfig(lr=1e-3, warmup_steps=10, schedule=schedule)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    lrs = []
    for step in range(110):
        set_lr(opt, cfg, step, total_steps=110)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    if schedule == "cosine":
        assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5e-4) and lrs[-1] < 1e-6
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    else:  # the plateau scheduler owns the rate after warm-up
        assert lrs[10:] == [pytest.approx(1e-3)] * 100


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(schedule="linear"), "schedule must be"),
        (dict(optimizer="sgd"), "optimizer must be"),
        (dict(loss="focal"), "loss must be"),
        (dict(model_overrides={"label_priors": True}), r"unknown model config key\(s\) \['label_priors'\]"),
    ],
)
def test_bad_train_config_is_named(tmp_path, bad, match):
    data = make_dataset(tmp_path / "data")
    cfg = TrainConfig(**{**dict(data=str(data), out=str(tmp_path / "run"), model="tiny"), **bad})
    with pytest.raises(ValueError, match=match):
        train(cfg)


def test_training_with_block_holes_off_the_patch_grid(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    state = train(_cfg(data, out, epochs=1, block_holes=1.0, block_range=(3, 11), ratio_range=(0.3, 0.7), loss="ce"))
    assert state["step"] == 2 and _log(out)[-1]["loss"] > 0


def test_fine_tuning_starts_from_the_init_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    train(_cfg(data, tmp_path / "first", epochs=1))
    start = LabelCompleter.from_pretrained(str(tmp_path / "first" / "last"))
    out = tmp_path / "tuned"
    train(_cfg(data, out, epochs=1, init=str(tmp_path / "first" / "last"), lr=0.0, val_split=""))
    tuned = LabelCompleter.from_pretrained(str(out / "last"))
    assert tuned.config == start.config
    for (k, a), b in zip(start.state_dict().items(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # lr 0: the weights it started from


def test_fine_tuning_refuses_other_classes_and_shape_changes(tmp_path):
    data = make_dataset(tmp_path / "data")
    train(_cfg(data, tmp_path / "first", epochs=1))
    other = make_dataset(tmp_path / "other", num_classes=3)
    with pytest.raises(ValueError, match="classes"):
        train(_cfg(other, tmp_path / "x", epochs=1, init=str(tmp_path / "first" / "last")))
    cfg = _cfg(data, tmp_path / "y", epochs=1, init=str(tmp_path / "first" / "last"))
    cfg.model_overrides = {**cfg.model_overrides, "decoder_dim": 48}
    with pytest.raises(ValueError, match="shapes"):
        train(cfg)
