"""Training: a short run, resume, SIGTERM checkpointing, and DDP under torchrun with 2 CPU ranks."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synth import TINY_MODEL, make_dataset

from torch_label_mae.completer import LabelCompleter
from torch_label_mae.train import TrainConfig, train

TINY = dict(TINY_MODEL, label_prior=True)


def _cfg(data, out, **kw):
    kw = {"workers": 0, **kw}  # in-process pipeline: no worker start-up in the short tests
    if "init" not in kw:  # from scratch, the tiny config
        kw = {"model": "tiny", **kw}
    common = dict(model_overrides=TINY, batch_size=4, warmup_steps=1, threads=1)
    return TrainConfig(data=str(data), out=str(out), **common, **kw)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_logs_checkpoints_exports_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1))
    first = _log(out)
    assert [r["epoch"] for r in first] == [0, 1]  # epoch 0: the prior alone on val
    assert 0.0 <= first[0]["prior_pa_miou"] <= 1.0 and first[0]["prior"] == "nearest"
    assert {"loss", "lr", "val_pa_miou", "prior_pa_miou"} <= set(first[1])
    assert 0.0 <= first[1]["val_pa_miou"] <= 1.0
    assert (out / "checkpoint.pt").is_file()
    completer = LabelCompleter.from_pretrained(str(out / "last"))  # exported Hub folder loads strictly
    assert completer.config.num_classes == 4 and not completer.training
    dead = 2**22 + 12345  # above Linux's pid_max: no live process
    stale = [out / f".checkpoint.pt.{dead}.a1.tmp", out / "last" / f".model.safetensors.{dead}.a2.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")  # what a run killed mid-write leaves
    state = train(_cfg(data, out, epochs=2), resume=True)
    assert not any(p.exists() for p in stale)
    assert [r["epoch"] for r in _log(out)] == [0, 1, 2]  # the prior is measured once per run folder
    assert state["step"] == 4  # 8 images / batch 4 = 2 steps per epoch, continued rather than restarted


def test_a_resume_starts_from_the_checkpoints_weights_and_optimizer_state(tmp_path, monkeypatch):
    """The step counter alone would not tell a resume that restarted from fresh weights, or with an empty
    optimizer, from one that continued."""
    import torch_label_mae.train as train_module

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1))
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    seen = {}
    build = train_module.build

    def spy(*args, **kwargs):
        run = build(*args, **kwargs)
        seen["model"] = {k: v.clone() for k, v in run.model.state_dict().items()}
        seen["opt"] = copy.deepcopy(run.opt.state_dict())  # training updates its tensors in place
        return run

    monkeypatch.setattr(train_module, "build", spy)
    train(_cfg(data, out, epochs=2), resume=True)
    assert seen["model"].keys() == blob["model"].keys()
    assert all(torch.equal(seen["model"][k], v) for k, v in blob["model"].items())
    want, got = blob["optimizer"]["state"], seen["opt"]["state"]
    assert want and got.keys() == want.keys()  # Adam's moments, not an empty state
    for i, moments in want.items():
        assert all(torch.equal(got[i][k], v) for k, v in moments.items() if isinstance(v, torch.Tensor))


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


def test_a_second_run_on_the_same_out_is_refused_and_the_callers_threads_come_back(tmp_path):
    """One run per --out (the lock of ``outputs.OutputLock``, as ``complete`` and ``audit`` take it); train
    sets torch's threads for itself and gives the caller's back, also when it is refused."""
    from torch_label_mae.outputs import OutputLock, OutputLockedError

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with OutputLock(out), pytest.raises(OutputLockedError, match="another label-mae run writes here"):
            train(dataclasses.replace(_cfg(data, out, epochs=1), threads=2))
        assert torch.get_num_threads() == 1 and not (out / "log.jsonl").exists()
        train(dataclasses.replace(_cfg(data, out, epochs=1, max_steps=1), threads=2))  # the lock released: it runs
        assert torch.get_num_threads() == 1 and not list(out.glob(".label-mae*.lock"))
    finally:
        torch.set_num_threads(before)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 64), ("val", 2)))
    out = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    p = _run_cli(
        ["--data", str(data), "--out", str(out), "--model", "tiny", "--batch-size", "2", "--epochs", "100",
         "--threads", "1", *sets]
    )  # fmt: skip
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
        "--model",
        "tiny",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks, even beside a GPU
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


def test_cosine_decays_to_zero_over_the_time_budget():
    import torch

    from torch_label_mae.train import set_lr

    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_minutes=5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    lrs = []
    for spent in (0.0, 0.5, 1.0, 2.0):  # step 20 of 10,000: the step count alone would keep the rate
        set_lr(opt, cfg, 20, total_steps=10_000, spent=spent)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3, rel=1e-4) and lrs[1] == pytest.approx(5e-4, rel=1e-3)
    assert lrs[2] == pytest.approx(0.0, abs=1e-12) and lrs[3] == pytest.approx(0.0, abs=1e-12)


def test_the_time_budget_counts_over_resumes(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    state = train(_cfg(data, out, epochs=50, max_minutes=60, max_steps=1))
    spent = state["seconds"]
    assert state["step"] == 1 and spent > 0 and _log(out)[-1]["partial"] is True
    state = train(_cfg(data, out, epochs=50, max_minutes=spent / 120), resume=True)  # spent: nothing to do
    assert state["step"] == 1 and state["seconds"] == spent
    state = train(_cfg(data, out, epochs=50, max_minutes=60, max_steps=2), resume=True)  # a bigger budget
    assert state["step"] == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(schedule="linear"), "schedule must be"),
        (dict(optimizer="sgd"), "optimizer must be"),
        (dict(loss="focal"), "loss must be"),
        (dict(model_overrides={"label_priors": True}), r"unknown model config key\(s\) \['label_priors'\]"),
        (dict(hole_index=300), "hole_index must be in 0..255, got 300"),
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


def test_defaults_are_the_recipe_that_beats_the_prior():
    from torch_label_mae.train import scaled_lr

    cfg = TrainConfig()
    assert (cfg.loss, cfg.label_prior, cfg.optimizer, cfg.schedule) == ("ce", True, "adamw", "cosine")
    assert cfg.lr is None and scaled_lr(16) == pytest.approx(1e-3) and scaled_lr(64) == pytest.approx(2e-3)


def test_a_val_limit_below_1_is_refused_before_training():
    from torch_label_mae.train import check_config

    with pytest.raises(ValueError, match="val_limit"):
        check_config(TrainConfig(data="x", model="tiny", val_limit=0))


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (dict(max_steps=0), "max_steps must be > 0"),
        (dict(max_steps=-1), "max_steps must be > 0"),
        (dict(max_minutes=0.0), "max_minutes must be > 0"),
        (dict(max_minutes=float("nan")), "max_minutes must be > 0"),
        (dict(threads=0), "threads must be > 0"),
        (dict(warmup_steps=-3), "warmup_steps must be >= 0"),
        (dict(save_every=-1.0), "save_every must be >= 0"),
        (dict(block_holes=2.0), "block_holes must be in"),
        (dict(crop_scale=(0.0, 2.0)), "crop_scale must be LO HI"),
        (dict(crop_scale=(0.8, 0.5)), "crop_scale must be LO HI"),
        (dict(mix=(0.0, 0.0, 0.0)), "mix must be three weights >= 0, not all 0"),
        (dict(mix=(1.0, -1.0, 2.0)), "mix must be three weights"),
    ],
)
def test_budgets_and_shares_out_of_range_are_refused_before_training(setting, says):
    from torch_label_mae.train import check_config

    with pytest.raises(ValueError, match=says.replace(".", r"\.").replace("(", r"\(")):
        check_config(TrainConfig(data="x", model="tiny", **setting))


def test_a_voc_kind_on_a_folder_without_voc_is_one_line(tmp_path, capsys):
    from torch_label_mae.train import main_train

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main_train(["--data", str(data), "--out", str(out), "--model", "tiny", "--dataset-kind", "voc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no voc dataset there" in err and "Traceback" not in err


def test_no_label_prior_is_refused_when_starting_from_init():
    from torch_label_mae.train import DEFAULT_INIT, check_config

    with pytest.raises(ValueError, match="--model"):  # the init keeps its prior: the flag would do nothing
        check_config(TrainConfig(data="x", label_prior=False, init=DEFAULT_INIT))
    check_config(TrainConfig(data="x", label_prior=False, model="tiny"))


def test_guard_warns_when_the_model_is_below_its_prior(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    no_prior = {k: v for k, v in TINY.items() if k != "label_prior"}
    cfg = _cfg(data, out, epochs=1, label_prior=False)
    cfg.model_overrides = no_prior
    with pytest.warns(RuntimeWarning, match="below the label prior alone"):
        state = train(cfg)  # an untrained model without a prior is far below nearest fill
    log = _log(out)
    assert log[0]["prior"].startswith("nearest") and log[1]["val_pa_miou"] < log[1]["prior_pa_miou"]
    assert state["best_metrics"]["prior_pa_miou"] == log[0]["prior_pa_miou"]


@pytest.mark.parametrize("soft, combiner", [(False, 0), (True, 0), (True, 8)])
def test_prior_from_the_workers_equals_the_models_own(tmp_path, soft, combiner):
    from torch_label_mae.model import LMAE, LMAEConfig
    from torch_label_mae.train import TrainSamples, collate

    kind = dict(prior_kind="random_walk", prior_sweeps=3) if soft else {}
    mcfg = LMAEConfig.tiny(**{**TINY, **kind, "num_classes": 4})
    if combiner:  # the prior combiner refines the walk: the workers must use the model's own
        mcfg = dataclasses.replace(mcfg, prior=dataclasses.replace(mcfg.prior, combiner=combiner))
    torch.manual_seed(0)
    model = LMAE(mcfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    for p in model.prior_combiner.parameters() if combiner else ():
        torch.nn.init.normal_(p, std=0.5)
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
              torch.randint(0, 4, (40, 48), dtype=torch.uint8, generator=g)) for _ in range(3)]  # fmt: skip
    pairs[1][1][:, :30] = 2  # fewer classes in one sample: a soft prior's K differs per sample
    samples = TrainSamples(pairs, TrainConfig(), mcfg, combiner=model.prior_combiner)
    batch = collate([samples[i] for i in range(3)])
    img, known, hidden = batch["image"].float() / 255, batch["known"].long(), batch["hidden"]
    from torch_label_mae.train import LabelPrior

    index = batch["prior_index"][:, :, None, None] if soft else None
    prior = LabelPrior(batch["prior_classes"].long(), batch.get("prior_prob"), index)
    with torch.no_grad():
        torch.testing.assert_close(model(img, known, hidden, prior), model(img, known, hidden))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(8, 70), w=st.integers(8, 70), seed=st.integers(0, 2**16))
def test_augment_keeps_uint8_and_matches_the_float_resize(h, w, seed):
    import random

    from torch_label_mae.io import resize_image, resize_label
    from torch_label_mae.train import augment

    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 5, (h, w), dtype=torch.uint8, generator=g)
    before = (image.clone(), label.clone())
    img, lab = augment(image, label, (32, 32), (1.0, 1.0), False, random.Random(seed))  # the whole image
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and lab.shape == (32, 32)
    want = resize_image(image[None], (32, 32))[0] * 255  # the inference path, in float
    assert (img.float() - want).abs().max() <= 1.001  # one grey level: fixed-point rounding
    assert torch.equal(lab, resize_label(label[None], (32, 32))[0])
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])  # inputs untouched


def test_augment_refuses_float_images():
    import random

    from torch_label_mae.train import augment

    with pytest.raises(TypeError, match="uint8"):
        augment(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.uint8), (4, 4), (1.0, 1.0), False, random.Random())


def test_workers_feed_training(tmp_path):
    data = make_dataset(tmp_path / "data")
    state = train(_cfg(data, tmp_path / "run", epochs=1, workers=2, val_split="", ratio_range=(0.3, 0.7)))
    assert state["step"] == 2


def test_training_errors_are_one_line(tmp_path, capsys):
    from torch_label_mae.train import main_train

    data = make_dataset(tmp_path / "data")
    (tmp_path / "nojson").mkdir()
    train(_cfg(data, tmp_path / "first", epochs=1, val_split=""))
    other = make_dataset(tmp_path / "other", num_classes=3)
    capsys.readouterr()
    cases = [
        (["--data", str(tmp_path / "nojson")], "dataset.json"),
        (["--data", str(other), "--init", str(tmp_path / "first" / "last")], "classes"),
        (["--data", str(data), "--set", "label_priors=true"], "unknown model config key"),
    ]
    for args, needle in cases:
        with pytest.raises(SystemExit) as e:
            main_train([*args, "--out", str(tmp_path / "x"), "--threads", "1", "--workers", "0"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("label-mae train: error:") and needle in lines[0], err


def test_gpu_check_script_dry_run_lists_valid_commands():
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run", "DATA"], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]
    assert [c[1:3] for c in cmds] == [["-m", "pytest"]] * 3 + [["benchmarks/bench_train.py", "--data"]] * 2 + [
        ["-m", "torch_label_mae"]
    ] * 2
    from torch_label_mae.train import parse_train_args

    cfg, _ = parse_train_args(cmds[5][4:])  # the named recipe's flags are valid training flags
    assert (cfg.model, cfg.batch_size, cfg.max_minutes, cfg.loss, cfg.label_prior) == ("small", 64, 3.0, "ce", True)
    sys.path.insert(0, str(root / "benchmarks"))
    import bench_train

    bench_train.build_parser().parse_args(cmds[3][2:])


def test_gpu_check_script_skips_the_data_parts_without_data(tmp_path):
    """On the device machine ../shared is absent: the bench and recipe parts say so and are skipped."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    r = subprocess.run(["bash", str(script), "--parts", "bench,recipe", str(tmp_path / "none")], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped bench: no " in r.stdout and "skipped recipe: no " in r.stdout
    assert "+ " not in r.stdout  # nothing ran


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_training_with_bf16_autocast(tmp_path, compile_):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    state = train(_cfg(data, out, epochs=1, workers=2, compile=compile_))
    log = _log(out)
    assert state["step"] == 2 and math.isfinite(log[-1]["loss"]) and 0 <= log[-1]["val_pa_miou"] <= 1
    assert torch.backends.cuda.matmul.allow_tf32 == tf32  # float32 after training is float32 again


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "auto"])
def test_precision_sets_the_autocast_of_training_and_validation(tmp_path, monkeypatch, precision):
    """Each forward pass of the model, in a training step and in validation, runs under the autocast that
    ``precision`` resolves to on the CPU (auto: bfloat16 where the CPU has AMX, as completion does)."""
    from torch_label_mae.inference import autocast_dtype
    from torch_label_mae.model import LMAE

    if not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4: no per-device autocast queries
        pytest.skip("needs torch.get_autocast_dtype (torch >= 2.4)")
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # where train() runs
    seen, forward = [], LMAE.forward

    def spy(self, *a, **kw):
        seen.append(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32)
        return forward(self, *a, **kw)

    monkeypatch.setattr(LMAE, "forward", spy)
    data = make_dataset(tmp_path / "data")
    train(_cfg(data, tmp_path / "run", epochs=1, precision=precision))
    want = autocast_dtype(precision, torch.device(dev)) or torch.float32
    assert len(seen) >= 3 and set(seen) == {want}  # 2 steps and validation


