"""Train a random-walk model's prior combiner (``torch_label_mae/combiner.py``) on train splits, and write
the model with it.

Per dataset: ``--images`` train images spread over the split, at 224 px, each degraded ``--draws`` times
with varied holes (a hidden ratio drawn in ``--ratios``, [0.25, 0.75] by default; half on the 16 px patch
grid, half blocks of 8 to 32 px off it); the init model's walk on them; the combiner's features of
``--pixels`` unknown pixels per label whose true class a known pixel carries; cross-entropy on them
(AdamW, one-cycle, batches of 4,096 pixels, each batch from labels with the same number of classes). The
rest of the model is copied from ``--init`` (its walk too, or at ``--beta``). ``any-m0.5`` was made with it
(its card has the command and what it measured)::

    python tools/train_combiner.py --init any-m0.5 --beta 32000 --images 160 --cache runs/comb-cache \
        --out runs/any-comb --data ../shared/data/{camvid,ccp,carparts,marsscapes,dronedeploy,wbc}
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torch_label_mae import LabelCompleter
from torch_label_mae import combiner as combiner_module
from torch_label_mae.combiner import NUM_FEATURES, PriorCombiner, features
from torch_label_mae.data import FolderDataset, degrade, seed_for
from torch_label_mae.hub import save_hub_files
from torch_label_mae.io import resize_image, resize_label
from torch_label_mae.model import LMAE
from torch_label_mae.propagation import random_walk_probabilities

SIZE = (224, 224)
# what the combiner's features depend on besides the data: a change of any of them makes new caches
FEATURES = {
    "count": NUM_FEATURES,
    **{
        k: getattr(combiner_module, k)
        for k in ("BINS", "SIGMA", "REFERENCE_SIDE", "MIN_PROB", "LOCAL_SIGMA", "LOCAL_CELLS", "HULL_STEP")
    },
    "version": 2,  # raise when a feature's computation changes otherwise
}


def varied_holes(label: torch.Tensor, key: str, draw: int, ratios: tuple[float, float] = (0.25, 0.75)):
    """``(broken, missing)``: a ratio drawn in ``ratios`` (low, high), on the 16 px grid or in blocks of 8
    to 32 px."""
    g = np.random.default_rng(seed_for(key, draw) + 17)
    ratio, on_grid = float(g.uniform(*ratios)), bool(g.random() < 0.5)
    block = 16 if on_grid else int(g.integers(8, 33))
    return degrade(label, ratio, block, seed=seed_for(key, draw), mode="patches" if on_grid else "blocks")


def rows_of(root: str, walk: dict, images: int, draws: int, pixels: int, rng: np.random.Generator, ratios=(0.25, 0.75)):
    """``[(features [m, K, F] float16, target [m] int64)]`` of one dataset's train split."""
    ds = FolderDataset(root, "train")
    picks = np.unique(np.linspace(0, len(ds) - 1, min(images, len(ds))).round().astype(int))
    out = []
    for i in picks.tolist():
        image, label, key = ds[i]
        image = resize_image(image.unsqueeze(0), SIZE)[0]
        label = resize_label(label.unsqueeze(0), SIZE)[0]
        for draw in range(draws):
            broken, _ = varied_holes(label, key, draw, ratios)
            known = broken != 255
            prob, index = random_walk_probabilities(image[None], broken[None], known[None], 256, **walk)
            k = int(prob[0].flatten(1).any(1).sum())
            if k < 2:
                continue
            classes = index[0, :k]
            target = (label[~known].unsqueeze(1) == classes).float()  # [n, K]
            keep = target.any(1).nonzero().squeeze(1)
            keep = keep[torch.from_numpy(rng.permutation(len(keep))[:pixels])]
            feats = features(image, broken, known, prob[0, :k], classes)[keep]
            out.append((feats.half(), target[keep].argmax(1)))
    return out


def train(rows, width: int, epochs: float, lr: float, batch: int, seed: int) -> PriorCombiner:
    """The combiner fitted to ``rows`` (grouped by their number of classes)."""
    torch.manual_seed(seed)
    groups = {}
    for x, y in rows:
        groups.setdefault(x.shape[1], []).append((x, y))
    data = [(torch.cat([x for x, _ in g]).float(), torch.cat([y for _, y in g])) for g in groups.values()]
    sizes = torch.tensor([len(y) for _, y in data], dtype=torch.float)
    steps = max(int(epochs * sizes.sum().item() // batch), 1)
    model = PriorCombiner(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = data[int(torch.multinomial(sizes, 1, generator=g))]
        pick = torch.randint(len(y), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="any-m0.5", help="a random-walk model: name or folder")
    ap.add_argument("--beta", type=float, help="the walk's beta (default: --init's)")
    ap.add_argument("--data", nargs="+", required=True, help="dataset roots (their train splits)")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--images", type=int, default=160, help="train images per dataset")
    ap.add_argument("--draws", type=int, default=2, help="hole draws per image")
    ap.add_argument("--pixels", type=int, default=3000, help="unknown pixels kept per label")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=3.0, help="0: prepare the --cache only")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", help="a folder: each dataset's features are saved there, or loaded if saved")
    ap.add_argument(
        "--ratios", type=float, nargs=2, default=[0.25, 0.75], metavar=("LOW", "HIGH"), help="hidden ratios drawn in"
    )
    a = ap.parse_args(argv)
    if not 0 < a.ratios[0] <= a.ratios[1] < 1:
        ap.error(f"--ratios must satisfy 0 < LOW <= HIGH < 1, got {a.ratios[0]} {a.ratios[1]}")
    init = LabelCompleter.from_pretrained(a.init, device="cpu", precision="float32")
    prior = init.config.prior
    if getattr(prior, "kind", None) != "random_walk":
        raise SystemExit(f"--init {a.init}: its prior is {getattr(prior, 'kind', None)!r}, not a random walk")
    if a.beta is not None:
        prior = dataclasses.replace(prior, beta=a.beta)  # validated there
    walk = {k: getattr(prior, k) for k in ("beta", "sweeps", "solver", "connectivity", "color")}
    t = time.perf_counter()
    rows = []
    ratios = tuple(a.ratios)
    for root in a.data:
        key = json.dumps(
            [str(Path(root).resolve()), walk, a.images, a.draws, a.pixels, a.seed, ratios, FEATURES]
        )  # what the rows depend on, the features' definition included
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        cached = Path(a.cache) / f"{Path(root).name}-{digest}.pt" if a.cache else None
        if cached is not None and cached.exists():
            loaded = torch.load(cached, weights_only=True)
            if any(x.shape[-1] != NUM_FEATURES for x, _ in loaded):
                raise SystemExit(f"{cached}: features of another size than {NUM_FEATURES}; delete it")
            rows += loaded
            continue
        new = rows_of(root, walk, a.images, a.draws, a.pixels, np.random.default_rng(a.seed), ratios)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(new, cached)
        rows += new
    print(f"{sum(len(y) for _, y in rows)} pixels from {len(rows)} labels ({time.perf_counter() - t:.0f} s)")
    if a.epochs == 0:
        return 0
    combiner = train(rows, a.width, a.epochs, a.lr, a.batch, a.seed)
    config = dataclasses.replace(
        init.config, prior=dataclasses.replace(prior, combiner=a.width, combiner_features=NUM_FEATURES)
    )
    model = LMAE(config)
    model.load_state_dict(
        {**init.model.state_dict(), **{f"prior_combiner.{k}": v for k, v in combiner.state_dict().items()}}
    )
    save_hub_files(model, a.out, dtype=torch.float16)
    print(f"wrote {a.out} ({time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
