"""Tools that write model weights (``tools/``, outside the benchmarks)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synth import TINY_MODEL

from torch_label_mae import LabelCompleter, LMAEConfig
from torch_label_mae.config import NearestPrior

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def test_scale_correction_writes_the_best_scale_and_scales_only_the_head(tmp_path, capsys):
    import scale_correction
    import torch
    from synth import make_dataset

    from torch_label_mae.hub import save_hub_files
    from torch_label_mae.model import LMAE

    data = make_dataset(tmp_path / "data", splits=(("train", 3),))
    model = LMAE(LMAEConfig(**TINY_MODEL, num_classes=4, prior=NearestPrior()))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a correction that moves away from the prior
    save_hub_files(model, tmp_path / "m")
    args = ["--model", str(tmp_path / "m"), "--data", str(data), "--scales", "0", "0.5", "1", "--seed", "0"]
    assert scale_correction.main([*args, "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "scales.json").read_text())
    assert set(record["pa_miou"]) == {"0.0", "0.5", "1.0"} and record["best"] in (0.0, 0.5, 1.0)
    assert record["pa_miou"][str(float(record["best"]))] == max(record["pa_miou"].values())
    assert f"best scale: {record['best']:g}" in capsys.readouterr().out
    before = LabelCompleter.from_pretrained(str(tmp_path / "m"), device="cpu").model.state_dict()
    after = LabelCompleter.from_pretrained(str(tmp_path / "out"), device="cpu").model.state_dict()
    for k, v in before.items():
        expected = v * record["best"] if k.startswith("head.") else v
        torch.testing.assert_close(after[k], expected)
    save_hub_files(LMAE(LMAEConfig(**TINY_MODEL, num_classes=4)), tmp_path / "plain")  # no prior
    with pytest.raises(SystemExit, match="needs a label prior"):
        scale_correction.main(["--model", str(tmp_path / "plain"), "--data", str(data)])


def test_train_combiner_writes_the_init_model_with_a_trained_combiner(tmp_path, capsys):
    import numpy as np
    import torch
    import train_combiner
    from synth import make_dataset

    from torch_label_mae.combiner import NUM_FEATURES
    from torch_label_mae.config import RandomWalkPrior
    from torch_label_mae.data import degrade, read_image, read_label
    from torch_label_mae.hub import save_hub_files
    from torch_label_mae.model import LMAE

    data = make_dataset(tmp_path / "data", splits=(("train", 4), ("val", 2)))
    walk = RandomWalkPrior(solver="direct", connectivity=16, color="lab", beta=8000.0)
    save_hub_files(LMAE(LMAEConfig(**TINY_MODEL, num_classes=4, prior=walk)), tmp_path / "init")
    args = ["--init", str(tmp_path / "init"), "--data", str(data), "--images", "3", "--draws", "2", "--width", "8"]
    args += ["--epochs", "2", "--batch", "256", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert train_combiner.main(args) == 0
    assert "pixels from 6 labels" in capsys.readouterr().out and len(list((tmp_path / "cache").iterdir())) == 1
    init = LabelCompleter.from_pretrained(str(tmp_path / "init"), device="cpu", precision="float32")
    out = LabelCompleter.from_pretrained(str(tmp_path / "out"), device="cpu", precision="float32")
    assert out.config.prior == RandomWalkPrior(**{**walk.__dict__, "combiner": 8, "combiner_features": NUM_FEATURES})
    state = out.model.state_dict()
    for k, v in init.model.state_dict().items():  # the rest is the init model's, as stored (float16)
        torch.testing.assert_close(state[k], v.half().float())
    assert any(state[k].any() for k in state if k.startswith("prior_combiner.mlp.4"))  # it learned something
    image, label = read_image(data / "val/images/val_000.jpg"), read_label(data / "val/labels/val_000.png")
    broken, missing = degrade(label, 0.5, 8, seed=0, mode="blocks")
    done = out.complete(image, broken).numpy()
    assert np.array_equal(done[~missing.numpy()], broken.numpy()[~missing.numpy()])  # known pixels kept
    assert train_combiner.main([*args[:-2], "--out", str(tmp_path / "again")]) == 0  # from the cache
    again = LabelCompleter.from_pretrained(str(tmp_path / "again"), device="cpu").model.state_dict()
    assert all(torch.equal(again[k], state[k]) for k in state)  # same seed, same cache: the same weights
    fixed = [*args[:-2], "--ratios", "0.25", "0.25", "--out", str(tmp_path / "fixed")]
    assert train_combiner.main(fixed) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2  # other holes: a cache of their own
    with pytest.raises(SystemExit):
        train_combiner.main([*fixed[:-2], "--ratios", "0.6", "0.3", "--out", str(tmp_path / "bad")])
    assert train_combiner.main([*args[:-2], "--beta", "16000", "--out", str(tmp_path / "sharper")]) == 0
    sharper = LabelCompleter.from_pretrained(str(tmp_path / "sharper"), device="cpu")
    assert sharper.config.prior == dataclasses.replace(out.config.prior, beta=16000.0)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # the features of another walk: a cache of their own
    for cache in (tmp_path / "cache").iterdir():  # as an older version's features would be
        torch.save([(x[..., :10], y) for x, y in torch.load(cache, weights_only=True)], cache)
    with pytest.raises(SystemExit, match="features of another size"):
        train_combiner.main([*args[:-2], "--out", str(tmp_path / "stale")])


@given(st.floats(0.1, 0.9), st.integers(0, 20))
@settings(max_examples=20, deadline=None)
def test_train_combiner_holes_follow_the_ratios_asked_for(ratio, draw):
    import torch
    import train_combiner

    label = torch.randint(0, 3, (224, 224))
    broken, missing = train_combiner.varied_holes(label, f"k{draw}", draw, (ratio, ratio))
    assert abs(float(missing.float().mean()) - ratio) < 0.12
    assert torch.equal(broken[~missing], label[~missing])