def test_an_unknown_precision_is_refused_before_the_run_starts(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        train(_cfg(make_dataset(tmp_path / "data"), tmp_path / "run", precision="fp16"))
    assert not (tmp_path / "run").exists()


def test_a_spent_budget_validates_and_exports_the_last_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    state = train(_cfg(data, out, epochs=5, max_steps=3))  # 2 steps per epoch: stops in the second
    last = _log(out)[-1]
    assert state["step"] == 3 and last["partial"] is True and "val_pa_miou" in last
    assert (out / "last" / "model.safetensors").is_file()


def test_class_agnostic_training_pools_datasets_of_different_class_lists(tmp_path):
    a = make_dataset(tmp_path / "a", num_classes=3, seed=1)
    b = make_dataset(tmp_path / "b", num_classes=6, seed=2)
    out = tmp_path / "run"
    cfg = _cfg(f"{a},{b}", out, class_agnostic=True, num_slots=8, max_steps=3, epochs=1, val_limit=2)
    state = train(cfg)
    assert state["step"] == 3 and state["prior_pa_miou"] is not None
    completer = LabelCompleter.from_folder(out / "last", device="cpu")
    assert completer.config.class_agnostic and completer.config.num_classes == 8
    assert completer.config.class_names is None
    label = np.full((48, 64), 40, dtype=np.uint8)  # ids no dataset had: a class-agnostic model takes them
    label[:, 32:] = 200
    label[10:30, 20:40] = 255
    out_label = completer.complete(np.zeros((48, 64, 3), dtype=np.uint8), label)
    assert set(np.unique(out_label).tolist()) <= {40, 200}


def test_exports_carry_the_class_agnostic_starts_label_set(tmp_path):
    from torch_label_mae.label_sets import LABEL_SETS

    a = make_dataset(tmp_path / "a", num_classes=3, seed=1)
    train(_cfg(str(a), tmp_path / "first", class_agnostic=True, num_slots=8, max_steps=1, epochs=1, val_limit=2))
    start = LabelCompleter.from_folder(tmp_path / "first" / "last", device="cpu")
    start.label_set = LABEL_SETS["voc"]
    start.save_pretrained(tmp_path / "voc_start")
    init = str(tmp_path / "voc_start")
    train(_cfg(str(a), tmp_path / "agn", init=init, class_agnostic=True, num_slots=8, max_steps=1, val_limit=2))
    for folder in ("best", "last"):
        assert LabelCompleter.from_folder(tmp_path / "agn" / folder).label_set == LABEL_SETS["voc"]
    train(_cfg(str(a), tmp_path / "own", init=init, max_steps=1, val_limit=2))  # the data's 3 classes now
    assert not (tmp_path / "own" / "last" / "label_set.json").exists()
    assert LabelCompleter.from_folder(tmp_path / "own" / "last").label_set is None


def test_several_roots_need_class_agnostic(tmp_path):
    a, b = make_dataset(tmp_path / "a"), make_dataset(tmp_path / "b")
    with pytest.raises(ValueError, match="class-agnostic"):
        train(_cfg(f"{a},{b}", tmp_path / "run", max_steps=1))
    with pytest.raises(ValueError, match="'ce'"):
        train(_cfg(str(a), tmp_path / "run", class_agnostic=True, loss="balanced", max_steps=1))


@given(seed=st.integers(0, 2**16), connectivity=st.sampled_from([4, 16]), combiner=st.sampled_from([0, 8]))
@settings(max_examples=15, deadline=None)
def test_pooled_samples_reuse_their_prior_and_flip_exactly(seed, connectivity, combiner):
    from torch_label_mae.model import LMAE, LMAEConfig
    from torch_label_mae.train import LabelPrior, TrainSamples, collate, flip_sample

    kind = dict(prior_kind="random_walk", prior_solver="direct", prior_connectivity=connectivity)
    mcfg = LMAEConfig.tiny(**{**TINY, **kind, "num_classes": 4})
    if combiner:  # the combined prior is mirrored exactly too (every feature is)
        mcfg = dataclasses.replace(mcfg, prior=dataclasses.replace(mcfg.prior, combiner=combiner))
    model = LMAE(mcfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    for p in model.prior_combiner.parameters() if combiner else ():
        torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
              torch.randint(0, 4, (40, 48), dtype=torch.uint8, generator=g)) for _ in range(2)]  # fmt: skip
    samples = TrainSamples(
        pairs, TrainConfig(mask_pool=2, seed=seed), mcfg, seed=seed, with_prior=False, combiner=model.prior_combiner
    )
    items = [samples[i % 2] for i in range(8)]
    assert len(samples.pool) <= 4  # two samples per image, drawn once
    first = next(iter(samples.pool.values()))
    for item in (first, flip_sample(first, mcfg.grid)):  # a stored sample and its mirror image
        item = dict(item, prior_prob=item["prior_prob"].float())
        batch = collate([item])
        img, known, hidden = batch["image"].float() / 255, batch["known"].long(), batch["hidden"]
        index = batch["prior_index"][:, :, None, None]
        prior = LabelPrior(batch["prior_classes"].long(), batch["prior_prob"], index)
        with torch.no_grad():  # the kept (float16) prior gives the model's own logits, to float16's precision
            torch.testing.assert_close(model(img, known, hidden, prior), model(img, known, hidden), atol=0.05, rtol=0)
        assert (item["known"][item["pix"]] == mcfg.ignore_index).all()
        assert torch.equal(hidden.view(mcfg.grid), batch["pix"][0, :: mcfg.patch_size, :: mcfg.patch_size])
    assert all(it["image"].dtype == torch.uint8 and it["prior_prob"].dtype == torch.float32 for it in items)


