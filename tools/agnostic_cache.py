"""Train a class-agnostic L-MAE on CPU from a cache of prepared samples (the recipe of ``any-m0.5``).

The exact random-walk prior costs about 0.15 s per 224 px sample on one core, several times the model's
training step, so ``label-mae train`` on 2 cores spends most of its time on the prior. This tool splits
the work: ``make`` prepares samples once (the library's own :class:`torch_label_mae.train.TrainSamples`:
random crop and flip, random slots, mixed masking over a range of ratios, the prior), ``train`` trains on
them for many epochs, drawing a fresh slot permutation and flip per sample and step (cheap; what the model
must not learn are the slots' identities, and those are redrawn every time). Run::

    python tools/agnostic_cache.py make --data ../shared/data/camvid --views 3 --out cache/camvid.pt
    python tools/agnostic_cache.py train --cache cache/camvid.pt cache/ccp.pt ... --out runs/any --minutes 60

``train`` writes ``OUT/checkpoint.pt`` every few minutes (``--resume`` continues) and ``OUT/last`` (a Hub
folder) at the end. Measure the result with ``benchmarks/agnostic.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from torch_label_mae.config import LMAEConfig
from torch_label_mae.data import FolderDataset
from torch_label_mae.hub import save_hub_files
from torch_label_mae.io import atomic_write
from torch_label_mae.loss import cross_entropy
from torch_label_mae.masking import PAPER_MIX
from torch_label_mae.model import LMAE
from torch_label_mae.prior import LabelPrior
from torch_label_mae.slots import present_slots
from torch_label_mae.train import TrainConfig, TrainSamples, collate, load_pairs

# the model the cache is made for: class-agnostic, 32 slots, the exact 4-connected L*a*b* walk as prior
PRIOR = dict(kind="random_walk", solver="direct", connectivity=4, color="lab", beta=2000.0)


def model_config(size: str = "tiny") -> LMAEConfig:
    make = getattr(LMAEConfig, size)
    return make(num_classes=32, class_agnostic=True, ignore_index=255, mask_ratio=0.5, prior=PRIOR)


def make(args) -> None:
    torch.set_num_threads(1)
    mcfg = model_config(args.model)
    cfg = TrainConfig(
        data=args.data, ratio_range=(0.25, 0.75), block_holes=args.block_holes, mask_pool=0, mix=PAPER_MIX
    )  # from scratch, as any-m0.5 was trained
    ds = FolderDataset(args.data, "train")
    samples = TrainSamples(load_pairs(ds, args.limit), cfg, mcfg, seed=args.seed, with_prior=True)
    items, t0 = [], time.time()
    for v in range(args.views):
        for i in range(len(samples)):
            it = samples[i]
            it["prior_prob"] = (it["prior_prob"].clamp(0, 1) * 255).round().to(torch.uint8)  # 1 byte a value
            del it["known"]  # the label with the hidden pixels unknown: made again in train
            items.append(it)
        print(f"{args.data}: view {v + 1}/{args.views}, {len(items)} samples, {time.time() - t0:.0f} s", flush=True)
    blob = {"config": json.dumps(mcfg.to_dict()), "items": items}
    atomic_write(Path(args.out), lambda tmp: torch.save(blob, tmp))


def permute(batch: dict, num_slots: int, rng: torch.Generator) -> dict:
    """A fresh random slot permutation per sample (labels, prior classes and prior index) and a flip."""
    out = dict(batch)
    out["known"] = torch.where(batch["pix"], torch.full_like(batch["label"], 255), batch["label"])
    for b in range(batch["image"].shape[0]):
        perm = torch.randperm(num_slots, generator=rng)
        lut = torch.cat([perm, torch.full((256 - num_slots,), 255)]).to(torch.uint8)
        for k in ("label", "known", "prior_classes"):
            out[k][b] = lut[out[k][b].long()]
        out["prior_index"][b] = perm[batch["prior_index"][b]]
        if torch.rand((), generator=rng) < 0.5:
            for k in ("image", "label", "known", "pix", "prior_classes", "prior_prob"):
                out[k][b] = out[k][b].flip(-1)
            gh = int(math.isqrt(batch["hidden"].shape[1]))
            out["hidden"][b] = batch["hidden"][b].view(gh, -1).flip(-1).flatten()
    return out


def step(model: LMAE, batch: dict, opt, lr: float) -> float:
    c = model.config
    lab, known = batch["label"].long(), batch["known"].long()
    prior = LabelPrior(batch["prior_classes"].long(), batch["prior_prob"].float() / 255.0,
                       batch["prior_index"][:, :, None, None])  # fmt: skip
    for g in opt.param_groups:
        g["lr"] = lr
    image = batch["image"]  # uint8 from TrainSamples (float in caches made before it kept uint8)
    image = image.float() / 255 if image.dtype == torch.uint8 else image
    logits = model(image, known, batch["hidden"], prior, hidden_only=True)  # [M, p*p, N]
    target = torch.where(batch["pix"], lab, torch.full_like(lab, c.ignore_index))
    held = present_slots(known, c.num_classes).gather(1, target.clamp(0, c.num_classes - 1).flatten(1))
    target = torch.where(held.view_as(target), target, torch.full_like(target, c.ignore_index))
    target = model.patchify(target.unsqueeze(1))[batch["hidden"]].flatten()
    loss = cross_entropy(logits.flatten(0, 1), target, ignore_index=c.ignore_index)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def train(args) -> None:
    torch.set_num_threads(args.threads)
    blobs = [torch.load(p, weights_only=True) for p in args.cache]  # our own cache files
    mcfg = LMAEConfig.from_dict(json.loads(blobs[0]["config"]))
    items = [it for b in blobs for it in b["items"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = LMAE(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    state = {"step": 0, "seconds": 0.0}
    ckpt = out / "checkpoint.pt"
    if args.resume and ckpt.is_file():
        blob = torch.load(ckpt, weights_only=True)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        state = json.loads(blob["state"])
    rng, pick = torch.Generator().manual_seed(args.seed + state["step"]), random.Random(args.seed + state["step"])
    budget, t0, saved, losses = args.minutes * 60.0, time.time() - state["seconds"], time.time(), []
    model.train()
    while (elapsed := time.time() - t0) < budget:
        t = elapsed / budget
        lr = args.lr * min(1.0, (state["step"] + 1) / 100) * 0.5 * (1 + math.cos(math.pi * t))
        batch = permute(collate(pick.sample(items, args.batch_size)), mcfg.num_classes, rng)
        losses.append(step(model, batch, opt, lr))
        state["step"] += 1
        if state["step"] % 50 == 0:
            print(json.dumps({"step": state["step"], "min": round(elapsed / 60, 1), "lr": lr,
                              "loss": sum(losses[-50:]) / 50}), flush=True)  # fmt: skip
        if time.time() - saved > 300:
            state["seconds"] = time.time() - t0
            save(model, opt, state, ckpt)
            saved = time.time()
    state["seconds"] = time.time() - t0
    save(model, opt, state, ckpt)
    save_hub_files(model, out / "last")


def save(model, opt, state, ckpt: Path) -> None:
    blob = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": json.dumps(state)}
    atomic_write(ckpt, lambda tmp: torch.save(blob, tmp))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="prepare samples of one dataset's train split")
    m.add_argument("--data", required=True)
    m.add_argument("--views", type=int, default=3, help="samples per training image")
    m.add_argument("--block-holes", type=float, default=0.25, help="share of samples with holes off the grid")
    m.add_argument("--model", default="tiny")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--limit", type=int, help="first N images only (tests)")
    m.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train on cache files")
    t.add_argument("--cache", nargs="+", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=60.0)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    (make if a.cmd == "make" else train)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
