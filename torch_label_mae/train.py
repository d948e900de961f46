"""Training, resumable and DDP-ready, with defaults that beat the label prior (``docs/training.md``).

Default recipe: start from the class-agnostic ``DEFAULT_INIT`` with the data's classes (the run starts
exactly at its random-walk prior and learns corrections), plain cross-entropy on the hidden pixels,
AdamW (weight decay 0.05) with a 100-step warm-up and a cosine decay over the budget, lr
``1e-3 * sqrt(batch_size / 16)``, Random masking (the paper's 1:2:2 mix from scratch), random crop +
rescale to the model size, flips unless the classes are handed. ``model=`` trains a named config from
scratch on the nearest-label prior. The paper's recipe (section IV-A) stays available by flags:
``--model paper --no-label-prior --loss balanced --optimizer adam --schedule plateau --weight-decay 1e-4 --lr 5e-4``.

Input pipeline: augmentation, masking and the label prior run in DataLoader workers (one torch thread
each), batches come pinned and are copied without blocking. Every epoch: a JSONL log line (loss, lr,
val PA-mIoU next to the prior alone's), a checkpoint, and the best model exported as a Hub folder
(config.json + model.safetensors). SIGTERM saves a checkpoint and exits; ``resume=True`` continues from
the last one. Under ``torchrun`` it runs DDP (gloo on CPU, nccl on CUDA). On CUDA and on AMX CPUs the forward
pass runs under bfloat16 autocast (``precision``); ``compile=True`` wraps the model in ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .config import NAMED_CONFIGS, LMAEConfig, RandomWalkPrior
from .data import DatasetInfo, open_dataset
from .evaluate import evaluate
from .hub import HUB_FILES, save_hub_files, save_label_set
from .inference import autocast_dtype, complete_tensors
from .io import atomic_write, resize_label
from .label_sets import LabelSet
from .loss import BalancedCrossEntropy, cross_entropy
from .masking import PAPER_MIX, block_holes, hidden_from_missing, hidden_to_pixels, mixed_masking
from .model import LMAE
from .outputs import OutputLock, OutputWriteError, check_outputs, remove_stale_temp_files
from .prior import LabelPrior, make_prior
from .propagation import nearest_fill
from .slots import from_slots, present_slots, random_slots, to_slots

BASE_LR, BASE_BATCH = 1e-3, 16  # the lr rule: BASE_LR * sqrt(batch_size / BASE_BATCH)
DEFAULT_INIT = "any-m0.5"  # what a run starts from unless it names a model config (docs/training.md)
DEFAULT_POOL = 2  # mask_pool=None with an exact random-walk prior: samples kept per image with their prior
CHECKPOINT_NAME = "checkpoint.pt"  # a run's checkpoint in its --out (a fit's in its fit-run/)
FINE_TUNE_MIX = (1.0, 0.0, 0.0)  # mix=None from an init: Random masking alone (masking_mix)
CHOICES = {
    "loss": ("ce", "balanced"),
    "schedule": ("cosine", "plateau"),
    "optimizer": ("adamw", "adam"),
    "dataset_kind": ("folder", "voc", "cityscapes"),
    "precision": ("auto", "float32", "bfloat16"),
}


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the recipe that beats its label prior on CPU: start from
    :data:`DEFAULT_INIT` with the data's classes (docs/training.md). ``model`` trains a named config from scratch."""

    data: str = ""
    dataset_kind: str = "folder"  # folder | voc | cityscapes
    out: str = "runs/lmae"
    model: str | None = None  # a named config (paper | tiny | small) trained from scratch; None: start from init
    init: str | None = DEFAULT_INIT  # start from these weights and config (name, repo id or folder) unless model
    model_overrides: dict = field(default_factory=dict)
    label_prior: bool = True  # start from the nearest-label prior (model config label_prior; --set wins)
    epochs: int = 400
    max_steps: int | None = None  # stop after this many optimizer steps in total (tests, smoke runs)
    max_minutes: float | None = None  # the run's wall-clock budget, over resumes; the cosine decays to 0 over it
    batch_size: int = 16
    lr: float | None = None  # None: BASE_LR * sqrt(batch_size / 16) (square-root rule for Adam-type optimizers)
    weight_decay: float = 0.05
    warmup_steps: int = 100
    plateau_patience: int = 5
    plateau_threshold: float = 1e-3
    plateau_factor: float = 0.8
    schedule: str = "cosine"  # cosine (to 0 over `epochs`, after warmup) | plateau (the paper's ReduceLROnPlateau)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (the paper's, L2 weight decay)
    mask_ratio: float = 0.5
    ratio_range: tuple[float, float] | None = None  # sample the ratio per sample in [lo, hi]
    mix: tuple[float, float, float] | None = None  # Random : Label-First : Background-First; None: masking_mix
    block_holes: float = 0.0  # share of samples whose holes are blocks off the patch grid (masking.block_holes)
    block_range: tuple[int, int] = (8, 48)  # their side, in pixels at the model's size
    trunk_lr: float = 1.0  # the learning rate of every weight but the head, as a share of lr (fine-tuning: < 1)
    hide_unknown: bool = False  # also hide the patches that touch a pixel the label lacks, as completion does
    hole_index: int | None = None  # label value of the labels' own holes (unknown); hide_unknown then hides theirs only
    loss: str = "ce"  # ce | balanced (the paper's eq. 10-12; collapses, see docs/training.md)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # crop side as a fraction of the image side
    flip: bool | None = None  # mirror samples left-right; None: unless the classes are handed (handed_classes)
    val_split: str = "val"
    val_limit: int | None = None
    seed: int = 0
    threads: int | None = None  # torch threads of the training process; None: the cores left by the workers
    workers: int | None = None  # DataLoader workers; None: auto (worker_count); 0: in the training process
    compile: bool = False  # torch.compile the model (CUDA mostly; the first steps compile)
    precision: str = "auto"  # autocast of the steps (inference.autocast_dtype): auto = bfloat16 on CUDA and AMX
    class_agnostic: bool = False  # slots instead of classes (torch_label_mae.slots): any datasets, pooled
    num_slots: int = 32  # slots of a class-agnostic model: the most classes one sample can hold
    new_classes: bool = False  # --init of another class list: its weights, the data's classes (class-agnostic: always)
    mask_pool: int | None = None  # > 0: that many crops + masks per image, drawn once, kept with their prior
    # (TrainSamples); None: DEFAULT_POOL with an exact random-walk prior (poolable), else 0
    save_every: float = 0.0  # seconds between checkpoints (and last/ exports); 0: every epoch; a stop always saves
    progress: bool = True  # progress bar and log lines on stdout (log.jsonl is written either way)


@dataclass
class TrainData:
    """What a run trains and validates on: ``info`` (the classes the model gets), ``pairs`` (image
    ``uint8 [3, H, W]``, label ``uint8 [H, W]``, unknown pixels ``info.ignore_index``) and
    ``validate(method) -> dict`` with at least ``pa_miou`` (a fraction), or None for no validation."""

    info: DatasetInfo
    pairs: list
    validate: Callable[[Callable], dict] | None = None


