"""Classical label-completion baselines, evaluated by the library's own protocol code.

- nearest fill: every missing pixel takes the class of the nearest known pixel
  (``torch_label_mae.propagation.nearest_fill``: ``scipy.ndimage.distance_transform_edt(..., return_indices=True)``);
- random walker: ``skimage.segmentation.random_walker(img, seeds, beta, mode="bf", channel_axis=-1)``
  with seeds = class + 1 on known pixels and 0 on missing ones, mapped back to class ids;
- random walk (torch): the library's own batched propagation (``torch_label_mae.propagation``, the
  label prior of the ``-rw`` models), ``--sweeps`` relaxation sweeps from the nearest fill, or solved
  exactly with ``--solver direct``; ``--connectivity 8|16 --color lab``: on the 8- or 16-connected
  graph with colour steps in L*a*b* (16: the graph of ``ccp-rw-m0.5``);
- ``--walk-model MODEL``: a model's random walk alone (without its learned correction and prior combiner).

Run (benchmark-only dependencies: ``pip install -e ".[bench]"``)::

    python benchmarks/baselines.py --data ../shared/data/camvid --split val
    python benchmarks/baselines.py --data ../shared/data/camvid --split val --methods rw --betas 30 130 500 2000 8000

Prints PA-mIoU, mIoU, pixel accuracy and images/s per method and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch
from common import random_walker

from torch_label_mae.evaluate import nearest_fill_method as nearest_fill
from torch_label_mae.evaluate import walk_method as torch_random_walk

__all__ = ["model_walk", "nearest_fill", "random_walker", "torch_random_walk"]


def model_walk(model: str):
    """The random walk of a model alone (its graph, beta and solver), without the model's correction and
    prior combiner."""
    from torch_label_mae import LabelCompleter

    m = LabelCompleter.from_pretrained(model, device="cpu", precision="float32").model
    kind = m.config.prior.kind if m.config.prior is not None else None
    if kind != "random_walk":
        raise SystemExit(f"--walk-model {model}: its prior is {kind!r}, not a random walk")
    m.config.prior = dataclasses.replace(m.config.prior, combiner=0)  # the walk alone, without a prior combiner

    @torch.inference_mode()
    def method(images, labels, missing):
        out = []
        for img, lab, miss in zip(images, labels, missing, strict=True):  # sizes may differ (native)
            known = (lab != 255) & ~miss
            out.append(m.prior(torch.where(known, lab, 255)[None], known[None], img[None]).classes[0])
        return out

    return method


def main(argv=None) -> int:
    from torch_label_mae.data import FolderDataset
    from torch_label_mae.evaluate import evaluate
    from torch_label_mae.propagation import COLORS, CONNECTIVITIES, SOLVERS
    from torch_label_mae.report import per_draw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--protocol", default="paper", choices=["paper", "native"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="hole draws, counted together (e.g. 0 1 2)")
    ap.add_argument("--methods", nargs="+", default=["nearest", "rw"], choices=["nearest", "rw", "walk"])
    ap.add_argument("--betas", type=float, nargs="+", default=[130.0, 2000.0])
    ap.add_argument("--sweeps", type=int, default=40, help="walk: relaxation sweeps")
    ap.add_argument("--solver", default="sor", choices=SOLVERS, help="walk: sweeps or exact solve")
    ap.add_argument("--connectivity", type=int, default=4, choices=CONNECTIVITIES, help="walk: pixel graph")
    ap.add_argument("--color", default="rgb", choices=COLORS, help="walk: colour space of the edge weights")
    ap.add_argument("--walk-betas", type=float, nargs="+", default=[2000.0], help="walk: edge sensitivities")
    ap.add_argument(
        "--walk-model", nargs="+", default=[], metavar="MODEL", help="also: these models' random-walk priors alone"
    )
    ap.add_argument("--limit", type=int)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    ds = FolderDataset(a.data, a.split)
    runs = []
    if "nearest" in a.methods:
        runs.append(("nearest fill", nearest_fill))
    if "rw" in a.methods:
        runs += [(f"random walker beta {b:g}", random_walker(b)) for b in a.betas]
    if "walk" in a.methods:
        for b in a.walk_betas:  # the default beta keeps the short name
            solve = "exact" if a.solver == "direct" else str(a.sweeps)
            graph = "" if (a.connectivity, a.color) == (4, "rgb") else f" {a.connectivity}-conn {a.color}"
            name = f"random walk (torch) {solve}{graph}" + ("" if b == 2000.0 else f" beta {b:g}")
            runs.append((name, torch_random_walk(b, a.sweeps, a.solver, a.connectivity, a.color)))
    runs += [(f"walk prior of {m}", model_walk(m)) for m in a.walk_model]
    results = {}
    print(f"{ds.info.name} [{a.split}] protocol {a.protocol}, ratio {a.ratio}, seed {' '.join(map(str, a.seed))}")
    per_seed = "  per seed" if len(a.seed) > 1 else ""
    print(f"{'method':28s} {'PA-mIoU':>8s} {'mIoU':>7s} {'acc':>7s} {'img/s':>8s}{per_seed}")
    for name, method in runs:
        r = evaluate(method, ds, ds.info.num_classes, protocol=a.protocol, ratio=a.ratio, seed=a.seed, limit=a.limit)
        results[name] = dict(r, dataset=ds.info.name, split=a.split, protocol=a.protocol, ratio=a.ratio)  # the holes
        each = per_draw(r, " ")
        print(
            f"{name:28s} {100 * r['pa_miou']:8.1f} {100 * r['miou']:7.1f} {100 * r['pixel_acc']:7.1f} "
            f"{r['images_per_s']:8.1f}  {each}",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