@given(seed=st.integers(0, 2**16), block=st.sampled_from([0.0, 1.0]))
@settings(max_examples=10, deadline=None)
def test_pool_entries_depend_on_their_key_alone(seed, block):
    from torch_label_mae.model import LMAEConfig
    from torch_label_mae.train import TrainSamples

    kind = dict(prior_kind="random_walk", prior_solver="direct", prior_connectivity=4)
    mcfg = LMAEConfig.tiny(**{**TINY, **kind, "num_classes": 4})
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
              torch.randint(0, 4, (40, 48), dtype=torch.uint8, generator=g)) for _ in range(3)]  # fmt: skip
    cfg = TrainConfig(mask_pool=2, seed=seed, block_holes=block, block_range=(4, 12))
    filled = TrainSamples(pairs, cfg, mcfg, seed=seed)
    filled.fill_pool(threads=2, stop=lambda: True)  # a stop before the first chunk draws nothing
    assert not filled.pool
    filled.fill_pool(threads=2)
    assert sorted(filled.pool) == [(i, n) for i in range(3) for n in range(2)]
    torch.manual_seed(seed + 1)  # torch's global generator plays no part, nor the stream of samples asked for
    other = TrainSamples(pairs, cfg, mcfg, seed=seed + 5)
    for key, item in filled.pool.items():
        again = other.pooled(key)
        assert item.keys() == again.keys() and all(torch.equal(item[k], again[k]) for k in item)
    for i in range(6):  # a filled pool is only read
        filled[i % 3]
    assert len(filled.pool) == 6