def data_roots(cfg: TrainConfig) -> list[str]:
    """The dataset roots of ``cfg.data``: one, or several separated by commas (class-agnostic only)."""
    return [r for r in cfg.data.split(",") if r]


def scaled_lr(batch_size: int) -> float:
    """The default learning rate for ``batch_size``: ``1e-3 * sqrt(batch_size / 16)``."""
    return BASE_LR * math.sqrt(batch_size / BASE_BATCH)


def check_default_dtype(what: str = "training") -> None:
    """Refuse a torch default dtype other than float32 (``ValueError`` naming it): training builds its
    tensors in the default dtype, and float32 inputs would meet float64 weights deep inside."""
    if torch.get_default_dtype() != torch.float32:
        raise ValueError(
            f"{what} computes in float32, but torch's default dtype is {torch.get_default_dtype()}: "
            "call torch.set_default_dtype(torch.float32) first"
        )


def check_config(cfg: TrainConfig, roots: bool = True) -> None:
    """Refuse bad settings before anything is read or written (``ValueError`` naming the setting);
    ``roots=False``: the data comes in memory (:class:`TrainData`), ``cfg.data`` only names it."""
    check_default_dtype()
    for name, options in CHOICES.items():
        if getattr(cfg, name) not in options:
            raise ValueError(f"{name} must be one of {list(options)}, got {getattr(cfg, name)!r}")
    if cfg.model is not None and cfg.model not in NAMED_CONFIGS:
        raise ValueError(f"unknown model config {cfg.model!r}; choose from {sorted(NAMED_CONFIGS)}")
    if cfg.model is not None and cfg.init not in (None, DEFAULT_INIT):
        raise ValueError(f"model {cfg.model!r} trains from scratch and init {cfg.init!r} fine-tunes: give one")
    if not cfg.label_prior and not from_scratch(cfg):
        raise ValueError(
            f"label_prior=False (--no-label-prior) builds a model from scratch; init {cfg.init!r} keeps its own "
            "prior: pass a named config (--model tiny|small|paper) as well"
        )
    known = LMAEConfig.keys()
    unknown = sorted(set(cfg.model_overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
    if cfg.batch_size < 1 or cfg.epochs < 0 or (cfg.workers is not None and cfg.workers < 0):
        raise ValueError("batch_size must be >= 1, epochs >= 0 and workers >= 0")
    if roots and not cfg.data:
        raise ValueError("data: a dataset root is needed")
    if cfg.class_agnostic and cfg.loss != "ce":
        raise ValueError("loss: a class-agnostic model trains with 'ce' (slots have no class frequencies)")
    if cfg.val_limit is not None and (isinstance(cfg.val_limit, bool) or cfg.val_limit < 1):
        raise ValueError(f"val_limit must be >= 1 (or None: every val image), got {cfg.val_limit!r}")
    if cfg.mask_pool is not None and cfg.mask_pool < 0:
        raise ValueError(f"mask_pool must be >= 0, got {cfg.mask_pool}")
    if not 0 <= cfg.trunk_lr <= 1:  # also NaN
        raise ValueError(f"trunk_lr must be in [0, 1] (a share of lr), got {cfg.trunk_lr!r}")
    if cfg.hole_index is not None and not 0 <= cfg.hole_index <= 255:
        raise ValueError(f"hole_index must be in 0..255, got {cfg.hole_index!r}")
    if roots and len(data_roots(cfg)) > 1 and not cfg.class_agnostic:
        raise ValueError(f"data: several roots ({cfg.data}) need --class-agnostic (their class lists differ)")
    _check_numbers(cfg)


def _check_numbers(cfg: TrainConfig) -> None:
    """The run's budgets and shares, before any model is built (``ValueError`` naming the setting)."""
    for name in ("max_steps", "max_minutes", "threads"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:  # 0 would read as no limit; also NaN
            raise ValueError(f"{name} must be > 0 (or None: no limit, the default), got {value!r}")
    for name in ("warmup_steps", "save_every"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.block_holes <= 1:
        raise ValueError(f"block_holes must be in [0, 1] (a share of the samples), got {cfg.block_holes!r}")
    if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be LO HI with 0 < LO <= HI <= 1, got {tuple(cfg.crop_scale)}")
    if cfg.mix is not None and (len(cfg.mix) != 3 or not all(w >= 0 for w in cfg.mix) or not sum(cfg.mix) > 0):
        raise ValueError(f"mix must be three weights >= 0, not all 0, got {tuple(cfg.mix)}")


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_count(cfg: TrainConfig, world: int = 1) -> int:
    """DataLoader workers per rank: ``cfg.workers``; by default on CUDA the cores of this rank less one (at
    most 8); on the CPU none up to 4 cores, else a quarter of them (at most 4). On the CPU the model's own
    step is about 80% of the time (tiny model, 2 cores: host work 9.6 ms of a 44 ms per-sample step), so a
    core given to a worker costs the step more than the worker saves until there are several cores."""
    if cfg.workers is not None:
        return cfg.workers
    cores = _cores() // max(world, 1)
    if torch.cuda.is_available():
        return max(0, min(8, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


def load_pairs(ds, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Read every ``(image, label)`` of a dataset into memory once (images as read, uint8; labels as uint8)."""
    n = len(ds) if limit is None else min(limit, len(ds))
    return [(img, lab.to(torch.uint8)) for img, lab, _ in (ds[i] for i in range(n))]


def augment(image: torch.Tensor, label: torch.Tensor, size, scale, flip: bool, rng: random.Random):
    """Random crop (same aspect as the image, side fraction in ``scale``), rescale to ``size``, flip.
    ``image`` uint8 ``[3, H, W]`` stays uint8 (bilinear with antialias, rounded): the fast uint8 path of
    ``interpolate``, and a quarter of the bytes to batch and copy; the step scales it to [0, 1]."""
    if image.dtype != torch.uint8:
        raise TypeError(f"augment: images must be uint8, got {image.dtype}")
    h, w = label.shape
    s = rng.uniform(*scale)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
    img = image[None, :, y : y + ch, x : x + cw]
    if (ch, cw) != tuple(size):
        img = F.interpolate(img.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                            antialias=True, align_corners=False)  # fmt: skip
    img = img[0].contiguous()
    lab = resize_label(label[None, y : y + ch, x : x + cw], size)[0]
    if flip and rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return img, lab


def prior_in_workers(mcfg: LMAEConfig) -> bool:
    """Whether the label prior can be computed by the workers: it depends on the config alone (not on
    learned edge weights, which live in the model)."""
    return mcfg.prior is not None


class TrainSamples(Dataset):
    """One training sample per index, all the host work done here (so in DataLoader workers): random
    crop + flip, the hidden patches (mixed masking, or blocks off the grid), the known label and the
    label prior. Items are dicts of tensors; labels travel as uint8. ``timings`` adds up the seconds
    per stage in this process (``benchmarks/bench_train.py --profile``).

    ``n = mask_pool_size(cfg, mcfg) > 0``: each image gets ``n`` samples (crop and masks), drawn at first use (or
    all at once by :meth:`fill_pool`) from their own seed and kept with their label prior, which is
    then computed once instead of every step (an exact random walk prior costs several times the
    model's step on a CPU); each use picks one of them at random and flips it at random (exact: the
    prior's graph is symmetric). The prior is kept in float16."""

    STAGES = ("augment", "mask", "prior")

    def __init__(
        self, pairs, cfg: TrainConfig, mcfg: LMAEConfig, seed: int = 0, with_prior: bool = True, combiner=None
    ):
        if cfg.mask_pool and not poolable(mcfg):
            raise ValueError("mask_pool needs an exact random-walk prior (solver 'direct'): it is kept and mirrored")
        self.pairs, self.cfg, self.mcfg = pairs, cfg, mcfg
        self.combiner = combiner  # the model's prior combiner (its prior is computed here too), or None
        self.pool_size = mask_pool_size(cfg, mcfg)
        self.flip = cfg.flip if cfg.flip is not None else not handed_classes(mcfg.class_names)
        self.rng = random.Random(seed)
        # without workers the model computes the prior of the whole batch, spread over its threads
        self.with_prior = (with_prior or self.pool_size > 0) and prior_in_workers(mcfg)
        self.timings = dict.fromkeys(self.STAGES, 0.0)
        self.pool: dict[tuple[int, int], dict] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        if self.pool_size <= 0:
            return self.draw(i, self.rng, self.flip)
        key = (i, self.rng.randrange(self.pool_size))
        if key not in self.pool:
            self.pool[key] = self.pooled(key)
        item = dict(self.pool[key])
        if "prior_prob" in item:
            item["prior_prob"] = item["prior_prob"].float()
        if self.flip and self.rng.random() < 0.5:
            item = flip_sample(item, self.mcfg.grid)
        if self.mcfg.class_agnostic:  # fresh slots every use, as AOT assigns identities: a permutation
            item = permute_slots(item, self.rng.sample(range(self.mcfg.num_classes), self.mcfg.num_classes))
        return item

    def pooled(self, key: tuple[int, int]) -> dict:
        """Pool entry ``key = (image, n)``: a sample drawn by a generator of its own key alone (the same in
        every process and run), unflipped, its prior in float16."""
        item = self.draw(key[0], random.Random(f"{self.cfg.seed}:{key}"), flip=False)
        if "prior_prob" in item:
            item["prior_prob"] = item["prior_prob"].half()
        return item

    def fill_pool(self, threads: int = 1, stop: Callable[[], bool] = lambda: False) -> None:
        """Draw the pool entries now, on ``threads`` threads (the exact solve releases the GIL), a chunk
        at a time until ``stop()``. Before DataLoader workers start: they inherit the pool, instead of
        each computing every prior again. Not counted in :attr:`timings` (per-step host work)."""
        todo = [(i, n) for i in range(len(self.pairs)) for n in range(self.pool_size) if (i, n) not in self.pool]
        timings, chunk = dict(self.timings), 4 * max(1, threads)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for at in range(0, len(todo), chunk):
                if stop():
                    break
                keys = todo[at : at + chunk]
                self.pool.update(zip(keys, pool.map(self.pooled, keys), strict=True))
        self.timings = timings  # the threads' draws added to it concurrently

    def draw(self, i: int, rng: random.Random, flip: bool) -> dict:
        """A new sample of pair ``i``: crop, flip (when ``flip``), masks, prior, by ``rng``."""
        cfg, mcfg = self.cfg, self.mcfg
        t0 = time.perf_counter()
        img, lab = augment(*self.pairs[i], mcfg.size, cfg.crop_scale, flip, rng)
        holes = lab == (mcfg.ignore_index if cfg.hole_index is None else cfg.hole_index)  # [H, W]
        lab = lab.masked_fill(holes, mcfg.ignore_index)  # unknown, as void is
        if mcfg.class_agnostic:  # fresh random slots per sample and step (AOT's identity assignment)
            valid = lab != mcfg.ignore_index
            lab = random_slots(lab.long(), valid, mcfg.num_classes, mcfg.ignore_index, rng).to(torch.uint8)
        t1 = time.perf_counter()
        ratio = rng.uniform(*cfg.ratio_range) if cfg.ratio_range else cfg.mask_ratio
        gen = torch.Generator().manual_seed(rng.getrandbits(63))  # the masks follow rng too (pool entries)
        if cfg.block_holes > 0 and rng.random() < cfg.block_holes:  # holes off the grid: patches partly known
            pix = block_holes(1, mcfg.size, ratio, cfg.block_range, generator=gen)
            hidden = hidden_from_missing(pix, mcfg.grid)[0]
            pix = pix[0]
        else:
            m = mixed_masking(lab[None], mcfg.patch_size, ratio, background_index=mcfg.background_index,
                              ignore_index=mcfg.ignore_index, weights=masking_mix(cfg), generator=gen)  # fmt: skip
            hidden, pix = m[0], hidden_to_pixels(m, mcfg.grid, mcfg.patch_size)[0]
        if cfg.hide_unknown:  # as at completion, where every patch that touches a hole is hidden
            hidden = hidden | hidden_from_missing(holes[None], mcfg.grid)[0]
        # the model must not see the labels it is asked to reconstruct
        known = torch.where(pix, torch.full_like(lab, mcfg.ignore_index), lab)
        t2 = time.perf_counter()
        item = dict(image=img, label=lab, known=known, pix=pix, hidden=hidden)
        if self.with_prior:
            item.update(sample_prior(mcfg, known, img, self.combiner))
        t3 = time.perf_counter()
        for k, t in zip(self.STAGES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.timings[k] += t
        return item


def handed_classes(names) -> bool:
    """Whether ``names`` hold a left / right pair (e.g. ``front_left_door`` and ``front_right_door``): a
    mirrored image shows the one where its label names the other, so such classes are not mirrored."""
    low = {str(n).lower() for n in names or ()}
    return any("left" in n and n.replace("left", "right") in low for n in low)


def masking_mix(cfg: TrainConfig) -> tuple[float, float, float]:
    """The masking weights (``cfg.mix``; None: :data:`FINE_TUNE_MIX`, Random masking alone, when the run starts
    from ``cfg.init``'s prior and learns corrections to it, the paper's 1:2:2 when ``cfg.model`` starts from
    scratch). Label-First and Background-First hide the patches of some classes more than others; corrections
    learned on them shift every hole toward those classes, and completion's holes do not choose classes."""
    if cfg.mix is not None:
        return cfg.mix
    return PAPER_MIX if from_scratch(cfg) else FINE_TUNE_MIX


def mask_pool_size(cfg: TrainConfig, mcfg: LMAEConfig) -> int:
    """The samples kept per image (``cfg.mask_pool``; None: :data:`DEFAULT_POOL` when :func:`poolable`, else 0)."""
    if cfg.mask_pool is not None:
        return cfg.mask_pool
    return DEFAULT_POOL if poolable(mcfg) else 0


def poolable(mcfg: LMAEConfig) -> bool:
    """Whether samples can be kept with their prior and mirrored (``mask_pool``): an exact random walk,
    whose solution of the mirrored problem is the mirrored solution (not so for a truncated SOR solve or
    nearest fill's tie-breaking), and costly enough for keeping it to pay."""
    return isinstance(mcfg.prior, RandomWalkPrior) and mcfg.prior.solver == "direct"


def flip_sample(item: dict, grid: tuple[int, int]) -> dict:
    """A sample of :class:`TrainSamples` mirrored left-right: every map, the hidden patches, the prior."""
    out = dict(item)
    for k in ("image", "label", "known", "pix", "prior_classes", "prior_prob"):
        if k in out:
            out[k] = out[k].flip(-1)
    out["hidden"] = item["hidden"].view(grid).flip(-1).flatten()
    return out


def permute_slots(item: dict, perm: list[int]) -> dict:
    """A class-agnostic sample of :class:`TrainSamples` with its slots renamed, slot ``s`` -> ``perm[s]``:
    the label, the known label and the prior (its class map and the classes of its probabilities; the
    walk is the same under any renaming of the classes). Unknown pixels (ids past ``perm``) stay."""
    table = torch.arange(256, dtype=torch.uint8)
    table[: len(perm)] = torch.tensor(perm, dtype=torch.uint8)
    out = dict(item)
    for k in ("label", "known", "prior_classes"):
        if k in out:
            out[k] = table[out[k].long()]
    if "prior_index" in out:
        out["prior_index"] = table[out["prior_index"]].long()
    return out


def sample_prior(mcfg: LMAEConfig, known: torch.Tensor, image: torch.Tensor, combiner=None) -> dict:
    """The label prior of one sample, as :attr:`LMAE.prior` computes it (the same code, from the config and
    the model's ``prior_combiner``): ``prior_classes`` and, for a soft prior, ``prior_prob [K, H, W]`` /
    ``prior_index [K]``."""
    p = make_prior(mcfg, combiner)(known[None].long(), image=image[None].float() / 255)
    out = {"prior_classes": p.classes[0].to(torch.uint8)}
    if p.prob is not None:
        out.update(prior_prob=p.prob[0], prior_index=p.index[0].flatten())
    return out


def collate(items: list[dict]) -> dict:
    """Stack a batch; soft priors hold each sample's own classes (``K`` varies), padded with probability 0
    at class 0 (a scatter-add of 0 changes nothing)."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k not in ("prior_prob", "prior_index")}
    if "prior_prob" in items[0]:
        k = max(it["prior_index"].numel() for it in items)
        h, w = items[0]["prior_prob"].shape[-2:]
        prob = torch.zeros(len(items), k, h, w)
        index = torch.zeros(len(items), k, dtype=torch.long)
        for i, it in enumerate(items):
            n = it["prior_index"].numel()
            prob[i, :n], index[i, :n] = it["prior_prob"], it["prior_index"]
        out.update(prior_prob=prob, prior_index=index)
    return out


def _worker_init(_):
    torch.set_num_threads(1)  # one thread per worker: workers x threads must not exceed the cores
    info = torch.utils.data.get_worker_info()
    info.dataset.rng.seed(info.seed)  # each worker its own augmentation stream (torch's is seeded already)


def make_loader(samples: TrainSamples, cfg: TrainConfig, rank: int, world: int, device: torch.device):
    """A DataLoader over ``samples``: the same shuffled split on every rank with equal sizes (drop_last,
    or DDP would wait forever), workers with one thread each, pinned batches on CUDA."""
    workers = worker_count(cfg, world)
    sampler = DistributedSampler(samples, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    return DataLoader(
        samples,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def _model_method(model: LMAE, precision: str):
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)

    def method(images, labels, missing):
        batch = [torch.stack(t).to(device) for t in (images, labels, missing)]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out, _ = complete_tensors(model, *batch)
        return list(out.cpu())

    return method


def _prior_method(model: LMAE):
    """The prior alone on the same holes: the model's own prior (its kind) or, without one, nearest fill."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def method(images, labels, missing):
        out, c = [], model.config
        for img, lab, miss in zip(images, labels, missing, strict=True):
            lab = given = lab[None].to(device)
            if c.class_agnostic:
                lab, table = to_slots(
                    lab, (lab != c.ignore_index) & ~miss[None].to(device), c.num_classes, c.ignore_index
                )
            if model.prior is not None:
                fill = model.prior(lab, image=img[None].to(device)).classes
            else:
                fill = nearest_fill(lab, ignore_index=c.ignore_index)
            if c.class_agnostic:
                fill = from_slots(fill.clamp(0, c.num_classes - 1), table)
            out.append(torch.where(miss.to(device), fill[0], given[0]).cpu())
        return out

    return method


CLASS_KEYS = ("label_embed.bag.weight", "prior_embed.bag.weight")  # rows per (class, pixel position)


def remap_classes(state: dict, old: LMAEConfig, model: LMAE) -> dict:
    """``state`` of a model of ``old``'s classes (or slots) for ``model``, which has other classes: the
    label embeddings of class ``k`` are those of ``k mod old.num_classes`` (a class-agnostic start: slot
    ``k``), the head is ``model``'s own (zero with a prior: it starts at the prior), the rest is kept."""
    out = dict(state)
    pp, n_old, n_new = old.patch_size**2, old.num_classes, model.config.num_classes
    rows = (torch.arange(n_new * pp) // pp % n_old) * pp + torch.arange(n_new * pp) % pp
    for key in CLASS_KEYS:
        if key in state:
            out[key] = torch.cat([state[key][rows], torch.zeros_like(state[key][-1:])])  # + the void row
    own = model.state_dict()
    out.update({k: own[k] for k in ("head.weight", "head.bias")})
    return out


def init_model(cfg: TrainConfig, from_data: dict) -> tuple[LMAE, LMAEConfig, LabelSet | None]:
    """Fine-tuning: the model of ``cfg.init`` (a registered name, Hub repo id or local folder), loaded
    strictly from safetensors, with its own config plus ``model_overrides`` that do not change the
    weights' shapes (e.g. ``mask_ratio``). The dataset must have the model's classes, unless
    ``cfg.new_classes``: then the model takes the data's classes (:func:`remap_classes`). Also returns
    the label set the trained model carries: the start's, when both are class-agnostic."""
    from .completer import LabelCompleter

    start = LabelCompleter.from_pretrained(cfg.init, device="cpu")
    sc = start.config
    same = sc.num_classes == from_data["num_classes"] and sc.class_agnostic == from_data.get("class_agnostic", False)
    takes_classes = sc.class_agnostic and not from_data.get("class_agnostic", False)  # slots -> the data's classes
    if not same and not (cfg.new_classes or takes_classes):
        kind = "slots (class-agnostic)" if sc.class_agnostic else "classes"
        raise ValueError(
            f"--init {cfg.init} has {sc.num_classes} {kind} but the data {from_data['num_classes']} classes; "
            "pass --new-classes to start from its weights with the data's classes"
        )
    keys = ("num_classes", "class_names", "background_index", "ignore_index")
    classes = {} if same else {k: from_data[k] for k in keys}
    if not same:
        classes["class_agnostic"] = from_data.get("class_agnostic", False)
    mcfg = LMAEConfig.from_dict({**sc.to_dict(), **classes, "mask_ratio": cfg.mask_ratio, **cfg.model_overrides})
    model = LMAE(mcfg)
    state = start.model.state_dict()
    try:
        model.load_state_dict(state if same else remap_classes(state, sc, model))
    except RuntimeError as e:
        raise ValueError(f"--set overrides change the shapes of the weights of --init {cfg.init}: {e}") from None
    return model, mcfg, start.label_set if mcfg.class_agnostic and sc.class_agnostic else None


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, total_steps: int, spent: float = 0.0) -> None:
    """Linear warmup over ``warmup_steps``; then the cosine decay to 0 at ``total_steps`` or when the share
    ``spent`` of the time budget is used, whichever comes first (``schedule="cosine"``), or the rate
    ReduceLROnPlateau keeps (``"plateau"``)."""
    for g in opt.param_groups:
        g.setdefault("base_lr", g["lr"])
        if step < cfg.warmup_steps:
            g["lr"] = g["base_lr"] * (step + 1) / max(cfg.warmup_steps, 1)
        elif cfg.schedule == "cosine":
            t = max((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), spent)
            g["lr"] = g["base_lr"] * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    mcfg: LMAEConfig
    model: LMAE
    net: torch.nn.Module  # what the step calls: the model, wrapped in DDP and / or torch.compile
    criterion: BalancedCrossEntropy | None
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    loader: DataLoader
    validate: Callable[[Callable], dict] | None  # TrainData.validate (rank 0 only)
    out: Path
    device: torch.device
    rank: int
    world: int
    state: dict
    log: object = None
    t_start: float = field(default_factory=time.time)  # of this process; ``state["seconds"]`` holds earlier ones
    stop: bool = False
    last_save: float = float("-inf")  # time.time() of the last checkpoint of this process
    budget_spent: bool = False  # the stop came from --max-steps / --max-minutes (not SIGTERM)
    pool_filled: bool = False  # the mask pool was drawn before the DataLoader workers started
    label_set: LabelSet | None = None  # what the exports carry (build_model)


def export(run: Run, folder: Path) -> None:
    """Write the model as a Hub folder (config, weights, and its label set or none)."""
    save_hub_files(run.model, folder)
    save_label_set(run.label_set, folder)


def _setup_process(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _rank()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available() and local >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local}: this node has {torch.cuda.device_count()} CUDA device(s); start at most that many "
            "processes per node (torchrun --nproc-per-node), or hide the GPUs (CUDA_VISIBLE_DEVICES='') for CPU ranks"
        )
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 parts (loss, prior) on tensor cores
    threads = cfg.threads or (max(1, _cores() // world - worker_count(cfg, world)) if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return rank, world, device


def from_scratch(cfg: TrainConfig) -> bool:
    """Whether a run builds the named config ``cfg.model`` (``"tiny"`` when neither it nor ``init`` is set)
    rather than starting from the weights of ``cfg.init``."""
    return cfg.model is not None or not cfg.init


def build_model(cfg: TrainConfig, info, device: torch.device) -> tuple[LMAE, LMAEConfig, LabelSet | None]:
    """The model of ``--init`` (fine-tuning) or of the named config, with the dataset's classes and the
    label prior on unless ``label_prior=False`` or ``--set label_prior=...`` says otherwise; and the
    label set its exports carry (:func:`init_model`)."""
    from_data = dict(
        num_classes=info.num_classes,
        ignore_index=info.ignore_index,
        background_index=info.background_index,
        class_names=info.classes,
        mask_ratio=cfg.mask_ratio,
    )
    if cfg.class_agnostic:  # slots: no class list, no background class
        from_data.update(num_classes=cfg.num_slots, background_index=None, class_names=None, class_agnostic=True)
    label_set = None
    if not from_scratch(cfg):
        model, mcfg, label_set = init_model(cfg, from_data)
    else:
        named = NAMED_CONFIGS[cfg.model or "tiny"]
        mcfg = named(**{**from_data, "label_prior": cfg.label_prior, **cfg.model_overrides})
        model = LMAE(mcfg)
    return model.to(device), mcfg, label_set


def folder_data(cfg: TrainConfig, rank: int) -> TrainData:
    """The train split of each root of ``cfg.data`` (pooled), validated on their ``cfg.val_split`` on
    rank 0 (the mean of each figure over the roots, each in its own classes)."""
    roots = data_roots(cfg)
    train_sets = [open_dataset(r, "train", cfg.dataset_kind) for r in roots]
    for ds in train_sets:
        if ds.info.ignore_index != 255 and cfg.class_agnostic:
            raise ValueError(f"{ds.info.name}: ignore_index {ds.info.ignore_index}; pooled datasets must use 255")
    pairs = [pair for ds in train_sets for pair in load_pairs(ds)]
    if rank != 0 or not cfg.val_split:
        return TrainData(train_sets[0].info, pairs)
    val_sets = [open_dataset(r, cfg.val_split, cfg.dataset_kind) for r in roots]

    def validate(method) -> dict:
        ms = [evaluate(method, ds, ds.info.num_classes, limit=cfg.val_limit) for ds in val_sets]
        return {k: sum(m[k] for m in ms) / len(ms) for k in ("pa_miou", "miou", "pixel_acc")}

    return TrainData(train_sets[0].info, pairs, validate)


def build(cfg: TrainConfig, resume: bool, rank: int, world: int, device: torch.device, data: TrainData | None) -> Run:
    """Model, loss, optimizer, scheduler, the resumed state and the input pipeline of a run (on ``data``,
    or on the dataset folders of ``cfg.data``)."""
    out = Path(cfg.out)
    check_outputs([("out", out)], [("data", r) for r in data_roots(cfg)] if data is None else [])
    torch.manual_seed(cfg.seed + rank)
    data = data if data is not None else folder_data(cfg, rank)
    info = data.info
    if cfg.hole_index is not None and not cfg.class_agnostic and cfg.hole_index < info.num_classes:
        raise ValueError(f"hole_index {cfg.hole_index} is a class of {info.name} ({info.num_classes} classes)")
    model, mcfg, label_set = build_model(cfg, info, device)
    out.mkdir(parents=True, exist_ok=True)
    for folder, names in ((out, {CHECKPOINT_NAME, "log.jsonl"}), (out / "best", HUB_FILES), (out / "last", HUB_FILES)):
        remove_stale_temp_files(folder, names)  # a run killed mid-write left them (a checkpoint's: tens of MB)
    criterion = None
    if cfg.loss == "balanced":
        criterion = BalancedCrossEntropy(info.num_classes, info.ignore_index, background_index=info.background_index)
        criterion = criterion.to(device)
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.batch_size)
    extra = list(criterion.parameters()) if criterion is not None else []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named] + extra
    groups = [dict(params=params)]  # one group, in this order: as earlier checkpoints
    if cfg.trunk_lr != 1:  # the head (and the loss's weights) at lr, every other weight at lr * trunk_lr
        trunk = dict(params=[p for n, p in named if not n.startswith("head.")], lr=lr * cfg.trunk_lr)
        groups = [dict(params=[p for n, p in named if n.startswith("head.")] + extra), trunk]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(groups, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", patience=cfg.plateau_patience, threshold=cfg.plateau_threshold, factor=cfg.plateau_factor
    )
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_metrics": None, "prior_pa_miou": None}
    ckpt, recorded = out / CHECKPOINT_NAME, {}
    if resume and ckpt.is_file():
        # our own local checkpoint (never a downloaded file), loaded without pickle execution
        blob = torch.load(ckpt, map_location=device, weights_only=True)
        try:
            model.load_state_dict(blob["model"])
        except RuntimeError:
            raise ValueError(
                f"{ckpt}: made by another model than --model {cfg.model} --init {cfg.init} builds; resume with "
                f"the run's own --model / --init (the default start became {DEFAULT_INIT}: runs begun from "
                "the earlier default resume with --model tiny)"
            ) from None
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        if criterion is not None and "criterion" in blob:
            criterion.load_state_dict(blob["criterion"])
        state.update(json.loads(blob["state"]))
        recorded = json.loads(blob.get("train_config", "{}"))
        torch.manual_seed(cfg.seed + rank + 7919 * state["epoch"])
    # the mix resolved once and recorded: a resumed run keeps the mix it started with when --mix is not given
    cfg = dataclasses.replace(cfg, mix=tuple(cfg.mix or recorded.get("mix") or masking_mix(cfg)))
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    seed = cfg.seed * 1000 + rank + 7919 * state["epoch"]
    workers = worker_count(cfg, world) > 0
    samples = TrainSamples(data.pairs, cfg, mcfg, seed=seed, with_prior=workers, combiner=model.prior_combiner)
    loader = make_loader(samples, cfg, rank, world, device)
    validate = data.validate if rank == 0 else None
    log = _open_log(out / "log.jsonl", state["step"] if resume else None) if rank == 0 else None
    return Run(
        cfg, mcfg, model, net, criterion, params, opt, sched, loader, validate, out, device, rank, world, state, log,
        label_set=label_set,
    )  # fmt: skip


def _to_device(batch: dict, run: Run) -> tuple:
    """Move a batch to the device (non-blocking from pinned memory on CUDA); labels to int64 there."""
    dev, nb = run.device, run.device.type == "cuda"
    b = {k: v.to(dev, non_blocking=nb) for k, v in batch.items()}
    lab, known = b["label"].long(), b["known"].long()
    prior = None
    if "prior_classes" in b:
        prior = LabelPrior(b["prior_classes"].long(), b.get("prior_prob"), None)
        if prior.prob is not None:
            prior = prior._replace(index=b["prior_index"][:, :, None, None])
    return b["image"].float().div_(255), lab, known, b["pix"], b["hidden"], prior


def train_step(run: Run, batch: dict, step_in_schedule: int, total_steps: int) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the loss (a detached tensor: no host sync here)."""
    cfg, mcfg, model = run.cfg, run.mcfg, run.model
    img, lab, known, pix, hidden, prior = _to_device(batch, run)
    set_lr(run.opt, cfg, step_in_schedule, total_steps, budget_spent(run))
    amp = autocast_dtype(cfg.precision, run.device)
    with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = run.net(img, known, hidden, prior, hidden_only=True)  # the loss needs the hidden pixels only
    target = torch.where(pix, lab, torch.full_like(lab, mcfg.ignore_index))  # known ones: no loss
    if mcfg.class_agnostic:  # a slot no visible pixel holds cannot be predicted: no loss there either
        present = present_slots(known, mcfg.num_classes)  # [B, N]
        held = present.gather(1, target.clamp(0, mcfg.num_classes - 1).flatten(1)).view_as(target)
        target = torch.where(held, target, torch.full_like(target, mcfg.ignore_index))
    # logits [M, p*p, N] -> [M * p*p, N] rows, target [M * p*p]
    logits, target = logits.flatten(0, 1).float(), model.patchify(target.unsqueeze(1))[hidden].flatten()
    if run.criterion is not None:
        loss = run.criterion(logits, target)
    else:
        loss = cross_entropy(logits, target, ignore_index=mcfg.ignore_index)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.world > 1 and run.criterion is not None:  # the loss's beta / gamma live outside DDP
        for p in run.criterion.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= run.world
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    return loss.detach()


def seconds(run: Run) -> float:
    """Wall-clock seconds the run has trained, over every resume."""
    return run.state.get("seconds", 0.0) + time.time() - run.t_start


def budget_spent(run: Run) -> float:
    """The share of ``max_minutes`` spent (0 without a budget)."""
    return seconds(run) / (60 * run.cfg.max_minutes) if run.cfg.max_minutes else 0.0


def _should_stop(run: Run) -> bool:
    cfg = run.cfg
    if (cfg.max_steps and run.state["step"] >= cfg.max_steps) or budget_spent(run) >= 1.0:
        run.stop = run.budget_spent = True
    if run.world > 1:  # every rank stops at the same step, or the collectives would hang
        flag = torch.tensor([float(run.stop)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        run.stop = bool(flag.item())
    return run.stop


def run_epoch(run: Run) -> tuple[float, int, bool]:
    """Train one epoch (or until a stop); returns (mean loss over ranks, steps, whether the epoch completed)."""
    cfg, state = run.cfg, run.state
    run.model.train()
    run.loader.sampler.set_epoch(state["epoch"])
    if run.loader.dataset.pool_size and run.loader.num_workers > 0 and not run.pool_filled:  # before workers start
        run.loader.dataset.fill_pool(torch.get_num_threads(), stop=lambda: _should_stop(run))
        run.pool_filled = True  # in the budget; a stop ends it early (the workers draw the rest)
    steps_per_epoch = len(run.loader)
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {state['epoch'] + 1}", unit="step", leave=False,
               disable=run.rank != 0 or not cfg.progress, dynamic_ncols=True)  # fmt: skip
    total, n, t0, s = torch.zeros((), device=run.device), 0, time.time(), -1
    for s, batch in enumerate(run.loader):
        # position in the schedule from the epoch: a resumed epoch reruns from its start
        loss = train_step(run, batch, state["epoch"] * steps_per_epoch + s, cfg.epochs * steps_per_epoch)
        state["step"] += 1
        total += loss
        n += 1
        bar.update(1)
        if s % 10 == 0 or s == steps_per_epoch - 1:  # a host sync: not every step
            bar.set_postfix(loss=f"{float(total) / n:.4f}", img_s=f"{n * cfg.batch_size / (time.time() - t0):.1f}")
        if _should_stop(run):
            break
    bar.close()
    if n == 0:
        raise ValueError(
            f"no training step: {len(run.loader.dataset)} training pairs over {run.world} rank(s) is less than one "
            f"batch of {cfg.batch_size}; lower --batch-size"
        )
    epoch_loss = total / n
    if run.world > 1:
        dist.all_reduce(epoch_loss)
        epoch_loss = epoch_loss / run.world
    return float(epoch_loss), n, not run.stop or s == steps_per_epoch - 1


def prior_baseline(run: Run) -> None:
    """Epoch 0: the val PA-mIoU of the prior alone, on the holes every epoch is evaluated on (logged once). A
    model that starts as its prior alone (its head at zero) is exported to ``best/`` then: an epoch replaces
    it only by scoring higher, so ``best/`` is never below the prior on val."""
    if run.validate is None or run.state.get("prior_pa_miou") is not None:
        return
    m = run.validate(_prior_method(run.model))
    run.state["prior_pa_miou"] = m["pa_miou"]
    kind = run.mcfg.prior.kind if run.mcfg.prior is not None else "nearest (the model has no prior)"
    _write_log(run, {"epoch": 0, "step": run.state["step"], "prior": kind, "prior_pa_miou": m["pa_miou"]})
    with torch.no_grad():
        alone = run.model.prior_alone()
    if alone:  # the start is its prior: best/ starts there
        _keep_if_best(run, m)


def _validate(run: Run, rec: dict) -> None:
    """Val PA-mIoU of the model, next to the prior alone's; warns when the model is below it."""
    state = run.state
    run.model.eval()
    m = run.validate(_model_method(run.model, run.cfg.precision))
    rec.update(val_pa_miou=m["pa_miou"], val_miou=m["miou"])
    prior = state.get("prior_pa_miou")
    if prior is not None:
        rec["prior_pa_miou"] = prior
        if m["pa_miou"] < prior:
            warnings.warn(
                f"epoch {state['epoch']}: val PA-mIoU {100 * m['pa_miou']:.1f} is below the label prior alone "
                f"({100 * prior:.1f}); see docs/training.md",
                RuntimeWarning,
                stacklevel=2,
            )
    _keep_if_best(run, m)


def _keep_if_best(run: Run, m: dict) -> None:
    """Export the model to ``best/`` when its val metrics ``m`` beat the best so far (kept in the state)."""
    state = run.state
    if m["pa_miou"] > state["best"]:
        state["best"], state["best_metrics"] = m["pa_miou"], {k: m[k] for k in ("pa_miou", "miou", "pixel_acc")}
        if state.get("prior_pa_miou") is not None:
            state["best_metrics"]["prior_pa_miou"] = state["prior_pa_miou"]
        export(run, run.out / "best")


def end_epoch(run: Run, epoch_loss: float, complete: bool, t0: float) -> None:
    """Scheduler, validation, exports, the log line and the checkpoint after an epoch."""
    state = run.state
    if complete:
        if run.cfg.schedule == "plateau":
            run.sched.step(epoch_loss)
        state["epoch"] += 1
    rec = {"epoch": state["epoch"], "step": state["step"], "loss": epoch_loss, "lr": run.opt.param_groups[0]["lr"],
           "seconds": time.time() - t0, "partial": not complete}  # fmt: skip
    final = complete or run.budget_spent  # a spent budget ends the run: its weights are measured and kept
    if run.validate is not None and final:
        _validate(run, rec)
    due = run.stop or run.budget_spent or time.time() - run.last_save >= run.cfg.save_every
    if run.rank == 0 and final and due:
        export(run, run.out / "last")
    if run.world > 1:
        rec["ranks_in_sync"] = ranks_in_sync(run.model)
    _write_log(run, rec)
    if due:
        save_checkpoint(run)


def _open_log(path: Path, step: int | None):
    """``log.jsonl`` for appending. On a resume from the checkpoint of ``step``, the lines of the steps
    after it (the run went on past its last checkpoint, and will do them again) and any line cut short
    by a kill are dropped first, so that the log holds each step once."""
    if step is not None and path.is_file():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"))
    return path.open("a")


def _write_log(run: Run, rec: dict) -> None:
    if run.rank == 0:
        if run.cfg.progress:
            print(json.dumps(rec), flush=True)
        run.log.write(json.dumps(rec) + "\n")
        run.log.flush()


def save_checkpoint(run: Run) -> None:
    if run.rank != 0:
        return
    run.state["seconds"], run.t_start = seconds(run), time.time()
    run.last_save = run.t_start
    blob = {
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "state": json.dumps(run.state),
        "train_config": json.dumps(dataclasses.asdict(run.cfg)),
    }
    if run.criterion is not None:
        blob["criterion"] = run.criterion.state_dict()
    atomic_write(run.out / CHECKPOINT_NAME, lambda tmp: torch.save(blob, tmp))


def train(cfg: TrainConfig, resume: bool = False, data: TrainData | None = None) -> dict:
    """Train (on ``data``, else on the dataset folders of ``cfg.data``); returns the state, whose
    ``best_metrics`` hold the best validation metrics (and the prior alone's PA-mIoU). Safe to call
    again with ``resume=True``."""
    check_config(cfg, roots=data is None)
    # _setup_process sets both (tf32 on CUDA, the threads on the CPU): the caller's are restored at the end
    tf32, threads = torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()
    rank, world, device = _setup_process(cfg)
    lock, locked, run, term = OutputLock(cfg.out, rank, world), False, None, {"seen": False}  # one run per --out
    made = not Path(cfg.out).exists()  # the lock makes it: a run refused before it is built leaves no folder

    def on_term(*_):
        term["seen"] = True
        if run is not None:
            run.stop = True

    prev = signal.signal(signal.SIGTERM, on_term)
    try:
        locked = lock.__enter__() is lock  # refused: not ours to release (the holder may be this process)
        if not resume and (Path(cfg.out) / CHECKPOINT_NAME).exists():
            raise ValueError(f"{cfg.out}: a run is already there; continue it (--resume) or choose another --out")
        run = build(cfg, resume, rank, world, device, data)
        run.stop = term["seen"]
        prior_baseline(run)
        # a stop (SIGTERM, budget) ends the epoch after its current step; a resumed run whose budget is spent
        while run.state["epoch"] < cfg.epochs and budget_spent(run) < 1.0:  # has nothing left to do
            t0 = time.time()
            epoch_loss, _, complete = run_epoch(run)
            end_epoch(run, epoch_loss, complete, t0)
            if run.stop:
                break
        if world > 1:  # leave together: a rank tearing down its process group while another still
            dist.barrier()  # uses it can abort ("terminate called without an active exception")
    finally:
        signal.signal(signal.SIGTERM, prev)
        torch.backends.cuda.matmul.allow_tf32 = tf32  # float32 completions after training stay float32
        torch.set_num_threads(threads)
        if locked:
            lock.__exit__(None, None, None)
        if made and run is None:
            with contextlib.suppress(OSError):  # only when empty (another rank may have written there)
                Path(cfg.out).rmdir()
        if run is not None and run.log:
            run.log.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return run.state


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (checked with an all-gather of sums)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    probe = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(), device=flat.device) % 9973).sum()])
    gathered = [torch.zeros_like(probe) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, probe)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)


_HELP = {
    "data": "dataset root (several, comma-separated, with --class-agnostic)",
    "dataset_kind": "folder (dataset.json + <split>/images, labels) | voc | cityscapes",
    "out": "run folder: log.jsonl, checkpoint.pt, best/ and last/ (Hub folders)",
    "model": f"train this named model config from scratch ({', '.join(NAMED_CONFIGS)}) instead of starting from --init",
    "label_prior": "from scratch (--model): start from the nearest-label prior and learn corrections "
    "(--no-label-prior: the paper's model)",
    "max_minutes": "the run's wall-clock budget, counted over --resume; the cosine learning rate decays to 0 "
    "over it; stops cleanly (checkpointed)",
    "lr": f"learning rate (default: {BASE_LR:g} * sqrt(batch size / {BASE_BATCH}))",
    "schedule": "cosine (decays to 0 at --epochs) | plateau (the paper's ReduceLROnPlateau on the epoch loss)",
    "init": "start from this model's weights and config (registered name, Hub repo id or folder); the default, "
    f"the class-agnostic {DEFAULT_INIT}, takes the data's classes and starts at its random-walk prior",
    "block_holes": "share of samples (0-1) whose holes are blocks off the patch grid, as after resizing a "
    "label of another size: patches then come out partly known (default 0: the paper's patch masking only)",
    "block_range": "side range of those blocks in pixels at the model's size",
    "trunk_lr": "learning rate of every weight but the head (the output layer), as a share of --lr: below 1 "
    "keeps a fine-tuned --init's trunk nearer its start while a new head learns",
    "hide_unknown": "also hide every patch that touches an unknown pixel of the label (with --hole-index: a hole), "
    "as completion hides every patch that touches a hole (labels with holes of their own: label-mae fit)",
    "hole_index": "label value of the labels' own holes, unknown like void; --hide-unknown then hides the patches "
    "that touch a hole and leaves void's visible, as completion does",
    "optimizer": "adamw (decoupled weight decay) | adam (the paper's; L2 weight decay)",
    "ratio_range": "sample the mask ratio per sample in [LO, HI] (default: --mask-ratio for all)",
    "mix": "Random : Label-First : Background-First weights (default: 1 0 0 from an init, as by default; the "
    "paper's 1 2 2 from scratch, --model; a resumed run keeps its own)",
    "loss": "ce | balanced (the paper's eq. 10-12; it drives frequent classes' weights to 0, see docs/training.md)",
    "crop_scale": "random crop side as a fraction of the image side, LO HI",
    "val_split": "split evaluated every epoch ('' to skip)",
    "val_limit": "evaluate the first N validation images only",
    "threads": "torch threads of the training process (default: the cores the workers leave)",
    "workers": "DataLoader workers doing augmentation, masking and the prior (default: on CUDA cores - 1, at most "
    "8; on the CPU 0 up to 4 cores, else cores / 4)",
    "compile": "torch.compile the model (mostly for CUDA)",
    "precision": "autocast of the model's training steps and validation: auto is bfloat16 on CUDA and on CPUs with "
    "AMX (native bfloat16 matrix units), float32 elsewhere",
    "class_agnostic": "train a class-agnostic model (slots, not classes; torch_label_mae.slots): it takes labels "
    "of any dataset; --data may then name several roots, comma-separated, pooled",
    "num_slots": "slots of a class-agnostic model: the most classes one sample may hold",
    "save_every": "seconds between checkpoints and last/ exports (0: after every epoch; a stop always saves)",
    "progress": "progress bar and a log line per epoch on stdout (--no-progress: log.jsonl only)",
    "flip": "mirror samples left-right at random (default: yes, unless the class names come in left / right pairs, "
    "e.g. front_left_door and front_right_door, which a mirror would swap)",
    "mask_pool": "N > 0: N crops + masks per image, drawn once and kept with their label prior, computed once "
    "(the exact random-walk priors cost more than the model's step on a CPU); 0: new ones every step "
    f"(default: {DEFAULT_POOL} with an exact random-walk prior, else 0)",
    "new_classes": "with --init of another class list: start from its weights with the data's classes (label "
    "embeddings of class k from its class k; a new head); a class-agnostic --init always does so, from slot k",
}
_INT_OR_NONE = ("val_limit", "threads", "max_steps", "workers", "hole_index", "mask_pool")
_FLOAT_OR_NONE = ("max_minutes", "lr")


def _add_flag(ap, f: dataclasses.Field, default) -> None:
    import argparse

    flag = "--" + f.name.replace("_", "-")
    shown = "" if f.name in ("lr", "mix") or default == "" else f" (default: {default})"  # --data: required, no default
    kw = {"help": _HELP.get(f.name, "") + shown, "dest": f.name}
    if f.name in CHOICES:
        kw["choices"] = CHOICES[f.name]
    if isinstance(default, bool) or f.name == "flip":
        ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
    elif isinstance(default, tuple) or f.name in ("ratio_range", "mix"):
        n = 3 if f.name == "mix" else 2
        ap.add_argument(flag, type=int if f.name == "block_range" else float, nargs=n, default=default, **kw)
    elif f.name in _FLOAT_OR_NONE:
        ap.add_argument(flag, type=float, default=default, **kw)
    elif f.name in _INT_OR_NONE:
        ap.add_argument(flag, type=int, default=default, **kw)
    else:
        kind = str if default is None else type(default)
        ap.add_argument(flag, type=kind, default=default, required=f.name in ("data",), **kw)


def build_parser():
    """The ``label-mae train`` argument parser: one flag per :class:`TrainConfig` field, plus ``--set`` and
    ``--resume``."""
    import argparse

    ap = argparse.ArgumentParser(
        "label-mae train",
        description=f"Train an L-MAE model. Defaults: start from {DEFAULT_INIT} with the data's classes (its "
        "random-walk prior, samples kept with their prior), cross-entropy, AdamW with warm-up and cosine decay; "
        "--model NAME trains a named config from scratch (docs/training.md; the paper's recipe by flags). "
        "Checkpoints every epoch and on SIGTERM; --resume continues. Runs unchanged under torchrun (DDP).",
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model_overrides":
            _add_flag(ap, f, getattr(defaults, f.name))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="model config override, e.g. --set label_prior=true --set prior_kind='\"random_walk\"'",
    )
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    return ap


def parse_train_args(argv=None) -> tuple[TrainConfig, bool]:
    """``label-mae train`` arguments -> ``(TrainConfig, resume)``; bad flags exit 2 (argparse)."""
    ap = build_parser()
    a = vars(ap.parse_args(argv))
    try:
        overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.pop("set"))}
    except (ValueError, json.JSONDecodeError) as e:
        ap.error(f"--set expects KEY=JSON ({e})")
    resume = a.pop("resume")
    a = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
    return TrainConfig(model_overrides=overrides, **a), resume


def main_train(argv=None) -> None:
    """``label-mae train``. Errors in the settings, the data or ``--init`` end with one line on stderr and
    exit status 2."""
    from .hub import HubError

    cfg, resume = parse_train_args(argv)
    checkpoint = Path(cfg.out) / CHECKPOINT_NAME
    if resume and not checkpoint.is_file():
        print(f"label-mae train: --resume: no checkpoint in {cfg.out} yet; training from the start", file=sys.stderr)
    try:
        state = train(cfg, resume=resume)
    except (ValueError, FileNotFoundError, NotADirectoryError, HubError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"label-mae train: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except OutputWriteError as e:
        print(f"label-mae train: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint stays
        again = (
            "rerun with --resume to continue from the last checkpoint"
            if checkpoint.is_file()
            else "no checkpoint was written yet; rerun the same command to start again"
        )
        print(f"label-mae train: interrupted; {again}", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(state.get("best_metrics")))


if __name__ == "__main__":  # pragma: no cover
    main_train()
