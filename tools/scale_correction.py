"""Scale a trained model's learned correction against its label prior, chosen on a training split.

An L-MAE with a label prior predicts ``logits = head(tokens) + prior_scale * P`` (``P``: the prior's
class probabilities), with the prior scale and the head learned by cross-entropy. PA-mIoU weighs rare
classes as much as large ones, and cross-entropy does not: on CCP the model's correction improves pixel
accuracy but erases thin, rare classes that the random walk keeps (bracelet, necklace, tie), so the
model scores below its own prior. This script measures ``logits = s * head(tokens) + prior_scale * P``
for each ``--scales`` value ``s`` on ``--split`` (a split the model was trained on, not the one it is
reported on), and writes the model (float32) with the head's weights and bias times the best ``s``
(exactly that prediction; the config is unchanged). Run::

    python tools/scale_correction.py --model runs/ccp-rw16/last --data ../shared/data/ccp \\
        --split train --limit 120 --seed 0 1 2 --out runs/ccp-rw16-s

Prints PA-mIoU per scale; ``--out`` gets config.json, model.safetensors and scales.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from torch_label_mae import LabelCompleter
    from torch_label_mae.completer import with_correction
    from torch_label_mae.data import FolderDataset
    from torch_label_mae.evaluate import evaluate
    from torch_label_mae.hub import save_hub_files
    from torch_label_mae.io import atomic_write
    from torch_label_mae.report import per_draw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registered name, Hub repo id or folder")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="train", help="the split to choose the scale on (default: %(default)s)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2], help="hole draws, counted together")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--out", help="write the model with the best scale here")
    a = ap.parse_args(argv)
    if any(s < 0 for s in a.scales):
        raise SystemExit(f"--scales must be >= 0, got {a.scales}")
    base = LabelCompleter.from_pretrained(a.model, device="cpu")
    cfg = base.config
    if len(base.routes) > 1:
        raise SystemExit(f"{a.model}: routes {len(base.routes)} models by mask ratio; give one model (a folder)")
    if cfg.prior is None:
        raise SystemExit(f"{a.model}: needs a label prior (the head's output is the correction)")
    ds = FolderDataset(a.data, a.split)
    if ds.info.num_classes != cfg.num_classes:
        raise SystemExit(f"{a.model} has {cfg.num_classes} classes, {a.data} {ds.info.num_classes}")
    print(f"{a.model} on {ds.info.name} [{a.split}], paper protocol, seed {' '.join(map(str, a.seed))}")
    results = {}
    for s in a.scales:
        c = with_correction(base, s)
        method = lambda im, lab, miss, c=c: c.complete_batch(im, lab, miss)  # noqa: E731
        r = evaluate(method, ds, cfg.num_classes, seed=a.seed, limit=a.limit)
        results[s] = r["pa_miou"]
        print(f"scale {s:5.2f}  PA-mIoU {100 * r['pa_miou']:5.1f}  {per_draw(r, ' ')}", flush=True)
    best = max(results, key=results.get)
    print(f"best scale: {best:g}")
    if a.out:
        out = Path(a.out)
        save_hub_files(with_correction(base, best).model, out, dtype=torch.float32)
        record = {"model": a.model, "split": a.split, "limit": a.limit, "seeds": a.seed, "pa_miou": results}
        text = json.dumps({**record, "best": best}, indent=2)
        atomic_write(out / "scales.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
