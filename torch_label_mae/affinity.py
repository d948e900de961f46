"""Learned edge weights for the random-walk prior, trained through the walk itself.

scikit-image's edge weights ``exp(-beta * |I_i - I_j|^2 / (10 * std(I) * sqrt(C)))`` see only the
colour step between two pixels, so the walk stops at every stripe of a patterned shirt and leaks
between two garments of the same colour. :class:`EdgeAffinity` keeps that term and learns two
corrections from a small convolutional net on the image (5 x 5 receptive field):

- a per-pixel log-sensitivity ``h``: the colour term times ``exp((h_i + h_j) / 2)``, lowered where
  colour steps are texture, raised where faint ones are boundaries;
- an embedding ``g``: ``|g_i - g_j|^2`` adds boundaries that colour does not show.

So ``w_ij = exp(-beta * d_ij * exp(h_ij) / (10 * std * sqrt(C)) - |g_i - g_j|^2)``. Its output layers
start at zero, where it gives scikit-image's weights exactly, and :func:`train_affinity` fits it by
minimising the cross-entropy of the walk's probabilities on hidden pixels, back-propagated through the
truncated relaxation (:func:`torch_label_mae.propagation.relax`). Models switch it on with
``LMAEConfig.prior_affinity_dim`` (its hidden width; 0 keeps the fixed weights).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

EMBED_DIM = 8  # channels of the boundary embedding g


class EdgeAffinity(nn.Module):
    """``EdgeAffinity(beta, dim)(image [B, 3, H, W] in [0, 1])`` -> edge weights of the horizontal
    ``[B, 1, H, W-1]`` and vertical ``[B, 1, H-1, W]`` edges (see the module docstring)."""

    def __init__(self, beta: float, dim: int = 16):
        super().__init__()
        self.beta = float(beta)
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, 3, padding=1, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode="replicate"),
            nn.GELU(),
        )
        self.log_sensitivity = nn.Conv2d(dim, 1, 1)  # h
        self.embed = nn.Conv2d(dim, EMBED_DIM, 1)  # g
        for m in (self.log_sensitivity, self.embed):  # start at scikit-image's weights
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(image.device.type, enabled=False):  # the walk is solved in float32
            return self._weights(image)

    def _weights(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()  # img: [B, C, H, W]
        b, c = img.shape[:2]
        std = img.flatten(1).std(1, correction=0).clamp(min=1e-6).view(b, 1, 1, 1)  # numpy's std, as scikit-image
        scale = self.beta / (10 * std * math.sqrt(c))
        z = self.net(img * 2 - 1)  # z: [B, dim, H, W]
        h, g = self.log_sensitivity(z), self.embed(z)
        return self._edges(img, h, g, scale, dim=3), self._edges(img, h, g, scale, dim=2)

    @staticmethod
    def _edges(img, h, g, scale, dim: int) -> torch.Tensor:
        """Weights of the edges between neighbours along ``dim`` (3: horizontal, 2: vertical)."""
        n = img.shape[dim] - 1

        def step(t):  # t_j - t_i over each edge
            return t.narrow(dim, 1, n) - t.narrow(dim, 0, n)

        colour = step(img).pow(2).sum(1, keepdim=True)
        boundary = step(g).pow(2).sum(1, keepdim=True)
        sensitivity = ((h.narrow(dim, 1, n) + h.narrow(dim, 0, n)) / 2).exp()
        return (-scale * colour * sensitivity - boundary).exp() + 1e-10


def walk_loss(
    affinity: EdgeAffinity,
    image: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor,
    num_classes: int,
    sweeps: int,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the walk's probabilities over the unknown, labelled pixels whose class
    a known pixel carries, and their count. ``image [B, 3, H, W]`` float in [0, 1], ``label [B, H, W]``
    the full label, ``known [B, H, W]`` bool."""
    from .propagation import random_walk_probabilities

    prob, classes = random_walk_probabilities(
        image, label, known, num_classes, sweeps=sweeps, weights=affinity(image), differentiable=True
    )  # [B, K, H, W], [B, K]
    target = label.unsqueeze(1) == classes[:, :, None, None]  # [B, K, H, W]
    counted = ~known & (label != ignore_index) & target.any(1)  # [B, H, W]
    nll = -(prob.clamp(min=1e-4).log() * target).sum(1)  # [B, H, W]
    return nll[counted].sum(), int(counted.sum())


