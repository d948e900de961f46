"""Tests of the benchmark scripts: what they write, and that their accuracy figures are the library's own
evaluation of the same methods on the same holes (speed figures are only checked to be positive)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synth import TINY_MODEL

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.config import NearestPrior, RandomWalkPrior
from torch_label_mae.data import FolderDataset
from torch_label_mae.evaluate import completer_method, evaluate, nearest_fill_method, walk_method

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_inference  # noqa: E402


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_bench_inference_writes_every_figure(tmp_path, precision):
    folder = tmp_path / "model"
    completer = LabelCompleter(LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 4, "label_prior": True}))
    torch.nn.init.normal_(completer.model.head.weight, std=0.02)  # as after training: a zero correction skips the trunk
    completer.save_pretrained(folder)
    out = tmp_path / "bench.json"
    args = ["--model", str(folder), "--sizes", "32x32", "48x40", "--batch-sizes", "1", "2", "--images", "2"]
    args += ["--repeats", "1", "--no-baselines", "--no-transform", "--roofline-n", "64", "--threads", "1"]
    assert bench_inference.main([*args, "--precision", precision, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = [r for r in res["results"] if "error" not in r]
    assert {(r["size"], r["path"], r["batch"]) for r in rows} == {
        (s, p, b) for s in ("32x32", "48x40") for p in ("api", "raw") for b in (1, 2)
    }
    assert all(r["images_per_s"] > 0 and r["precision"] == precision for r in rows)
    assert res["roofline"]["cpu"]["dtype"] == precision and res["roofline"]["cpu"]["gflops"] > 0
    assert res["flops"]["32x32"]["gflop_per_image"] > 0


def test_bench_inference_takes_a_class_agnostic_model_on_a_dataset_of_its_own_classes(tmp_path):
    """The default model is class-agnostic: a dataset with another class count than its slots is timed
    (and a class model with another class count is still refused)."""
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 2),), num_classes=3)
    args = ["--data", str(data), "--sizes", "40x32", "--batch-sizes", "2", "--images", "2", "--repeats", "1"]
    args += ["--no-baselines", "--no-transform", "--roofline-n", "64", "--threads", "1"]
    for agnostic in (True, False):
        folder = tmp_path / f"model-{agnostic}"
        cfg = {**TINY_MODEL, "num_classes": 8, "label_prior": True, "class_agnostic": agnostic}
        LabelCompleter(LMAEConfig.from_dict(cfg)).save_pretrained(folder)
        out = tmp_path / f"bench-{agnostic}.json"
        if not agnostic:
            with pytest.raises(SystemExit, match="3 classes but the model 8"):
                bench_inference.main(["--model", str(folder), *args, "--json", str(out)])
            continue
        assert bench_inference.main(["--model", str(folder), *args, "--json", str(out)]) == 0
        rows = [r for r in json.loads(out.read_text())["results"] if "error" not in r]
        assert {r["path"] for r in rows} == {"api", "raw"} and all(r["images_per_s"] > 0 for r in rows)


def test_profile_inference_stages_are_the_real_computation(tmp_path, capsys):
    import profile_inference

    folder = tmp_path / "model"
    LabelCompleter(LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 4, "label_prior": True})).save_pretrained(folder)
    out = tmp_path / "profile.json"
    args = ["--model", str(folder), "--size", "32x32", "--batch", "2", "--runs", "1", "--threads", "1"]
    assert profile_inference.main([*args, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["stages_ms"]) == set(profile_inference.STAGES) and res["ms_per_batch"] > 0
    assert "prior" in capsys.readouterr().out


def test_baselines_nearest_and_torch_walk_write_json(tmp_path):
    import baselines
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 3),))
    out = tmp_path / "b.json"
    for protocol in ("paper", "native"):
        args = ["--data", str(data), "--methods", "nearest", "walk", "--sweeps", "5", "--protocol", protocol]
        assert baselines.main([*args, "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert set(res) == {"nearest fill", "random walk (torch) 5"}
        assert all(r["images"] == 3 for r in res.values())
        name = FolderDataset(data, "val").info.name  # which holes: what model_card.py checks
        assert all(
            (r["dataset"], r["split"], r["protocol"], r["ratio"]) == (name, "val", protocol, 0.5) for r in res.values()
        )
        # the figures are the library's own evaluation of the same methods on the same holes
        ds = FolderDataset(data, "val")
        for name, method in (("nearest fill", nearest_fill_method), ("random walk (torch) 5", walk_method(sweeps=5))):
            want = evaluate(method, ds, ds.info.num_classes, protocol=protocol)
            assert res[name]["pa_miou"] == pytest.approx(want["pa_miou"], abs=1e-9), (protocol, name)
    args = ["--data", str(data), "--methods", "walk", "--sweeps", "5", "--walk-betas", "2000", "500"]
    assert baselines.main([*args, "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"random walk (torch) 5", "random walk (torch) 5 beta 500"}
    args = ["--data", str(data), "--methods", "walk", "--solver", "direct", "--connectivity", "8", "--color", "lab"]
    assert baselines.main([*args, "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text()).items()
    assert res[0] == "random walk (torch) exact 8-conn lab"
    want = evaluate(walk_method(solver="direct", connectivity=8, color="lab"), ds, ds.info.num_classes)
    assert res[1]["pa_miou"] == pytest.approx(want["pa_miou"], abs=1e-9)


def test_baselines_walk_model_is_the_models_prior_alone(tmp_path):
    import baselines
    from synth import make_dataset

    from torch_label_mae.hub import save_hub_files
    from torch_label_mae.model import LMAE

    data = make_dataset(tmp_path / "data", splits=(("val", 3),))
    cfg = LMAEConfig(**TINY_MODEL, num_classes=4, prior=RandomWalkPrior(sweeps=5))
    save_hub_files(LMAE(cfg), tmp_path / "m")
    out = tmp_path / "b.json"
    args = ["--data", str(data), "--methods", "walk", "--sweeps", "5", "--walk-model", str(tmp_path / "m")]
    assert baselines.main([*args, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    walk, prior = res["random walk (torch) 5"], res[f"walk prior of {tmp_path / 'm'}"]
    assert prior["pa_miou"] == pytest.approx(walk["pa_miou"], abs=1e-6)


def test_ensemble_of_one_model_twice_is_that_model(tmp_path, capsys):
    import ensemble
    from synth import make_dataset

    from torch_label_mae.data import FolderDataset
    from torch_label_mae.evaluate import evaluate
    from torch_label_mae.hub import save_hub_files
    from torch_label_mae.model import LMAE

    data = make_dataset(tmp_path / "data", splits=(("val", 2),))
    cfg = LMAEConfig(**{**TINY_MODEL, "img_size": 224, "patch_size": 16}, num_classes=4, prior=NearestPrior())
    model = LMAE(cfg).eval()
    ds = FolderDataset(data, "val")
    one = evaluate(ensemble.ensemble_method([model]), ds, 4)
    two = evaluate(ensemble.ensemble_method([model, model]), ds, 4)
    assert one["pa_miou"] == pytest.approx(two["pa_miou"])
    save_hub_files(model, tmp_path / "m")
    assert ensemble.main(["--data", str(data), "--models", str(tmp_path / "m"), str(tmp_path / "m")]) == 0
    assert "ensemble" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs 224 x 224"):
        save_hub_files(LMAE(LMAEConfig(**TINY_MODEL, num_classes=4)), tmp_path / "small")
        ensemble.main(["--data", str(data), "--models", str(tmp_path / "small")])


def test_size_curve_prints_a_row_per_model(tmp_path):
    import size_curve
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 3),), size=(32, 32))
    folders = []
    for i, dim in enumerate((32, 64)):
        folder = tmp_path / f"m{i}"
        cfg = {**TINY_MODEL, "num_classes": 4, "encoder_dim": dim, "label_prior": True}
        LabelCompleter(LMAEConfig.from_dict(cfg)).save_pretrained(folder)
        folders.append(str(folder))
    out = tmp_path / "sizes.json"
    args = ["--data", str(data), "--models", *folders, "--images", "2", "--batch", "2", "--repeats", "1"]
    assert size_curve.main([*args, "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == folders
    assert rows[0]["params_m"] < rows[1]["params_m"]
    assert all(r["images_per_s"] > 0 for r in rows)
    ds = FolderDataset(data, "val")
    for r, folder in zip(rows, folders, strict=True):  # the library's own evaluation of each model
        completer = LabelCompleter.from_pretrained(folder, device="cpu")
        want = evaluate(completer_method(completer), ds, ds.info.num_classes)
        assert r["pa_miou"] == pytest.approx(want["pa_miou"], abs=1e-9)


def test_model_card_reports_model_and_baselines(tmp_path):
    import model_card
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("train", 2), ("val", 3)), size=(32, 32))
    LabelCompleter(LMAEConfig(**{**TINY_MODEL, "num_classes": 4})).save_pretrained(tmp_path / "hub" / "toy-m0.5")
    base = tmp_path / "b.json"
    holes = dict(dataset=FolderDataset(data, "val").info.name, split="val", protocol="paper", ratio=0.5, images=3)
    base.write_text(json.dumps({"nearest fill": {"pa_miou": 0.5, "miou": 0.6, "pixel_acc": 0.9, **holes}}))
    args = ["--name", "toy-m0.5", "--hub", str(tmp_path / "hub"), "--data", str(data), "--baselines", str(base)]
    assert model_card.main([*args, "--recipe", "label-mae train ...", "--train-time", "2 minutes"]) == 0
    card = (tmp_path / "hub" / "toy-m0.5" / "README.md").read_text()
    assert "| paper | nearest fill | 50.0 | 60.0 | 90.0 | 50.0 |" in card
    assert "| paper | **toy-m0.5** |" in card and "label-mae train ..." in card
    assert "Trained on 2 images for 2 minutes" in card and "one draw of holes (seed 0)" in card
    for other in (dict(protocol="native"), dict(ratio=0.25), dict(split="train"), dict(images=2)):
        base.write_text(json.dumps({"nearest fill": {"pa_miou": 0.5, "miou": 0.6, "pixel_acc": 0.9, **holes, **other}}))
        with pytest.raises(SystemExit, match="'nearest fill' (was measured on|counts 2 images)"):
            model_card.main([*args, "--recipe", "r"])


def test_model_card_counts_several_hole_draws_and_refuses_baselines_of_other_draws(tmp_path):
    import model_card
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 3),), size=(32, 32))
    LabelCompleter(LMAEConfig(**{**TINY_MODEL, "num_classes": 4})).save_pretrained(tmp_path / "hub" / "toy-m0.5")
    draws = [{"seed": 0, "pa_miou": 0.4, "miou": 0.5}, {"seed": 1, "pa_miou": 0.6, "miou": 0.7}]
    nearest = {"pa_miou": 0.5, "miou": 0.6, "pixel_acc": 0.9, "seeds": [0, 1], "per_seed": draws, "images": 6}
    nearest.update(dataset=FolderDataset(data, "val").info.name, split="val", protocol="paper", ratio=0.5)
    base = tmp_path / "b.json"
    base.write_text(json.dumps({"nearest fill": nearest}))
    args = ["--name", "toy-m0.5", "--hub", str(tmp_path / "hub"), "--data", str(data), "--baselines", str(base)]
    assert model_card.main([*args, "--recipe", "r", "--seed", "0", "1"]) == 0
    card = (tmp_path / "hub" / "toy-m0.5" / "README.md").read_text()
    assert "| paper | nearest fill | 50.0 | 60.0 | 90.0 | 40.0 / 60.0 |" in card
    assert "degraded 2 times (hole seeds 0, 1)" in card and "--seed 0 1`" in card
    with pytest.raises(SystemExit, match="measured on hole seeds \\[0, 1\\], not \\[0\\]"):
        model_card.main([*args, "--recipe", "r"])


def test_the_benchmarks_random_walker_reads_uint8_as_the_float_images_and_leaves_labels_without_seeds():
    """scikit-image's beta is tuned on [0, 1] images: 0..255 ones gave another walker (beta x 255)."""
    pytest.importorskip("skimage.segmentation", reason="scikit-image is a benchmark extra ([bench])")
    from common import MISSING, random_walker

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 24, 24), dtype=np.uint8))
    label = torch.from_numpy(np.repeat(np.arange(3), 8)[None].repeat(24, 0))
    missing = torch.zeros(24, 24, dtype=torch.bool)
    missing[6:18, 4:20] = True
    walker = random_walker(2000.0)
    as_uint8 = walker([image], [label], [missing])
    as_float = walker([image.float() / 255], [label], [missing])
    assert torch.equal(as_uint8[0], as_float[0])
    nothing = walker([image], [torch.full_like(label, 255)], [missing])[0]
    assert (nothing == MISSING).all()  # no known pixel: unfilled, as nearest fill and the walk leave it


