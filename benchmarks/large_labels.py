"""Time and peak memory of completing large labels: one ``complete_batch`` call per size, each in a
fresh process, so that its peak resident memory is its own (the process's high-water mark,
``common.rss_mib``; what the process held before the call, the interpreter, torch and the loaded model, is
printed apart as the baseline).

The image and label are a val pair of ``--data`` resized to each size (``--megapixels``), with half of
the 32 px blocks hidden (``degrade(..., mode="blocks")``, seed 0); ``--batch`` copies of it go in one call.
Run::

    python benchmarks/large_labels.py --model any-m0.5 --data ../shared/data/camvid --megapixels 0.5 1 2
    python benchmarks/large_labels.py --model any-m0.5 --data ../shared/data/camvid --megapixels 1 --batch 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import rss_mib

from torch_label_mae import LabelCompleter
from torch_label_mae.data import FolderDataset, degrade
from torch_label_mae.io import resize_image, resize_label


def peak_gb() -> float:
    """The process's peak resident memory so far, in GB."""
    return rss_mib() * 2**20 / 1e9


def one(model: str, data: str, megapixels: float, batch: int, threads: int) -> dict:
    """Complete ``batch`` copies of the first val pair resized to ``megapixels``: seconds and peak GB."""
    torch.set_num_threads(threads)
    completer = LabelCompleter.from_pretrained(model, device="cpu")
    baseline = peak_gb()
    image, label, _ = FolderDataset(data, "val")[0]
    scale = (megapixels * 1e6 / label.numel()) ** 0.5
    hw = (round(label.shape[0] * scale), round(label.shape[1] * scale))
    image = (resize_image(image.unsqueeze(0), hw)[0] * 255).round().to(torch.uint8)
    broken, _ = degrade(resize_label(label.unsqueeze(0), hw)[0], 0.5, 32, seed=0, mode="blocks")
    t0 = time.perf_counter()
    completer.complete_batch([image] * batch, [broken] * batch)
    seconds = time.perf_counter() - t0
    return {"size": list(hw), "batch": batch, "seconds": seconds, "baseline_gb": baseline, "peak_gb": peak_gb()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="any-m0.5")
    ap.add_argument("--data", required=True)
    ap.add_argument("--megapixels", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--batch", type=int, default=1, help="copies of the label in one call")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: print one JSON row
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.model, a.data, a.megapixels[0], a.batch, a.threads)))
        return 0
    print(f"{'size':>11s} {'batch':>5s} {'seconds':>8s} {'baseline GB':>11s} {'peak GB':>8s} {'GB per MP':>9s}")
    rows = []
    for mp in a.megapixels:
        args = ["--model", a.model, "--data", a.data, "--megapixels", str(mp), "--batch", str(a.batch)]
        cmd = [sys.executable, __file__, "--one", *args, "--threads", str(a.threads)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # the child's errors go to our stderr
        if out.returncode != 0:
            raise SystemExit(f"large_labels.py: the run at {mp} MP failed (exit {out.returncode}; its error above)")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_mp = (r["peak_gb"] - r["baseline_gb"]) / (mp * a.batch)
        rows.append({**r, "megapixels": mp, "gb_per_megapixel": per_mp})
        size = "x".join(map(str, r["size"]))
        figures = f"{r['seconds']:8.1f} {r['baseline_gb']:11.2f} {r['peak_gb']:8.2f} {per_mp:9.2f}"
        print(f"{size:>11s} {a.batch:5d} {figures}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "data": a.data, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
