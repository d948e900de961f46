"""Training throughput: images/s of ``train()`` on a real dataset, plus where the host time of a step goes.

Prints one JSON object: the settings, the load average before and after, and for each run the steps,
the seconds of those steps (the JSONL log's epoch ``seconds``, which excludes reading the dataset) and
images/s. ``--profile`` also times the per-sample host work (augment, masking, label prior) alone.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --data ../shared/data/camvid --threads 1 --workers 0 1

Run before / after comparisons back to back on an otherwise idle machine and keep the load figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch_label_mae import train as train_mod  # noqa: E402
from torch_label_mae.train import TrainConfig, train  # noqa: E402


def run_once(args, workers: int | None, precision: str | None = None) -> dict:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = dict(
        data=args.data,
        model=args.model,
        batch_size=args.batch_size,
        max_steps=args.steps,
        epochs=10**6,
        val_split="",
        threads=args.threads,
        loss="ce",
        model_overrides={"label_prior": True},
    )
    if precision is not None and "precision" in fields:  # older train.py versions have no precision
        kw["precision"] = precision
    if workers is not None and "workers" in fields:  # older train.py versions have no workers
        kw["workers"] = workers
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=str(Path(tmp) / "run"), **kw)
        t = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t
        recs = [json.loads(x) for x in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("epoch", 0) > 0 or r.get("partial")]  # epoch 0: the prior's record
    seconds = sum(r["seconds"] for r in recs)  # training time of every epoch (no dataset reading, no val)
    return {
        "workers": workers if "workers" in fields else "n/a (in-loop pipeline)",
        "precision": precision or "default",
        "steps": recs[-1]["step"],
        "seconds": round(seconds, 2),
        "img_s": round(recs[-1]["step"] * args.batch_size / seconds, 2),
        "wall_s_with_setup": round(wall, 1),
    }


def profile_host(args) -> dict:
    """Seconds per sample of the host work alone (no model step), through the training pipeline's own code."""
    from torch_label_mae.config import NAMED_CONFIGS
    from torch_label_mae.data import open_dataset

    ds = open_dataset(args.data, "train")
    info = ds.info
    mcfg = NAMED_CONFIGS[args.model](
        num_classes=info.num_classes,
        ignore_index=info.ignore_index,
        background_index=info.background_index,
        label_prior=True,
    )
    if not hasattr(train_mod, "TrainSamples"):
        return {"profile": "needs train.TrainSamples"}
    cfg = TrainConfig(data=args.data, model=args.model, batch_size=args.batch_size)
    n = min(len(ds), 4 * args.batch_size)
    samples = train_mod.TrainSamples(train_mod.load_pairs(ds, limit=n), cfg, mcfg)
    torch.manual_seed(0)
    out = {}
    for stage in samples.STAGES:
        samples.timings[stage] = 0.0
    t = time.perf_counter()
    for i in range(n):
        samples[i]
    total = time.perf_counter() - t
    out["host_ms_per_sample"] = round(1000 * total / n, 2)
    out.update({f"{k}_ms": round(1000 * v / n, 2) for k, v in samples.timings.items()})
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--workers", type=int, nargs="*", default=[None], help="DataLoader workers to try")
    ap.add_argument(
        "--precision", nargs="*", default=[None], help="autocast settings to try (auto | float32 | bfloat16)"
    )
    ap.add_argument("--profile", action="store_true", help="also time the per-sample host work alone")
    ap.add_argument("--json", help="also write the figures here")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {
        "data": args.data,
        "model": args.model,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": os.getloadavg(),
        "runs": [run_once(args, w, p) for w in args.workers for p in args.precision],
    }
    if args.profile:
        res["host"] = profile_host(args)
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
