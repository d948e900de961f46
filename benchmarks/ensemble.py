"""PA-mIoU of an ensemble: the softmax probabilities of several models averaged, on the paper protocol's
holes (224 x 224, ``--ratio`` of the 16 px patches hidden), by the library's own evaluation code.

Each member computes its own label prior (so models with different priors, e.g. with and without
learned edge weights, can be combined). Paper protocol only: every member must work at 224 x 224
with 16 px patches and have the data's classes. Run::

    python benchmarks/ensemble.py --data ../shared/data/ccp --models ccp-rw-m0.5 runs/ccp-rwl-ft/last

Prints each member alone and the ensemble.
"""

from __future__ import annotations

import argparse
import sys

import torch


def ensemble_method(models):
    """``method(images, labels, missing)`` for :func:`torch_label_mae.evaluate.evaluate` that averages
    the members' probabilities over the hidden patches."""
    from torch_label_mae.masking import hidden_from_missing

    @torch.inference_mode()
    def method(images, labels, missing):
        x, lab, miss = torch.stack(images), torch.stack(labels), torch.stack(missing)
        hidden = hidden_from_missing(miss, models[0].config.grid)  # [B, L]
        prob = sum(m(x, lab, hidden).float().softmax(1) for m in models) / len(models)  # [B, N, H, W]
        return list(torch.where(miss, prob.argmax(1), lab))

    return method


def main(argv=None) -> int:
    from torch_label_mae import LabelCompleter
    from torch_label_mae.data import FolderDataset
    from torch_label_mae.evaluate import evaluate
    from torch_label_mae.report import per_draw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", required=True, help="registered names, Hub repo ids or folders")
    ap.add_argument("--split", default="val")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="hole draws, counted together (e.g. 0 1 2)")
    ap.add_argument("--limit", type=int)
    a = ap.parse_args(argv)
    ds = FolderDataset(a.data, a.split)
    models = [LabelCompleter.from_pretrained(m, device="cpu", precision="float32").model for m in a.models]
    for name, m in zip(a.models, models, strict=True):
        c = m.config
        if c.size != (224, 224) or c.patch_size != 16 or c.num_classes != ds.info.num_classes:
            raise SystemExit(
                f"{name}: needs 224 x 224, 16 px patches and {ds.info.num_classes} classes; got {c.size}, "
                f"{c.patch_size} px, {c.num_classes} classes"
            )
    runs = [(name, [m]) for name, m in zip(a.models, models, strict=True)] + [("ensemble", models)]
    print(f"{ds.info.name} [{a.split}] paper protocol, ratio {a.ratio}, seed {' '.join(map(str, a.seed))}")
    for name, members in runs:
        r = evaluate(ensemble_method(members), ds, ds.info.num_classes, ratio=a.ratio, seed=a.seed, limit=a.limit)
        each = per_draw(r, " ")
        print(f"{name:40s} PA-mIoU {100 * r['pa_miou']:5.1f}  {r['images_per_s']:6.1f} img/s  {each}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
