"""A completer's speed against the tuned random walker, interleaved on the same labels.

On a machine whose speed drifts (a shared VM), two timings taken minutes apart do not compare. This
script runs rounds: ``complete_batch`` on the same labels at each ``--batch-sizes``, then scikit-image's
random walker (beta 2000, mode ``bf``, one thread) on all of them, and reports each round's images/s and
the completer's ratio to the walker of the same round, then the median and range of the ratios. Inputs
as ``bench_inference.py``'s (``--images`` labels of ``--data``'s ``--split`` at ``--size``, paper
protocol holes). Needs scikit-image (``pip install -e ".[bench]"``). Run::

    python benchmarks/vs_random_walker.py --model any-m0.5 --data ../shared/data/camvid --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import MISSING, parse_size, random_walker, read_samples, real_inputs

from torch_label_mae import LabelCompleter

RW_BETA = 2000.0  # the tuned random walker (docs/training.md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="any-m0.5", help="a name or a folder")
    ap.add_argument("--data", required=True, help="a dataset root")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=parse_size, default=(224, 224), help="W x H")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the completer")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.images < 1 or min(a.batch_sizes) < 1:
        ap.error("--rounds, --images and --batch-sizes must be positive")
    torch.set_num_threads(a.threads)
    completer = LabelCompleter.from_pretrained(a.model, device="cpu")
    _, samples = read_samples(a.data, a.split, a.images)
    images, labels = real_inputs(samples, a.size, 0.5, 0)
    missing = [lb == MISSING for lb in labels]
    walker = random_walker(RW_BETA)
    runs = {f"b{b}": (lambda b=b: completer.complete_batch(images, labels, batch_size=b)) for b in a.batch_sizes}
    runs["random walker"] = lambda: walker(images, labels, missing)
    completer.complete_batch(images[:1], labels[:1])  # warm-up, not timed
    rounds = []
    for r in range(a.rounds):
        speed = {}
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            speed[name] = len(images) / (time.perf_counter() - t)
        rounds.append(speed)
        ratios = "  ".join(f"{k} {v / speed['random walker']:.2f}x" for k, v in speed.items() if k != "random walker")
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:.2f} img/s" for k, v in speed.items()) + f"  |  {ratios}")
    summary = {}
    for name in runs:
        if name == "random walker":
            continue
        ratio = [s[name] / s["random walker"] for s in rounds]
        summary[name] = dict(median=statistics.median(ratio), low=min(ratio), high=max(ratio))
        print(
            f"{name}: {summary[name]['median']:.2f}x the random walker (median; {min(ratio):.2f}x to {max(ratio):.2f}x)"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(model=a.model, images=len(images), rounds=rounds, ratios=summary), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