def test_workers_train_on_a_pool_filled_before_they_start(tmp_path, monkeypatch):
    from torch_label_mae.train import TrainSamples

    data = make_dataset(tmp_path / "data")
    filled = []
    monkeypatch.setattr(TrainSamples, "fill_pool", lambda self, threads=1, stop=None: filled.append(threads))
    overrides = {**TINY, "prior_kind": "random_walk", "prior_solver": "direct"}
    cfg = _cfg(data, tmp_path / "run", epochs=1, workers=1, val_split="", mask_pool=1)
    cfg.model_overrides = overrides
    assert train(cfg)["step"] == 2 and filled == [1]


@given(seed=st.integers(0, 2**16), block=st.sampled_from([0.0, 1.0]), holes=st.floats(0.0, 0.5))
@settings(max_examples=20, deadline=None)
def test_hide_unknown_hides_every_patch_that_touches_a_hole(seed, block, holes):
    from torch_label_mae.masking import hidden_from_missing, hidden_to_pixels
    from torch_label_mae.model import LMAEConfig
    from torch_label_mae.train import TrainSamples

    mcfg = LMAEConfig.tiny(**{**TINY, "num_classes": 4})
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (40, 48), dtype=torch.uint8, generator=g)
    label[torch.rand(40, 48, generator=g) < holes] = mcfg.ignore_index  # the label's own holes
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g), label)]
    cfg = TrainConfig(seed=seed, block_holes=block, block_range=(4, 12), hide_unknown=True)
    item = TrainSamples(pairs, cfg, mcfg, seed=seed, with_prior=False)[0]
    own = hidden_from_missing((item["label"] == mcfg.ignore_index)[None], mcfg.grid)[0]
    assert not (own & ~item["hidden"]).any()  # as at completion: a patch with a hole in it is hidden
    assert not (item["pix"] & ~hidden_to_pixels(item["hidden"][None], mcfg.grid, mcfg.patch_size)[0]).any()
    assert torch.equal(item["known"], torch.where(item["pix"], mcfg.ignore_index, item["label"]))


