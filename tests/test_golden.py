"""Every model in ``hub/`` completes the bundled samples exactly as it did when the goldens were
written (float32 on the CPU): a refactor must not change a single filled pixel.

The goldens in ``tests/golden/`` were written by ``python tests/test_golden.py`` (run it again only
when a change of completions is intended, and say so in the commit). bfloat16 and CUDA kernels may
flip near-ties, so the comparison is made in float32 on the CPU only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_label_mae import LabelCompleter
from torch_label_mae.data import degrade, read_image, read_label

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "torch_label_mae" / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden"
MODELS = sorted(p.name for p in (ROOT / "hub").iterdir() if (p / "config.json").is_file())


def complete_samples(name: str) -> dict[str, np.ndarray]:
    """``{"sample<i>": completed label}`` for the bundled samples (sorted by id) with half of their 32 px
    blocks hidden."""
    completer = LabelCompleter.from_folder(ROOT / "hub" / name, device="cpu", precision="float32")
    keys = sorted(p.stem for p in (SAMPLES / "labels").glob("*.png"))
    images = [read_image(SAMPLES / "images" / f"{k}.jpg") for k in keys]
    broken = [
        degrade(read_label(SAMPLES / "labels" / f"{k}.png"), 0.5, 32, seed=i, mode="blocks")[0]
        for i, k in enumerate(keys)
    ]
    out = completer.complete_batch(images, broken)
    return {f"sample{i}": o.numpy().astype(np.uint8) for i, o in enumerate(out)}


@pytest.mark.filterwarnings("ignore:labels\\[")  # the CCP models warn on CamVid samples, as they should
@pytest.mark.parametrize("name", MODELS)
def test_completions_are_unchanged_bit_for_bit(name):
    for key, got in complete_samples(name).items():
        path = GOLDEN / f"{name}.{key}.png"
        assert path.is_file(), f"no golden {path}: write it with `python tests/test_golden.py`"
        want = np.asarray(Image.open(path))
        assert got.shape == want.shape
        diff = int((got != want).sum())
        assert diff == 0, f"{name} on {key}: {diff} pixels differ from the golden completion"


if __name__ == "__main__":  # write the goldens
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    GOLDEN.mkdir(exist_ok=True)
    for name in MODELS:
        for key, arr in complete_samples(name).items():
            Image.fromarray(arr, mode="L").save(GOLDEN / f"{name}.{key}.png", optimize=True)
            print(f"wrote {GOLDEN / f'{name}.{key}.png'}")
