"""Speed / accuracy of several trained models side by side: one row per model folder.

For each model (a registered name or a folder with config.json + model.safetensors): parameters,
validation PA-mIoU (paper protocol by default, the library's ``evaluate``) and images/s of
``complete_batch`` at batch ``--batch`` on val images resized to the model's size with half the
patches hidden (``bench_inference.bench_api``: median of ``--repeats``, after a warm-up). Run::

    python benchmarks/size_curve.py --data ../shared/data/camvid \\
        --models runs/size-micro/last runs/size-tiny/last runs/size-small/last --json sizes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from common import bench_api, read_samples, real_inputs

from torch_label_mae import LabelCompleter
from torch_label_mae.data import FolderDataset
from torch_label_mae.evaluate import completer_method, evaluate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--models", nargs="+", required=True, help="registered names or model folders")
    ap.add_argument("--protocol", default="paper", choices=["paper", "native"])
    ap.add_argument("--limit", type=int, help="evaluate the first N images only")
    ap.add_argument("--images", type=int, default=64, help="images per speed timing")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ds = FolderDataset(a.data, a.split)
    _, samples = read_samples(a.data, a.split, a.images)
    rows = []
    print(f"{ds.info.name} [{a.split}] protocol {a.protocol}, speed at batch {a.batch}, {a.threads} threads")
    print(f"{'model':40s} {'params M':>9s} {'PA-mIoU':>8s} {'img/s':>8s}")
    for name in a.models:
        completer = LabelCompleter.from_pretrained(name, device="cpu")
        params = sum(p.numel() for p in completer.parameters()) / 1e6

        acc = evaluate(completer_method(completer), ds, ds.info.num_classes, protocol=a.protocol, limit=a.limit)
        images, labels = real_inputs(samples, completer.config.size, 0.5, 0)  # paper-protocol holes
        speed = len(images) / statistics.median(bench_api(completer, images, labels, a.batch, a.repeats, 1))
        rows.append(dict(model=name, params_m=params, pa_miou=acc["pa_miou"], images_per_s=speed))
        print(f"{name:40s} {params:9.2f} {100 * acc['pa_miou']:8.1f} {speed:8.1f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(data=a.data, split=a.split, protocol=a.protocol, batch=a.batch, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