def _holed_pair(g, h, w, share, ignore_index):
    """An image and a label of 4 classes with holes (254) in its top third and void (``ignore_index``)
    in its bottom third, at ``share`` of their pixels each (patches with void alone, with holes alone)."""
    label = torch.randint(0, 4, (h, w), dtype=torch.uint8, generator=g)
    third = torch.arange(h)[:, None].expand(h, w) * 3 // h  # 0, 1, 2: the row's third
    label[(torch.rand(h, w, generator=g) < share) & (third == 2)] = ignore_index
    label[(torch.rand(h, w, generator=g) < share) & (third == 0)] = 254
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), label


@given(seed=st.integers(0, 2**16), block=st.sampled_from([0.0, 1.0]), share=st.floats(0.0, 0.3))
@settings(max_examples=20, deadline=None)
def test_hole_index_hides_the_patches_of_holes_not_of_void(seed, block, share):
    from unittest import mock

    from torch_label_mae import train as train_module
    from torch_label_mae.masking import hidden_from_missing
    from torch_label_mae.model import LMAEConfig
    from torch_label_mae.train import TrainSamples

    mcfg = LMAEConfig.tiny(**{**TINY, "num_classes": 4})
    pairs = [_holed_pair(torch.Generator().manual_seed(seed), 40, 48, share, mcfg.ignore_index)]
    kw = dict(seed=seed, block_holes=block, block_range=(4, 12), hole_index=254)  # random crops and flips
    items, seen, augment = [], [], train_module.augment

    def spy(*args):  # keeps the label as the crop, rescale and flip left it
        out = augment(*args)
        seen.append(out[1])
        return out

    for on in (False, True):
        with mock.patch.object(train_module, "augment", spy):
            items.append(TrainSamples(pairs, TrainConfig(hide_unknown=on, **kw), mcfg, seed=seed, with_prior=False)[0])
    (plain, hide), holes = items, seen[1] == 254
    assert torch.equal(seen[0], seen[1]) and torch.equal(plain["pix"], hide["pix"])  # the same draw
    assert torch.equal(hide["label"], seen[1].masked_fill(holes, mcfg.ignore_index))  # holes are unknown, as void is
    # hidden: the draw's own patches and every patch with a hole; a patch with void alone is not hidden for it
    assert torch.equal(hide["hidden"], plain["hidden"] | hidden_from_missing(holes[None], mcfg.grid)[0])


