"""Training (paper section IV-A recipe by default), resumable and DDP-ready.

Recipe: Adam (weight decay 1e-4), ReduceLROnPlateau on the epoch's train loss (min mode, patience 5,
threshold 1e-3, factor 0.8), mixed masking 1:2:2, random crop + rescale to the model size, flips.
Every epoch: a JSONL log line (loss, lr, val PA-mIoU), a checkpoint, and the best model exported as
a Hub folder (config.json + model.safetensors). SIGTERM saves a checkpoint and exits; ``resume=True``
continues from the last one. Under ``torchrun`` it runs DDP (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .completer import complete_tensors, save_hub_files
from .data import open_dataset, resize_image, resize_label
from .evaluate import evaluate
from .io import atomic_write
from .loss import BalancedCrossEntropy, cross_entropy
from .masking import PAPER_MIX, block_holes, hidden_from_missing, hidden_to_pixels, mixed_masking
from .model import LMAE, NAMED_CONFIGS, LMAEConfig
from .outputs import check_outputs


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are the paper's recipe at CPU size."""

    data: str = ""
    dataset_kind: str = "folder"  # folder | voc | cityscapes
    out: str = "runs/lmae"
    model: str = "tiny"  # a named config: paper | tiny | small
    init: str | None = None  # fine-tune: start from these weights (name, repo id or folder); its config
    model_overrides: dict = field(default_factory=dict)
    epochs: int = 400
    max_steps: int | None = None  # stop after this many optimizer steps in total (tests, smoke runs)
    max_minutes: float | None = None  # wall-clock budget; stops cleanly (checkpointed) when spent
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    plateau_patience: int = 5
    plateau_threshold: float = 1e-3
    plateau_factor: float = 0.8
    schedule: str = "plateau"  # plateau (the paper's ReduceLROnPlateau) | cosine (to 0 over `epochs`, after warmup)
    optimizer: str = "adam"  # adam (the paper's, L2 weight decay) | adamw (decoupled weight decay)
    mask_ratio: float = 0.5
    ratio_range: tuple[float, float] | None = None  # sample the ratio per sample in [lo, hi]
    mix: tuple[float, float, float] = PAPER_MIX
    block_holes: float = 0.0  # share of samples whose holes are blocks off the patch grid (masking.block_holes)
    block_range: tuple[int, int] = (8, 48)  # their side, in pixels at the model's size
    loss: str = "balanced"  # balanced (eq. 10-12) | ce
    crop_scale: tuple[float, float] = (0.5, 1.0)  # crop side as a fraction of the image side
    flip: bool = True
    val_split: str = "val"
    val_limit: int | None = None
    seed: int = 0
    threads: int | None = None


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_pairs(ds) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Read every ``(image, label)`` of a dataset into memory once (labels as uint8: ids <= 255)."""
    return [(img, lab.to(torch.uint8)) for img, lab, _ in (ds[i] for i in range(len(ds)))]


def augment(image: torch.Tensor, label: torch.Tensor, size, scale, flip: bool, rng: random.Random):
    """Random crop (same aspect as the image, side fraction in ``scale``), rescale to ``size``, flip."""
    h, w = label.shape
    s = rng.uniform(*scale)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    img = resize_image(image[None, :, y : y + ch, x : x + cw], size)[0]
    lab = resize_label(label[None, y : y + ch, x : x + cw].long(), size)[0]
    if flip and rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return img, lab


def _model_method(model: LMAE):
    device = next(model.parameters()).device

    def method(images, labels, missing):
        batch = [torch.stack(t).to(device) for t in (images, labels, missing)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out, _ = complete_tensors(model, *batch)
        return list(out.cpu())

    return method


def init_model(cfg: TrainConfig, from_data: dict) -> tuple[LMAE, LMAEConfig]:
    """Fine-tuning: the model of ``cfg.init`` (a registered name, Hub repo id or local folder), loaded
    strictly from safetensors, with its own config plus ``model_overrides`` that do not change the
    weights' shapes (e.g. ``mask_ratio``). The dataset must have the model's classes."""
    from .completer import LabelCompleter

    start = LabelCompleter.from_pretrained(cfg.init, device="cpu")
    if start.config.num_classes != from_data["num_classes"]:
        raise ValueError(
            f"--init {cfg.init} has {start.config.num_classes} classes but the data {from_data['num_classes']}"
        )
    mcfg = LMAEConfig.from_dict({**start.config.to_dict(), "mask_ratio": cfg.mask_ratio, **cfg.model_overrides})
    model = LMAE(mcfg)
    try:
        model.load_state_dict(start.model.state_dict())
    except RuntimeError as e:
        raise ValueError(f"--set overrides change the shapes of the weights of --init {cfg.init}: {e}") from None
    return model, mcfg


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, total_steps: int) -> None:
    """Linear warmup over ``warmup_steps``; then the cosine decay to 0 at ``total_steps`` (``schedule="cosine"``)
    or the rate ReduceLROnPlateau keeps (``"plateau"``)."""
    for g in opt.param_groups:
        g.setdefault("base_lr", g["lr"])
        if step < cfg.warmup_steps:
            g["lr"] = g["base_lr"] * (step + 1) / max(cfg.warmup_steps, 1)
        elif cfg.schedule == "cosine":
            t = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
            g["lr"] = g["base_lr"] * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train; returns the best validation metrics. Safe to call again with ``resume=True``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _rank()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    check_outputs([("out", out)], [("data", cfg.data)])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + rank)
    rng = random.Random(cfg.seed * 1000 + rank)

    train_ds = open_dataset(cfg.data, "train", cfg.dataset_kind)
    info = train_ds.info
    if cfg.model not in NAMED_CONFIGS:
        raise ValueError(f"unknown model config {cfg.model!r}; choose from {sorted(NAMED_CONFIGS)}")
    if cfg.loss not in ("balanced", "ce"):
        raise ValueError(f"loss must be 'balanced' or 'ce', got {cfg.loss!r}")
    if cfg.schedule not in ("plateau", "cosine"):
        raise ValueError(f"schedule must be 'plateau' or 'cosine', got {cfg.schedule!r}")
    if cfg.optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {cfg.optimizer!r}")
    from_data = dict(
        num_classes=info.num_classes,
        ignore_index=info.ignore_index,
        background_index=info.background_index,
        class_names=info.classes,
        mask_ratio=cfg.mask_ratio,
    )
    known = LMAEConfig.keys()
    unknown = sorted(set(cfg.model_overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
    if cfg.init:
        model, mcfg = init_model(cfg, from_data)
        model = model.to(device)
    else:
        mcfg = NAMED_CONFIGS[cfg.model](**{**from_data, **cfg.model_overrides})
        model = LMAE(mcfg).to(device)
    criterion = BalancedCrossEntropy(info.num_classes, info.ignore_index) if cfg.loss == "balanced" else None
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(criterion.parameters()) if criterion is not None else []
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", patience=cfg.plateau_patience, threshold=cfg.plateau_threshold, factor=cfg.plateau_factor
    )
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_metrics": None}
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        # our own local checkpoint (never a downloaded file), loaded without pickle execution
        blob = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        if criterion is not None and "criterion" in blob:
            criterion.load_state_dict(blob["criterion"])
        state.update(json.loads(blob["state"]))
        rng.seed(cfg.seed * 1000 + rank + 7919 * state["epoch"])
        torch.manual_seed(cfg.seed + rank + 7919 * state["epoch"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    pairs = load_pairs(train_ds)
    val_ds = open_dataset(cfg.data, cfg.val_split, cfg.dataset_kind) if rank == 0 and cfg.val_split else None
    stop = {"flag": False}
    prev = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    t_start = time.time()

    def save_checkpoint():
        if rank != 0:
            return
        blob = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": json.dumps(state),
            "train_config": json.dumps(dataclasses.asdict(cfg)),
        }
        if criterion is not None:
            blob["criterion"] = criterion.state_dict()
        atomic_write(ckpt, lambda tmp: torch.save(blob, tmp))

    log = (out / "log.jsonl").open("a") if rank == 0 else None
    try:
        while state["epoch"] < cfg.epochs and not stop["flag"]:
            model.train()
            # the same shuffled split on every rank, equal sizes (drop_last): DDP must not wait forever
            sampler = DistributedSampler(range(len(pairs)), world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(state["epoch"])
            order = list(sampler)
            steps_per_epoch = len(order) // cfg.batch_size
            total, n, t0 = 0.0, 0, time.time()
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {state['epoch'] + 1}",
                unit="step",
                disable=rank != 0,
                leave=False,
                dynamic_ncols=True,
            )
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                batch = [augment(*pairs[i], mcfg.size, cfg.crop_scale, cfg.flip, rng) for i in idx]
                img = torch.stack([b[0] for b in batch]).to(device)
                lab = torch.stack([b[1] for b in batch]).to(device)
                ratio = torch.empty(len(idx)).uniform_(*cfg.ratio_range) if cfg.ratio_range else cfg.mask_ratio
                hidden = mixed_masking(
                    lab,
                    mcfg.patch_size,
                    ratio,
                    background_index=mcfg.background_index,
                    ignore_index=mcfg.ignore_index,
                    weights=cfg.mix,
                )
                pix = hidden_to_pixels(hidden, mcfg.grid, mcfg.patch_size)  # [B, H, W] missing pixels
                if cfg.block_holes > 0:  # some samples get holes off the grid: their patches are partly known
                    use = torch.rand(len(idx)) < cfg.block_holes
                    if use.any():
                        r = ratio[use] if isinstance(ratio, torch.Tensor) else ratio
                        holes = block_holes(int(use.sum()), mcfg.size, r, cfg.block_range, device=device)
                        pix[use.to(device)] = holes
                        hidden[use.to(device)] = hidden_from_missing(holes, mcfg.grid)
                # position in the schedule from the epoch: a resumed epoch reruns from its start
                set_lr(opt, cfg, state["epoch"] * steps_per_epoch + s, cfg.epochs * steps_per_epoch)
                rows_only = True  # the loss needs the hidden pixels only: skip the rest
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    # the model must not see the labels it is asked to reconstruct
                    known = torch.where(pix, torch.full_like(lab, mcfg.ignore_index), lab)
                    logits = ddp(img, known, hidden, hidden_only=rows_only)
                if rows_only:  # logits [M, p*p, N] -> [M * p*p, N] rows, target [M * p*p]
                    target = torch.where(pix, lab, torch.full_like(lab, mcfg.ignore_index))  # known ones: no loss
                    logits, target, mask = (
                        logits.flatten(0, 1),
                        model.patchify(target.unsqueeze(1))[hidden].flatten(),
                        None,
                    )
                else:
                    target, mask = lab, pix
                logits = logits.float()
                if criterion is not None:
                    loss = criterion(logits, target, mask)
                else:
                    loss = cross_entropy(logits, target, mask, mcfg.ignore_index)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1 and criterion is not None:  # the loss's beta / gamma live outside DDP
                    for p in criterion.parameters():
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= world
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                state["step"] += 1
                total += float(loss.detach())
                n += 1
                bar.update(1)
                bar.set_postfix(
                    loss=f"{total / n:.4f}", img_s=f"{(s + 1) * cfg.batch_size / max(time.time() - t0, 1e-9):.1f}"
                )
                if cfg.max_steps and state["step"] >= cfg.max_steps:
                    stop["flag"] = True
                if cfg.max_minutes and time.time() - t_start > cfg.max_minutes * 60:
                    stop["flag"] = True
                if world > 1:  # every rank stops at the same step, or the collectives would hang
                    flag = torch.tensor([float(stop["flag"])], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop["flag"] = bool(flag.item())
                if stop["flag"]:
                    break
            bar.close()
            if n == 0:
                raise ValueError(
                    f"no training step: {len(pairs)} training pairs over {world} rank(s) is less than one batch of "
                    f"{cfg.batch_size}; lower --batch-size"
                )
            epoch_loss = total / n
            if world > 1:
                t = torch.tensor([epoch_loss], device=device)
                dist.all_reduce(t)
                epoch_loss = float(t) / world
            complete = not stop["flag"] or s == steps_per_epoch - 1
            if complete:
                if cfg.schedule == "plateau":
                    sched.step(epoch_loss)
                state["epoch"] += 1
            rec = {
                "epoch": state["epoch"],
                "step": state["step"],
                "loss": epoch_loss,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.time() - t0,
                "partial": not complete,
            }
            if rank == 0 and val_ds is not None and complete:
                model.eval()
                m = evaluate(_model_method(model), val_ds, mcfg.num_classes, limit=cfg.val_limit)
                rec.update(val_pa_miou=m["pa_miou"], val_miou=m["miou"])
                if m["pa_miou"] > state["best"]:
                    state["best"], state["best_metrics"] = (
                        m["pa_miou"],
                        {k: m[k] for k in ("pa_miou", "miou", "pixel_acc")},
                    )
                    save_hub_files(model, out / "best")
            if rank == 0 and complete:
                save_hub_files(model, out / "last")
            if world > 1:
                rec["ranks_in_sync"] = ranks_in_sync(model)
            if rank == 0:
                print(json.dumps(rec), flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            save_checkpoint()
        if world > 1:  # leave together: a rank tearing down its process group while another still
            dist.barrier()  # uses it can abort ("terminate called without an active exception")
    finally:
        signal.signal(signal.SIGTERM, prev)
        if log:
            log.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return state


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (checked with an all-gather of sums)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    probe = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(), device=flat.device) % 9973).sum()])
    gathered = [torch.zeros_like(probe) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, probe)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)


_HELP = {
    "data": "dataset root",
    "dataset_kind": "folder (dataset.json + <split>/images, labels) | voc | cityscapes",
    "out": "run folder: log.jsonl, checkpoint.pt, best/ and last/ (Hub folders)",
    "model": f"named model config: {', '.join(NAMED_CONFIGS)}",
    "max_minutes": "wall-clock budget; stops cleanly (checkpointed); --resume continues",
    "schedule": "plateau (the paper's ReduceLROnPlateau on the epoch loss) | cosine (decays to 0 at --epochs)",
    "init": "fine-tune: start from this model's weights and config (registered name, Hub repo id or folder); "
    "--model is then ignored",
    "block_holes": "share of samples (0-1) whose holes are blocks off the patch grid, as after resizing a "
    "label of another size: patches then come out partly known (default 0: the paper's patch masking only)",
    "block_range": "side range of those blocks in pixels at the model's size",
    "optimizer": "adam (the paper's; L2 weight decay) | adamw (decoupled weight decay)",
    "ratio_range": "sample the mask ratio per sample in [LO, HI] (default: --mask-ratio for all)",
    "mix": "Random : Label-First : Background-First weights (paper: 1 2 2)",
    "loss": "balanced (paper eq. 10-12) | ce",
    "crop_scale": "random crop side as a fraction of the image side, LO HI",
    "val_split": "split evaluated every epoch ('' to skip)",
    "val_limit": "evaluate the first N validation images only",
}


def main_train(argv=None) -> None:  # pragma: no cover - exercised through the CLI
    """``label-mae train``: one flag per :class:`TrainConfig` field, plus ``--set`` and ``--resume``."""
    import argparse

    ap = argparse.ArgumentParser(
        "label-mae train",
        description="Train an L-MAE model (the paper's recipe by default, plus a 100-step warm-up and gradient "
        "clipping at 1.0). Checkpoints every epoch and on SIGTERM; --resume continues. Runs unchanged under "
        "torchrun (DDP).",
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        kw = {"help": _HELP.get(f.name, "") + f" (default: {default})", "dest": f.name}
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
        elif isinstance(default, tuple) or f.name == "ratio_range":
            n = 3 if f.name == "mix" else 2
            ap.add_argument(flag, type=int if f.name == "block_range" else float, nargs=n, default=default, **kw)
        elif f.name in ("max_minutes",):
            ap.add_argument(flag, type=float, default=default, **kw)
        elif f.name in ("val_limit", "threads", "max_steps"):
            ap.add_argument(flag, type=int, default=default, **kw)
        else:
            kind = str if default is None else type(default)
            ap.add_argument(flag, type=kind, default=default, required=f.name in ("data",), **kw)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="model config override, e.g. --set label_prior=true --set prior_kind=random_walk",
    )
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a = vars(ap.parse_args(argv))
    try:
        overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.pop("set"))}
    except (ValueError, json.JSONDecodeError) as e:
        ap.error(f"--set expects KEY=JSON ({e})")
    resume = a.pop("resume")
    a = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
    cfg = TrainConfig(model_overrides=overrides, **a)
    print(json.dumps(train(cfg, resume=resume).get("best_metrics")))


if __name__ == "__main__":  # pragma: no cover
    main_train()
