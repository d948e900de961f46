"""Tools that write model weights (``tools/``, outside the benchmarks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
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
