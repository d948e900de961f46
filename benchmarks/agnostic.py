"""A class-agnostic completer against the classical anchors, on the same holes, over several hole draws.

For each dataset and mask ratio: the model (``--model``: a name, folder or several, e.g. ``any-m0.5`` and
a leave-out model), its label prior alone (no learned correction), its random walk alone (neither the
correction nor the prior combiner; models with a combiner), the tuned random walker (scikit-image, beta 2000), the
project's exact 16-connected L*a*b* walk and nearest fill. PA-mIoU counts the hidden pixels of every
draw together; the spread is the lowest and highest draw. Run (benchmark-only dependencies:
``pip install -e ".[bench]"``)::

    python benchmarks/agnostic.py --model any-m0.5 --data ../shared/data/marsscapes ../shared/data/dronedeploy \\
        --seeds 0 1 2 --ratios 0.25 0.5 0.75

Prints one table per dataset and protocol; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from common import random_walker

from torch_label_mae import LabelCompleter
from torch_label_mae.completer import with_correction
from torch_label_mae.data import FolderDataset
from torch_label_mae.evaluate import completer_method, evaluate, nearest_fill_method, walk_method

ANCHORS = ("prior", "walk", "rw", "walk16", "nearest")


def methods_for(models: list[str], anchors: list[str]) -> dict:
    out = {}
    for name in models:
        c = LabelCompleter.from_pretrained(name, device="cpu", precision="float32")
        out[name] = completer_method(c)
        if "prior" in anchors and name == models[0]:
            out[f"prior of {name}"] = completer_method(with_correction(c, 0.0))
        if "walk" in anchors and name == models[0] and getattr(c.config.prior, "combiner", 0):
            walk = with_correction(c, 0.0)  # its random walk alone: no correction, no combiner
            walk.config.prior = dataclasses.replace(walk.config.prior, combiner=0)
            out[f"walk of {name}"] = completer_method(walk)
    if "rw" in anchors:
        out["random walker b2000"] = random_walker(2000.0)
    if "walk16" in anchors:
        out["walk 16-conn lab exact"] = walk_method(solver="direct", connectivity=16, color="lab")
    if "nearest" in anchors:
        out["nearest fill"] = nearest_fill_method
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["any-m0.5"], help="names or folders (the first one's prior too)")
    ap.add_argument("--data", nargs="+", required=True, help="dataset roots")
    ap.add_argument("--split", default="val")
    ap.add_argument("--protocol", nargs="+", default=["paper"], choices=["paper", "native"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--anchors", nargs="*", default=list(ANCHORS), choices=ANCHORS)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    methods = methods_for(a.model, a.anchors)
    results = []
    for root in a.data:
        ds = FolderDataset(root, a.split)
        for protocol in a.protocol:
            for ratio in a.ratios:
                print(f"\n{ds.info.name} [{a.split}, {len(ds) if a.limit is None else a.limit} images] protocol "
                      f"{protocol}, ratio {ratio}, draws {a.seeds}")  # fmt: skip
                print(f"{'method':34s} {'PA-mIoU':>8s} {'draws':>13s} {'mIoU':>6s} {'img/s':>7s}")
                for name, method in methods.items():
                    m = evaluate(method, ds, ds.info.num_classes, protocol=protocol, ratio=ratio, seed=a.seeds,
                                 limit=a.limit, batch_size=8)  # fmt: skip
                    draws = [d["pa_miou"] for d in m.get("per_seed", [m])]
                    spread = f"{100 * min(draws):.1f}-{100 * max(draws):.1f}"
                    print(f"{name:34s} {100 * m['pa_miou']:8.1f} {spread:>13s} {100 * m['miou']:6.1f} "
                          f"{m['images_per_s']:7.1f}", flush=True)  # fmt: skip
                    results.append(dict(dataset=ds.info.name, protocol=protocol, ratio=ratio, method=name,
                                        pa_miou=m["pa_miou"], draws=draws, miou=m["miou"],
                                        images_per_s=m["images_per_s"]))  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