def train_affinity(
    init: str,
    data: str,
    out: str,
    *,
    epochs: int = 12,
    sweeps: int = 30,
    crop: int = 112,
    batch_size: int = 8,
    lr: float = 2e-3,
    dim: int = 16,
    ratio_range: tuple[float, float] = (0.3, 0.7),
    seed: int = 0,
    resume: bool = False,
    max_minutes: float | None = None,
) -> dict:
    """Fit the learned edge weights of model ``init`` (a name, repo id or folder; an
    :class:`EdgeAffinity` of width ``dim`` is added if it has none) on ``data``'s train split, the rest
    of the model frozen, and write the model to ``out`` (config.json + model.safetensors, atomically).

    Each step takes ``crop`` px crops of the images at the model's size, hides ``p x p`` patches at a
    ratio drawn from ``ratio_range`` and runs ``sweeps`` relaxation sweeps; AdamW, ``lr`` decayed to 0 by a
    cosine. ``out/log.jsonl`` gets one
    line per epoch; ``out/checkpoint.pt`` (weights only, loaded with ``weights_only=True``) lets a run
    ``resume``. Returns the last log record."""
    from .completer import LabelCompleter, save_hub_files
    from .data import FolderDataset, resize_image, resize_label
    from .io import atomic_write
    from .model import LMAE, LMAEConfig

    start = LabelCompleter.from_pretrained(init, device="cpu")
    cfg = start.config
    if cfg.prior_kind != "random_walk":
        raise ValueError(f"{init}: learned edge weights need prior_kind='random_walk', got {cfg.prior_kind!r}")
    if cfg.prior_affinity_dim == 0:
        cfg = LMAEConfig.from_dict({**cfg.to_dict(), "prior_affinity_dim": dim})
    model = LMAE(cfg)
    missing, unexpected = model.load_state_dict(start.model.state_dict(), strict=False)  # the affinity may be new
    if unexpected or any(not k.startswith("affinity.") for k in missing):
        raise ValueError(f"{init}: weights do not fit its config (missing {missing}, unexpected {unexpected})")
    ds = FolderDataset(data, "train")
    if ds.info.num_classes != cfg.num_classes:
        raise ValueError(f"{init} has {cfg.num_classes} classes but {data} has {ds.info.num_classes}")
    size = cfg.size
    if crop % cfg.patch_size or not cfg.patch_size <= crop <= min(size):
        raise ValueError(f"crop must be a multiple of patch_size {cfg.patch_size} in [{cfg.patch_size}, {min(size)}]")
    # every image and label resized to the model's size once, not every epoch
    samples = (ds[i] for i in range(len(ds)))
    pairs = [(resize_image(im[None], size)[0], resize_label(lab[None], size)[0]) for im, lab, _ in samples]
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt = outdir / "checkpoint.pt"
    opt = torch.optim.AdamW(model.affinity.parameters(), lr=lr, weight_decay=0.0)
    epoch = 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.affinity.load_state_dict(state["affinity"])
        opt.load_state_dict(state["optimizer"])
        epoch = int(state["epoch"])
    rng = random.Random(seed)
    rec: dict = {}
    t_start = time.time()
    while epoch < epochs:
        order = list(range(len(pairs)))
        random.Random(seed + epoch).shuffle(order)
        total, count, t0 = 0.0, 0, time.time()
        steps = len(order) // batch_size
        if steps == 0:
            raise ValueError(f"{data}: {len(order)} training pairs is less than one batch of {batch_size}")
        for s in range(steps):
            image, label, known = _crops(
                [pairs[i] for i in order[s * batch_size : (s + 1) * batch_size]], size, crop, cfg, ratio_range, rng
            )
            loss, n = walk_loss(model.affinity, image, label, known, cfg.num_classes, sweeps, cfg.ignore_index)
            if n == 0:
                continue
            step = epoch * steps + s
            for group in opt.param_groups:  # cosine decay to 0 over the run
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / (epochs * steps)))
            opt.zero_grad(set_to_none=True)
            (loss / n).backward()
            opt.step()
            total, count = total + float(loss.detach()), count + n  # loss: summed over pixels
        epoch += 1
        rec = dict(epoch=epoch, loss=total / max(count, 1), seconds=round(time.time() - t0, 1))
        blob = dict(affinity=model.affinity.state_dict(), optimizer=opt.state_dict(), epoch=epoch)
        atomic_write(ckpt, lambda tmp, blob=blob: torch.save(blob, tmp))
        save_hub_files(model, outdir)
        with (outdir / "log.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
        if max_minutes and time.time() - t_start > max_minutes * 60:
            break
    return rec


def _crops(pairs, size, crop, cfg, ratio_range, rng: random.Random):
    """A training batch: ``crop`` px crops (on the patch grid) of ``pairs`` of image and label at the
    model's ``size``, randomly flipped, with p x p patches hidden -> ``(image, label, known)``."""
    from .data import degrade

    images, labels, knowns = [], [], []
    p = cfg.patch_size
    for image, label in pairs:
        y, x = rng.randrange(0, size[0] - crop + 1, p), rng.randrange(0, size[1] - crop + 1, p)
        image, label = image[:, y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        broken, missing = degrade(label, rng.uniform(*ratio_range), p, seed=rng.randrange(1 << 30), mode="patches")
        images.append(image)
        labels.append(label)
        knowns.append((broken != cfg.ignore_index) & ~missing)
    return torch.stack(images), torch.stack(labels), torch.stack(knowns)