@given(seed=st.integers(0, 2**16), agnostic=st.booleans(), pool=st.integers(0, 2))
@settings(max_examples=15, deadline=None)
def test_the_hole_index_never_reaches_the_model_as_a_class(seed, agnostic, pool):
    from torch_label_mae.model import LMAEConfig
    from torch_label_mae.train import TrainSamples

    kind = dict(prior_kind="random_walk", prior_solver="direct", prior_connectivity=4)
    mcfg = LMAEConfig.tiny(**{**TINY, **kind, "class_agnostic": agnostic, "num_classes": 8 if agnostic else 4})
    pairs = [_holed_pair(torch.Generator().manual_seed(seed), 40, 48, 0.2, mcfg.ignore_index)]
    cfg = TrainConfig(seed=seed, hole_index=254, hide_unknown=True, mask_pool=pool)
    samples = TrainSamples(pairs, cfg, mcfg, seed=seed)
    for item in (samples[0] for _ in range(4)):
        for key in ("label", "known", "prior_classes"):
            values = set(item[key].unique().tolist())
            assert values <= set(range(mcfg.num_classes)) | {mcfg.ignore_index}, (key, values)


@given(seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_pooled_class_agnostic_samples_get_fresh_slots_and_their_own_prior(seed):
    from torch_label_mae.model import LMAEConfig
    from torch_label_mae.train import TrainSamples, permute_slots, sample_prior

    kind = dict(prior_kind="random_walk", prior_solver="direct", prior_connectivity=4)
    mcfg = LMAEConfig.tiny(**{**TINY, **kind, "class_agnostic": True, "num_classes": 8})
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
              torch.randint(0, 5, (40, 48), dtype=torch.uint8, generator=g) * 40)]  # ids 0, 40, ... 160  # fmt: skip
    samples = TrainSamples(pairs, TrainConfig(mask_pool=1, seed=seed, flip=False), mcfg, seed=seed, with_prior=False)
    items = [samples[0] for _ in range(6)]
    assert len(samples.pool) == 1  # one pool entry, in other slots each time
    assert len({tuple(it["prior_index"].tolist()) for it in items}) > 1
    for it in items:
        assert int(it["label"][it["label"] != 255].max()) < 8  # slots, not the dataset's ids
        again = sample_prior(mcfg, it["known"], it["image"])  # the walk on the renamed label
        order, again_order = it["prior_index"].argsort(), again["prior_index"].argsort()
        assert torch.equal(it["prior_index"][order], again["prior_index"][again_order])
        torch.testing.assert_close(it["prior_prob"][order], again["prior_prob"][again_order], atol=2e-3, rtol=0)
    same = permute_slots(items[0], list(range(8)))  # the identity renames nothing
    assert all(torch.equal(same[k], items[0][k]) for k in items[0])


def test_trunk_lr_zero_trains_the_head_alone(tmp_path):
    data = make_dataset(tmp_path / "data")
    train(_cfg(data, tmp_path / "first", epochs=1, val_split=""))
    out = tmp_path / "tuned"
    train(_cfg(data, out, epochs=1, init=str(tmp_path / "first" / "last"), trunk_lr=0.0, val_split=""))
    a = LabelCompleter.from_pretrained(str(tmp_path / "first" / "last")).model.state_dict()
    b = LabelCompleter.from_pretrained(str(out / "last")).model.state_dict()
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith("head.") for k in moved)  # the head learned; nothing else moved
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="trunk_lr"):
            train(_cfg(data, tmp_path / "bad", trunk_lr=bad))


def test_new_classes_fine_tunes_another_class_list_from_its_prior(tmp_path):
    data = make_dataset(tmp_path / "data")
    train(_cfg(data, tmp_path / "first", epochs=1))
    other = make_dataset(tmp_path / "other", num_classes=3)
    out = tmp_path / "tuned"
    train(_cfg(other, out, epochs=1, init=str(tmp_path / "first" / "last"), new_classes=True, lr=0.0, val_split=""))
    start = LabelCompleter.from_pretrained(str(tmp_path / "first" / "last"))
    tuned = LabelCompleter.from_pretrained(str(out / "last"))
    assert tuned.config.num_classes == 3 and tuned.config.encoder_dim == start.config.encoder_dim
    assert not tuned.model.head.weight.any()  # a new head: zero, the run starts at the label prior
    a, b = start.model.state_dict(), tuned.model.state_dict()
    assert torch.equal(a["blocks.0.mlp.fc1.weight"], b["blocks.0.mlp.fc1.weight"])  # the trunk is kept