def test_fit_curve_scores_the_fits_and_the_anchors_on_the_same_holes(tmp_path):
    pytest.importorskip("skimage.segmentation", reason="scikit-image is a benchmark extra ([bench])")
    import fit_curve
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 4),), size=(48, 64))
    start = tmp_path / "start"
    cfg = {**TINY_MODEL, "num_classes": 8, "class_agnostic": True, "background_index": None, "label_prior": True}
    LabelCompleter(LMAEConfig.from_dict(cfg)).save_pretrained(start)
    work = tmp_path / "work"
    args = ["--data", str(data), "--work", str(work), "--init", str(start), "--protocol", "paper", "--limit", "4"]
    # 3 s: the budget counts the fit's setup too; at 1.2 s this test failed once in a full local run (not reproduced)
    assert fit_curve.main([*args, "--minutes", "0.05"]) == 0
    res = json.loads((work / "results.json").read_text())
    assert [c["minutes"] for c in res["curve"]] == [0.05] and res["curve"][0]["steps"] >= 1
    ds = FolderDataset(data, "val")  # the paper protocol's holes: nearest fill scores as the library's evaluate
    want = evaluate(nearest_fill_method, ds, ds.info.num_classes)
    assert res["anchors"]["nearest fill"] == pytest.approx(100 * want["pa_miou"], abs=1e-6)
    zero = evaluate(completer_method(LabelCompleter.from_pretrained(str(start))), ds, ds.info.num_classes)
    assert res["anchors"][f"zero-shot {start}"] == pytest.approx(100 * zero["pa_miou"], abs=1e-6)
    # a rerun in the same --work on other holes scores the anchors on those, and fits on those labels only
    assert fit_curve.main([*args[:-1], "3", "--seed", "1", "--ratio", "0.25", "--minutes", "0.02"]) == 0
    res = json.loads((work / "results.json").read_text())
    want = evaluate(nearest_fill_method, ds, ds.info.num_classes, ratio=0.25, seed=1, limit=3)
    assert res["anchors"]["nearest fill"] == pytest.approx(100 * want["pa_miou"], abs=1e-6)
    assert len(list((work / "broken").iterdir())) == 3 and len(list((work / "images").iterdir())) == 3