def test_hole_index_parses_as_an_int():
    from torch_label_mae.train import parse_train_args

    cfg, _ = parse_train_args(["--data", "x", "--hole-index", "254", "--hide-unknown"])
    assert cfg.hole_index == 254 and cfg.hide_unknown
    assert parse_train_args(["--data", "x"])[0].hole_index is None


def test_a_hole_index_that_is_a_class_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data")  # 4 classes
    with pytest.raises(ValueError, match="hole_index 2 is a class of"):
        train(_cfg(data, tmp_path / "run", hole_index=2, max_steps=1))


def test_the_default_run_starts_from_the_class_agnostic_model_with_the_data_classes(tmp_path):
    """No recipe flags: the run starts from any-m0.5 (its random-walk prior), takes the data's classes (no
    --new-classes needed for a class-agnostic start) and keeps its samples with their prior."""
    from torch_label_mae.train import DEFAULT_INIT, from_scratch

    data = make_dataset(tmp_path / "data", num_classes=5)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), batch_size=2, max_steps=2, val_split="",
                      threads=1, workers=0, progress=False)  # fmt: skip
    assert cfg.init == DEFAULT_INIT and cfg.model is None and not from_scratch(cfg)
    state = train(cfg)
    assert state["step"] == 2
    got = LabelCompleter.from_pretrained(str(tmp_path / "run" / "last"), device="cpu").config
    start = LabelCompleter.from_pretrained(DEFAULT_INIT, device="cpu").config
    assert not got.class_agnostic and got.num_classes == 5
    assert (got.encoder_dim, got.encoder_depth, got.prior) == (start.encoder_dim, start.encoder_depth, start.prior)


def test_a_named_model_trains_from_scratch_and_excludes_another_init(tmp_path):
    from torch_label_mae.config import LMAEConfig
    from torch_label_mae.train import DEFAULT_POOL, check_config, from_scratch, mask_pool_size, parse_train_args

    assert from_scratch(TrainConfig(model="small")) and from_scratch(TrainConfig(init=None))
    assert not from_scratch(TrainConfig(init="camvid-m0.5"))
    with pytest.raises(ValueError, match="give one"):
        check_config(TrainConfig(data="d", model="tiny", init="camvid-m0.5"), roots=False)
    walk = LMAEConfig.from_dict({"num_classes": 4, "prior": {"kind": "random_walk", "solver": "direct"}})
    nearest = LMAEConfig.from_dict({"num_classes": 4, "label_prior": True})
    assert mask_pool_size(TrainConfig(), walk) == DEFAULT_POOL and mask_pool_size(TrainConfig(), nearest) == 0
    assert mask_pool_size(TrainConfig(mask_pool=0), walk) == 0 and mask_pool_size(TrainConfig(mask_pool=3), walk) == 3
    cfg, _ = parse_train_args(["--data", "d", "--mask-pool", "3"])
    assert cfg.mask_pool == 3 and cfg.init == "any-m0.5" and cfg.model is None
    cfg, _ = parse_train_args(["--data", "d", "--model", "small"])
    assert from_scratch(cfg) and cfg.mask_pool is None


def test_handed_classes_are_not_mirrored_by_default():
    """Mirroring an image of a car's left door shows a right door labelled left: classes in left / right
    pairs turn the default flip off; --flip / --no-flip still decide."""
    from torch_label_mae.config import LMAEConfig
    from torch_label_mae.train import TrainSamples, handed_classes

    assert handed_classes(["background", "front_left_door", "front_right_door"])
    assert handed_classes(["Left_Mirror", "right_mirror"])
    assert not handed_classes(["road", "sky", "left_turn_sign"])  # no right counterpart
    assert not handed_classes(None)
    names = ["background", "left_mirror", "right_mirror"]
    mcfg = LMAEConfig.from_dict({"num_classes": 3, "class_names": names})
    plain = LMAEConfig.from_dict({"num_classes": 3, "class_names": ["a", "b", "c"]})
    assert not TrainSamples([], TrainConfig(), mcfg).flip and TrainSamples([], TrainConfig(), plain).flip
    assert TrainSamples([], TrainConfig(flip=True), mcfg).flip
    assert not TrainSamples([], TrainConfig(flip=False), plain).flip


@pytest.fixture
def masking_weights(monkeypatch) -> list:
    """The ``weights`` (masking mix) of every ``mixed_masking`` call that training's samples make, in order."""
    from torch_label_mae import train as train_mod

    seen, masking = [], train_mod.mixed_masking
    monkeypatch.setattr(train_mod, "mixed_masking", lambda *a, **kw: seen.append(kw["weights"]) or masking(*a, **kw))
    return seen