def test_vs_random_walker_interleaves_rounds_and_reports_their_ratios(tmp_path):
    pytest.importorskip("skimage.segmentation", reason="scikit-image is a benchmark extra ([bench])")
    import statistics

    import vs_random_walker
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 2),), num_classes=3)
    folder = tmp_path / "model"
    cfg = {**TINY_MODEL, "num_classes": 8, "label_prior": True, "class_agnostic": True}
    LabelCompleter(LMAEConfig.from_dict(cfg)).save_pretrained(folder)
    out = tmp_path / "vs.json"
    args = ["--model", str(folder), "--data", str(data), "--size", "32x32", "--images", "2", "--batch-sizes", "1", "2"]
    assert vs_random_walker.main([*args, "--rounds", "3", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["rounds"]) == 3 and all(set(r) == {"b1", "b2", "random walker"} for r in res["rounds"])
    assert all(v > 0 for r in res["rounds"] for v in r.values())
    for name in ("b1", "b2"):
        ratios = [r[name] / r["random walker"] for r in res["rounds"]]
        assert res["ratios"][name] == pytest.approx(
            dict(median=statistics.median(ratios), low=min(ratios), high=max(ratios))
        )
    with pytest.raises(SystemExit):
        vs_random_walker.main([*args, "--rounds", "0"])


def test_large_labels_completes_each_size_in_a_process_of_its_own(tmp_path):
    import large_labels
    from synth import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("val", 1),), num_classes=3)
    folder = tmp_path / "model"
    cfg = {**TINY_MODEL, "num_classes": 8, "label_prior": True, "class_agnostic": True}
    LabelCompleter(LMAEConfig.from_dict(cfg)).save_pretrained(folder)
    out = tmp_path / "large.json"
    args = ["--model", str(folder), "--data", str(data), "--megapixels", "0.002", "0.004", "--batch", "2"]
    assert large_labels.main([*args, "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    label = FolderDataset(data, "val")[0][1]
    for row, mp in zip(rows, (0.002, 0.004), strict=True):
        h, w = row["size"]
        assert abs(h * w - mp * 1e6) < 0.05 * mp * 1e6 and abs(h / w - label.shape[0] / label.shape[1]) < 0.1
        assert row["batch"] == 2 and row["seconds"] > 0 and row["peak_gb"] >= row["baseline_gb"] > 0
        per_mp = (row["peak_gb"] - row["baseline_gb"]) / (mp * 2)
        assert row["gb_per_megapixel"] == pytest.approx(per_mp)
    import resource  # the peak in GB from VmHWM's KiB, as getrusage gives it (KiB on Linux)

    peak, rusage = large_labels.peak_gb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    assert abs(peak - rusage) < 0.05 * rusage

    with pytest.raises(SystemExit, match="the run at 0.002 MP failed"):  # the child's own error goes to stderr
        large_labels.main(["--model", str(tmp_path / "none"), "--data", str(data), "--megapixels", "0.002"])