@pytest.mark.parametrize("mix", [None, (1.0, 2.0, 2.0), (0.0, 1.0, 0.0)])
@pytest.mark.parametrize("model", [None, "tiny", ""])  # "": --init '' (from scratch, tiny)
def test_the_masking_mix_is_random_from_an_init_and_the_papers_from_scratch(masking_weights, model, mix):
    """A run that starts from an init's prior learns corrections on Random masking alone (completion's holes
    do not pick classes); from scratch, the paper's 1:2:2; ``mix`` decides when given. The weights that
    reach the masking of each sample are checked, through the CLI's parser too."""
    from torch_label_mae import train as train_mod
    from torch_label_mae.config import LMAEConfig
    from torch_label_mae.masking import PAPER_MIX

    scratch = model is not None
    model, init = (model or None), ("" if model == "" else train_mod.DEFAULT_INIT)
    want = mix if mix is not None else (PAPER_MIX if scratch else (1.0, 0.0, 0.0))
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g),
              torch.randint(0, 4, (40, 48), dtype=torch.uint8, generator=g)) for _ in range(2)]  # fmt: skip
    mcfg = LMAEConfig.tiny(**{**TINY, "num_classes": 4})
    samples = train_mod.TrainSamples(pairs, TrainConfig(model=model, init=init, mix=mix, mask_pool=0), mcfg)
    samples[0], samples[1]
    assert masking_weights == [want, want]
    argv = ["--data", "x", "--init", init] + (["--model", model] if model else [])
    argv += ["--mix", *map(str, mix)] if mix else []
    cfg, _ = train_mod.parse_train_args(argv)
    assert tuple(train_mod.masking_mix(cfg)) == want


def test_a_resumed_run_keeps_the_masking_mix_it_started_with(tmp_path, masking_weights):
    """The checkpoint records the mix resolved at the start; resuming without --mix keeps it, so a run begun
    under an earlier default does not change its masking halfway."""
    data, out = make_dataset(tmp_path / "data"), tmp_path / "run"
    train(_cfg(data, out, epochs=1, mix=(0.0, 1.0, 0.0)))
    masking_weights.clear()
    blob = torch.load(out / "checkpoint.pt", weights_only=True)
    assert json.loads(blob["train_config"])["mix"] == [0.0, 1.0, 0.0]
    train(_cfg(data, out, epochs=2), resume=True)  # no mix: the tiny model from scratch would take 1:2:2
    assert masking_weights and set(masking_weights) == {(0.0, 1.0, 0.0)}
    train(_cfg(data, tmp_path / "fresh", epochs=1))  # a new run records what it resolved
    fresh = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=True)
    assert json.loads(fresh["train_config"])["mix"] == [1.0, 2.0, 2.0]


def test_best_starts_at_the_prior_so_it_is_never_below_it(tmp_path):
    """A run whose model starts as its prior alone exports that start to best/ at epoch 0; no epoch at all:
    best/ is the prior, and its val figure is the prior's."""
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    state = train(_cfg(data, out, epochs=0))
    assert state["step"] == 0 and state["best"] == state["prior_pa_miou"] >= 0
    best = LabelCompleter.from_pretrained(str(out / "best"), device="cpu")
    with torch.no_grad():
        assert best.model.prior_alone()
    state = train(_cfg(data, tmp_path / "run2", epochs=2))
    assert state["best"] >= state["prior_pa_miou"]


def test_resuming_with_another_model_is_a_one_line_error(tmp_path, capsys):
    """A run begun from scratch (--model tiny) resumed without --model would build the default start's
    model: one line that says how to resume, not a state-dict traceback."""
    from torch_label_mae.train import main_train

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1, val_split=""))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main_train(["--data", str(data), "--out", str(out), "--resume", "--threads", "1", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--model tiny" in err[0] and "checkpoint.pt" in err[0], err


def test_a_second_run_on_the_same_out_needs_resume(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1, max_steps=1))
    before = (out / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(data, out, epochs=1, max_steps=1))
    assert (out / "log.jsonl").read_text() == before


def test_a_resume_drops_the_log_lines_after_its_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    train(_cfg(data, out, epochs=1))
    step = torch.load(out / "checkpoint.pt", weights_only=True)
    step = json.loads(step["state"])["step"]
    with (out / "log.jsonl").open("a") as f:  # a run that went on past its checkpoint, then was killed mid-line
        f.write(json.dumps({"epoch": 9, "step": step + 5}) + "\n" + '{"epoch": 10, "st')
    train(_cfg(data, out, epochs=2), resume=True)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # each line whole
    assert 9 not in [r["epoch"] for r in lines]  # the line past the checkpoint is gone
    assert [r["step"] for r in lines] == sorted(r["step"] for r in lines)


def test_a_model_setting_refused_at_build_leaves_no_out_folder(tmp_path, capsys):
    from torch_label_mae.train import main_train

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as e:
        main_train(["--data", str(data), "--out", str(out), "--model", "tiny", "--set", "patch_size=0"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
    assert not out.exists()  # nothing to resume, nothing to clean up


def test_resume_without_a_checkpoint_says_it_starts_from_the_beginning(tmp_path, capsys):
    from torch_label_mae.train import main_train

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--model", "tiny", "--epochs", "1", "--max-steps", "1"]
    main_train([*args, "--batch-size", "4", "--resume", "--threads", "1", "--workers", "0", "--val-split", ""])
    assert "no checkpoint in" in capsys.readouterr().err
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("checkpointed", [False, True])
def test_ctrl_c_names_resume_only_when_a_checkpoint_exists(tmp_path, capsys, monkeypatch, checkpointed):
    from torch_label_mae import train as train_module

    out = tmp_path / "run"
    if checkpointed:
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(b"")

    def interrupted(cfg, resume=False, data=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(SystemExit) as e:
        train_module.main_train(["--data", str(tmp_path), "--out", str(out)] + (["--resume"] if checkpointed else []))
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert ("--resume to continue" in err) == checkpointed and ("start again" in err) != checkpointed, err
